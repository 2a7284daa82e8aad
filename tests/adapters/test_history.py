"""The history tables on PostgreSQL, MariaDB and SQLite: action rows round-trip exactly
(through COPY on PostgreSQL, INSERT elsewhere), times to the microsecond, long errors whole."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import sqlalchemy as sa

from maintenance.adapters.history import ActionRecord, HistoryStore
from maintenance.errors import DatabaseUnavailable


@pytest.fixture
def history_engine(db_url: str) -> Iterator[sa.Engine]:
    """An engine on a fresh database of each kind (the history tables not yet created)."""
    engine = sa.create_engine(db_url, pool_pre_ping=True)
    yield engine
    engine.dispose()


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


def test_actions_round_trip(history_engine: sa.Engine) -> None:
    """PostgreSQL takes the COPY path, MariaDB and SQLite the generic INSERT: same rows back."""
    path = "psycopg2" if history_engine.dialect.name == "postgresql" else "pymysql"
    if history_engine.dialect.name == "sqlite":
        path = "pysqlite"
    assert history_engine.dialect.driver == path
    _round_trip(history_engine)


@pytest.mark.parametrize("database", ["database_url", "mariadb_url"])  # SQLite takes any length
def test_a_failed_write_is_a_database_error_and_records_nothing(
    request: pytest.FixtureRequest, database: str
) -> None:
    """A row the table refuses (COPY on PostgreSQL, a strict-mode INSERT on MariaDB) fails the
    whole batch as a database error, in its transaction: none of the batch is recorded."""
    engine = sa.create_engine(request.getfixturevalue(database))
    store = HistoryStore(engine)
    run_id = store.start_run("test", "cleanup")
    too_long = ActionRecord("revoked", "orphan", "row_missing", "x" * 300)  # task_id is 255
    with pytest.raises(DatabaseUnavailable, match="recording actions"):
        store.record_actions(run_id, [*_records(), too_long])
    assert store.actions_of(run_id) == []
    engine.dispose()


def test_runs_keep_exact_times_and_whole_errors(history_engine: sa.Engine) -> None:
    """Epoch seconds to the microsecond (MySQL's FLOAT would keep about the hour) and an error
    longer than MySQL's 64 KiB TEXT are read back as written; counts are searchable."""
    times = iter([1_764_633_600.123456, 1_764_633_601.654321])
    store = HistoryStore(history_engine, clock=lambda: next(times))
    run_id = store.start_run("test", "cleanup")
    error = "é€😀 " * 20_000  # 80,000 characters, 200,000 bytes in UTF-8
    store.finish_run(run_id, "failed", {"quarantined": 3}, error)
    (run,) = store.recent_runs()
    assert (run["started_at"], run["finished_at"]) == (1_764_633_600.123456, 1_764_633_601.654321)
    assert run["error"] == error
    assert [r["id"] for r in store.unfinished_runs(but="")] == [run_id]
    store.amend_counts(run_id, {"quarantined": 3, "finished_by": "later"})
    assert store.unfinished_runs(but="") == []


def test_init_creates_the_tables_once(history_engine: sa.Engine) -> None:
    """`init-db` on an empty database creates both tables, and again is a no-op. On MariaDB
    they are utf8mb4 with an exact collation whatever the server's defaults."""
    for _ in range(2):
        HistoryStore(history_engine).init()
    inspector = sa.inspect(history_engine)
    assert {"maintenance_runs", "maintenance_actions"} <= set(inspector.get_table_names())
    if history_engine.dialect.name == "mysql":
        with history_engine.connect() as conn:
            collations = conn.execute(
                sa.text(
                    "SELECT table_name, table_collation FROM information_schema.tables"
                    " WHERE table_schema = DATABASE() AND table_name LIKE 'maintenance%'"
                )
            ).all()
        assert sorted(collations) == [
            ("maintenance_actions", "utf8mb4_bin"),
            ("maintenance_runs", "utf8mb4_bin"),
        ]
