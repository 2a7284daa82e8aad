"""Ids as the id column's type: the one-string array parameter the look-ups send, on PostgreSQL."""

from __future__ import annotations

import pytest
import sqlalchemy as sa

from maintenance.adapters.id_coercion import pg_array_literal


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
        ],
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
