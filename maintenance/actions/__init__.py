"""Operations that change state: the locked run and its record, apply, operator actions."""
