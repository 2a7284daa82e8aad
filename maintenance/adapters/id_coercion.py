"""Message ids as the id column's type: a text from a message may not be a possible id."""

from __future__ import annotations

import re
import unicodedata
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any

import sqlalchemy as sa


@dataclass(frozen=True)
class IdCoercer:
    """Turns a textual id from a message into the id column's Python type, or None if impossible."""

    python_type: type | None
    int_bits: int | None = None  # integer columns: out-of-range ids cannot exist (and would fail)
    max_length: int | None = None  # string columns: a longer id cannot exist
    unsigned: bool = False  # MySQL's UNSIGNED integers: 0 to 2**bits - 1
    charset: str | None = None  # MySQL: an id its character set cannot hold (and would fail)
    fold: Callable[[str], str] | None = None  # the database's text equality, as a key
    fold_ascii_only: bool = False  # the fold is that equality for ASCII texts only (MySQL _ci)

    @classmethod
    def for_column(cls, column: sa.Column[Any]) -> IdCoercer:
        """From the column's type and what `TaskDatabase` noted in `column.info` when it
        reflected the table: `charset`, `collation` (MySQL) and `pad_space`."""
        col_type = column.type
        bits = (
            16
            if isinstance(col_type, sa.SmallInteger)
            else 64
            if isinstance(col_type, sa.BigInteger)
            else 32
            if isinstance(col_type, sa.Integer)
            else None
        )
        length = getattr(col_type, "length", None) if isinstance(col_type, sa.String) else None
        info = column.info
        text = isinstance(col_type, sa.String)
        collation = info.get("collation") if text else None
        return cls(
            _python_type(column),
            bits,
            length,
            unsigned=bool(getattr(col_type, "unsigned", False)),
            charset=info.get("charset") if text else None,
            fold=text_fold(collation, bool(info.get("pad_space"))) if text else None,
            fold_ascii_only=bool(collation and collation.lower().endswith("_ci")),
        )

    def __call__(self, text: str) -> Any:
        kind = self.python_type
        try:
            if kind is int:
                value = int(text)
                if self.int_bits and not self._int_fits(value):
                    return None
                return value
            if kind is uuid.UUID:
                return str(uuid.UUID(text))
        except (ValueError, TypeError):
            return None
        if self.max_length is not None and len(text) > self.max_length:
            return None
        if self.charset is not None and not fits_charset(text, self.charset):
            return None
        return text

    def _int_fits(self, value: int) -> bool:
        assert self.int_bits is not None
        if self.unsigned:
            return 0 <= value < 1 << self.int_bits
        half = 1 << (self.int_bits - 1)
        return -half <= value < half

    def key(self, value: Any) -> Any:
        """A coerced id as the database tells ids apart: the same key for 'ABC' and 'abc' under
        a case-insensitive collation, so a returned row finds every id that asked for it."""
        return self.fold(value) if self.fold is not None and isinstance(value, str) else value

    def unsure(self, value: Any) -> bool:
        """Whether the fold may not be the database's equality for this id or row id (a
        non-ASCII text under a case-insensitive collation)."""
        return self.fold_ascii_only and isinstance(value, str) and not value.isascii()

    def row_key(self, row_id: Any) -> Any:
        """The key of an id the database returned: a text column's value is taken as it is
        (checking it could be an id is for ids from messages), others are coerced first."""
        if isinstance(row_id, str) and self.python_type not in (int, uuid.UUID):
            return self.fold(row_id) if self.fold is not None else row_id
        return self.key(self(str(row_id)))

    def param(self, text: str) -> Any:
        """As a bound parameter of the column's own type (a UUID column takes a UUID), or None
        when no row can have this id."""
        value = self(text)
        if value is not None and self.python_type is uuid.UUID:
            return uuid.UUID(value)
        return value

    def group(self, texts: Iterable[str]) -> tuple[dict[Any, list[str]], set[str]]:
        """Coerced value -> the texts giving it, and the texts that cannot be an id. Text ids
        stay themselves: that case skips the per-id call (a million of them in a scan)."""
        by_value: dict[Any, list[str]] = {}
        invalid: set[str] = set()
        if self.python_type not in (int, uuid.UUID) and self.charset is None:
            limit = self.max_length
            for text in texts:
                if limit is not None and len(text) > limit:
                    invalid.add(text)
                else:
                    by_value.setdefault(text, []).append(text)
            return by_value, invalid
        for text in texts:
            value = self(text)
            if value is None:
                invalid.add(text)
            else:
                by_value.setdefault(value, []).append(text)
        return by_value, invalid

    def by_key(self, by_value: dict[Any, list[str]]) -> dict[Any, list[str]]:
        """`group`'s values merged by `key`: the texts each row the database returns stands for."""
        if self.fold is None:
            return by_value
        merged: dict[Any, list[str]] = {}
        for value, texts in by_value.items():
            merged.setdefault(self.key(value), []).extend(texts)
        return merged


def text_fold(collation: str | None, pad_space: bool) -> Callable[[str], str] | None:
    """How a text column compares, as a function making equal ids equal keys; None when it
    compares exactly. PAD SPACE (PostgreSQL's char(n), most MySQL collations) ignores trailing
    spaces; a MySQL `_ci` collation ignores case and, unless `_as_`, accents. For ASCII ids
    (nearly all) that is the collation's own equality. For other texts it may be looser (an id
    then reads as present: a missed orphan, never a false one) or finer: so `TaskDatabase` asks
    on its own each id left without a row in a batch where that may be (`IdCoercer.unsure`)."""
    name = (collation or "").lower()
    pad = pad_space and "nopad" not in name and "_0900_" not in name  # those are NO PAD
    no_case = name.endswith("_ci")
    if not (pad or no_case):
        return None
    no_accent = no_case and "_as_" not in name
    return partial(_fold, pad, no_case, no_accent)


def _fold(pad: bool, no_case: bool, no_accent: bool, text: str) -> str:
    if pad:
        text = text.rstrip(" ")
    if no_accent and not text.isascii():
        decomposed = unicodedata.normalize("NFKD", text)
        text = "".join(c for c in decomposed if not unicodedata.combining(c))
    return text.casefold() if no_case else text


# MySQL's latin1 is cp1252 with its five unused bytes kept as the C1 controls of Latin-1.
_LATIN1_EXTRA = str.maketrans("", "", "\x81\x8d\x8f\x90\x9d")


def fits_charset(text: str, charset: str) -> bool:
    """Whether a MySQL column of this character set can hold the text: comparing the column
    with one it cannot is an error ("Illegal mix of collations"), not an empty result. Character
    sets not named here are not checked."""
    name = charset.lower()
    if name == "utf8mb4":
        return True
    if name in ("utf8", "utf8mb3"):  # the Basic Multilingual Plane only
        return text.isascii() or all(ord(c) <= 0xFFFF for c in text)
    if name == "ascii":
        return text.isascii()
    if name == "latin1":
        try:
            text.translate(_LATIN1_EXTRA).encode("cp1252")
        except UnicodeEncodeError:
            return False
    return True


def _python_type(column: sa.Column[Any]) -> type | None:
    try:
        return column.type.python_type
    except NotImplementedError:
        return None


_NEEDS_QUOTES = re.compile(r'[{}"\\\s]|(?:^|,)null(?:,|$)', re.IGNORECASE)
# What `_NEEDS_QUOTES` finds in ASCII text, one character at a time (`\s` there is these).
_ASCII_SPECIAL = '{}"\\ \t\n\r\x0b\x0c\x1c\x1d\x1e\x1f'


def _needs_quotes(joined: str) -> bool:
    """`_NEEDS_QUOTES.search(joined)`, at C speed for ASCII: the regex took ~25 ns a
    character, and the look-ups of a scan send every id it reads through here."""
    if not joined.isascii():
        return _NEEDS_QUOTES.search(joined) is not None
    if any(c in joined for c in _ASCII_SPECIAL):
        return True
    return ",null," in f",{joined.lower()},"


def pg_array_literal(values: Sequence[Any]) -> str:
    """PostgreSQL's text form of an array: joined as is when no element needs quoting (ids
    usually do not), else every element quoted and escaped."""
    texts = [v if isinstance(v, str) else str(v) for v in values]
    joined = ",".join(texts)
    plain = joined.count(",") == len(texts) - 1 and "" not in texts and not _needs_quotes(joined)
    if plain and texts:
        return "{" + joined + "}"
    return (
        "{" + ",".join('"' + t.replace("\\", "\\\\").replace('"', '\\"') + '"' for t in texts) + "}"
    )
