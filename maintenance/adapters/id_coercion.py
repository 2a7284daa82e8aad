"""Message ids as the id column's type: a text from a message may not be a possible id."""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa


@dataclass(frozen=True)
class IdCoercer:
    """Turns a textual id from a message into the id column's Python type, or None if impossible."""

    python_type: type | None
    int_bits: int | None = None  # integer columns: out-of-range ids cannot exist (and would fail)
    max_length: int | None = None  # string columns: a longer id cannot exist

    @classmethod
    def for_column(cls, column: sa.Column[Any]) -> IdCoercer:
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
        return cls(_python_type(column), bits, length)

    def __call__(self, text: str) -> Any:
        kind = self.python_type
        try:
            if kind is int:
                value = int(text)
                if self.int_bits and not -(2 ** (self.int_bits - 1)) <= value < 2 ** (
                    self.int_bits - 1
                ):
                    return None
                return value
            if kind is uuid.UUID:
                return str(uuid.UUID(text))
        except (ValueError, TypeError):
            return None
        if self.max_length is not None and len(text) > self.max_length:
            return None
        return text

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
        if self.python_type not in (int, uuid.UUID):
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


def _python_type(column: sa.Column[Any]) -> type | None:
    try:
        return column.type.python_type
    except NotImplementedError:
        return None


_NEEDS_QUOTES = re.compile(r'[{}"\\\s]|(?:^|,)null(?:,|$)', re.IGNORECASE)


def pg_array_literal(values: Sequence[Any]) -> str:
    """PostgreSQL's text form of an array: joined as is when no element needs quoting (ids
    usually do not), else every element quoted and escaped."""
    texts = [v if isinstance(v, str) else str(v) for v in values]
    joined = ",".join(texts)
    plain = (
        joined.count(",") == len(texts) - 1 and "" not in texts and not _NEEDS_QUOTES.search(joined)
    )
    if plain and texts:
        return "{" + joined + "}"
    return (
        "{" + ",".join('"' + t.replace("\\", "\\\\").replace('"', '\\"') + '"' for t in texts) + "}"
    )
