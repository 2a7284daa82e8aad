"""Action rows round-trip exactly, through COPY on PostgreSQL and INSERT on SQLite."""

from __future__ import annotations

from pathlib import Path

import pytest
import sqlalchemy as sa

from maintenance.adapters.history import ActionRecord, HistoryStore
from maintenance.errors import DatabaseUnavailable

AWKWARD = ["tab\there", "new\nline\r\n", "back\\slash \\N", "\\N", "", "quote'\"", "ünï €"]


def _records() -> list[ActionRecord]:
    out = [
        ActionRecord(
            "quarantined",
            "orphan",
            "row_missing",
            f"id-{i}",
            "demo.process_video",
            str(i),
            f"queue video_processing[{i}]",
        )
        for i in range(2000)
    ]
    out += [
        ActionRecord("revoked", "orphan", "row_finished", text, text, text, text)
        for text in AWKWARD
    ]
    out.append(ActionRecord("revoked", "manual", "operator", "no-db-id", "", None, ""))
    return out


def _round_trip(engine: sa.Engine) -> None:
    store = HistoryStore(engine)
    run_id = store.start_run("test", "cleanup")
    records = _records()
    assert store.record_actions(run_id, records) == len(records)
    rows = store.actions_of(run_id, limit=10_000)
    got = [
        ActionRecord(
            r["action"],
            r["kind"],
            r["reason"],
            r["task_id"],
            r["task_name"],
            r["db_id"],
            r["location"],
        )
        for r in rows
    ]
    assert got == records
    assert all(isinstance(r["at"], float) and r["at"] > 0 for r in rows)


def test_actions_round_trip_on_postgresql_through_copy(engine: sa.Engine) -> None:
    assert engine.dialect.driver == "psycopg2"  # the COPY path
    _round_trip(engine)


def test_actions_round_trip_on_sqlite(tmp_path: Path) -> None:
    _round_trip(sa.create_engine(f"sqlite:///{tmp_path / 'history.db'}"))


def test_a_failed_copy_is_a_database_error_and_records_nothing(engine: sa.Engine) -> None:
    store = HistoryStore(engine)
    run_id = store.start_run("test", "cleanup")
    too_long = ActionRecord("revoked", "orphan", "row_missing", "x" * 300)  # task_id is 255
    with pytest.raises(DatabaseUnavailable, match="recording actions"):
        store.record_actions(run_id, [*_records(), too_long])
    assert store.actions_of(run_id) == []
