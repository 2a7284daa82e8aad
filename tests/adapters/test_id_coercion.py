"""Ids as the id column's type: the one-string array parameter the look-ups send, on PostgreSQL,
and how MySQL columns compare and hold ids (collations, character sets, UNSIGNED)."""

from __future__ import annotations

from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.dialects import mysql

from maintenance.adapters.id_coercion import (
    _NEEDS_QUOTES,
    IdCoercer,
    _needs_quotes,
    fits_charset,
    pg_array_literal,
    text_fold,
)


@pytest.mark.parametrize(
    "values",
    [
        ["a", "b-1", "c_2"],
        [1, -2, 30],
        [],
        [
            "with space",
            'quo"te',
            "back\\slash",
            "{brace}",
            "com,ma",
            "",
            "NULL",
            "null",
            "nullx",
            "ünï",
            "tab\there",
            "new\nline",
            "\x0bvt",
            "\x1cfs",
            "Null",
            "nbsp\u00a0x",
        ],
        ["plain", "NuLl", "x"],
    ],
)
def test_pg_array_literal_round_trips(database_url: str, values: list[object]) -> None:
    """The one-string array parameter the look-ups send means exactly the ids given."""
    engine = sa.create_engine(database_url)
    array_type = "integer[]" if values and isinstance(values[0], int) else "text[]"
    with engine.connect() as conn:
        got = conn.execute(
            sa.text(f"SELECT CAST(:v AS {array_type})"), {"v": pg_array_literal(values)}
        ).scalar_one()
    engine.dispose()
    assert got == values


def test_the_quick_quoting_test_agrees_with_the_pattern() -> None:
    """`_needs_quotes` is `_NEEDS_QUOTES.search` made fast: the same answer for every ASCII
    character in an id, at each end, and for "null" in any case as an element or within one."""
    samples = [
        "a,b",
        "null",
        "a,NULL",
        "NuLl,b",
        "a,nullx",
        "xnull,b",
        "a,null,b",
        "ünull",
        "é,null",
    ]
    for code in range(128):
        c = chr(code)
        samples += [c, f"a{c}b", f"{c},x", f"x,{c}", f"é{c}"]
    for joined in samples:
        assert _needs_quotes(joined) == bool(_NEEDS_QUOTES.search(joined)), repr(joined)


@pytest.mark.parametrize(
    ("collation", "pad_space", "same", "different"),
    [
        (None, False, [], [("a", "A"), ("a", "a ")]),  # PostgreSQL text, SQLite: exact
        (None, True, [("a", "a  ")], [("a", "A")]),  # PostgreSQL char(n)
        ("utf8mb4_general_ci", True, [("Ab-1", "aB-1 "), ("é", "E")], [("a", "b")]),
        ("utf8mb4_bin", True, [("a", "a ")], [("a", "A")]),
        ("utf8mb4_nopad_bin", True, [], [("a", "a "), ("a", "A")]),
        ("utf8mb4_0900_as_ci", True, [("A", "a")], [("é", "e"), ("a", "a ")]),
        ("ascii_bin", True, [("x", "x ")], [("x", "X")]),
    ],
)
def test_text_fold_is_the_collations_equality_for_ids(
    collation: str | None,
    pad_space: bool,
    same: list[tuple[str, str]],
    different: list[tuple[str, str]],
) -> None:
    """Equal keys exactly where the database calls two ids equal (for the usual ids)."""
    fold = text_fold(collation, pad_space) or (lambda text: text)
    assert [fold(a) == fold(b) for a, b in same] == [True] * len(same)
    assert [fold(a) == fold(b) for a, b in different] == [False] * len(different)


@pytest.mark.parametrize(
    ("charset", "fits", "does_not"),
    [
        ("utf8mb4", ["😀", "ü"], []),
        ("utf8mb3", ["ü", "€"], ["😀"]),
        ("latin1", ["ü", "€", "\x81"], ["Ā", "😀"]),
        ("ascii", ["abc-1"], ["ü"]),
        ("big5", ["anything"], []),  # not checked: the database says
    ],
)
def test_fits_charset(charset: str, fits: list[str], does_not: list[str]) -> None:
    assert [fits_charset(t, charset) for t in fits] == [True] * len(fits)
    assert [fits_charset(t, charset) for t in does_not] == [False] * len(does_not)


def _column(col_type: Any, **info: Any) -> sa.Column[Any]:
    return sa.Column("id", col_type, info=info)


def test_coercer_from_a_reflected_mysql_column() -> None:
    """UNSIGNED widens the range; the noted charset and collation make invalid ids and keys."""
    unsigned = IdCoercer.for_column(_column(mysql.INTEGER(unsigned=True)))
    assert (unsigned("4000000000"), unsigned("-1"), unsigned(str(2**32))) == (
        4_000_000_000,
        None,
        None,
    )
    signed = IdCoercer.for_column(_column(mysql.INTEGER()))
    assert (signed("-1"), signed("4000000000")) == (-1, None)
    big = IdCoercer.for_column(_column(mysql.BIGINT(unsigned=True)))
    assert big(str(2**64 - 1)) == 2**64 - 1
    text = IdCoercer.for_column(
        _column(mysql.VARCHAR(36), charset="latin1", collation="latin1_swedish_ci", pad_space=True)
    )
    by_value, invalid = text.group(["abc", "ABC", "Ā"])
    assert (set(by_value), invalid) == ({"abc", "ABC"}, {"Ā"})
    assert text.by_key(by_value) == {"abc": ["abc", "ABC"]}
    assert text.param("Ā") is None
    plain = IdCoercer.for_column(_column(sa.String(36)))
    assert plain.by_key({"a": ["a"], "A": ["A"]}) == {"a": ["a"], "A": ["A"]}
