"""The history of maintenance runs and of every action, in tables of this project's own."""

from __future__ import annotations

import io
import json
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import mysql
from sqlalchemy.engine import Engine

from maintenance.adapters.database import database_errors

metadata = sa.MetaData()

# Epoch seconds: a double everywhere (MySQL's FLOAT is single precision: hours, not
# microseconds). Long texts: TEXT is unbounded on PostgreSQL and SQLite, 64 KiB on MySQL.
Seconds = sa.Double
LongText = sa.Text().with_variant(mysql.MEDIUMTEXT(), "mysql", "mariadb")
# On MySQL, whatever the server's or the database's defaults: any text (utf8mb4), compared
# exactly, as PostgreSQL does.
MYSQL_TABLE: dict[str, Any] = {
    f"{name}_{option}": value
    for name in ("mysql", "mariadb")  # a mariadb:// URL reads only its own
    for option, value in (("charset", "utf8mb4"), ("collate", "utf8mb4_bin"))
}

runs = sa.Table(
    "maintenance_runs",
    metadata,
    sa.Column("id", sa.String(36), primary_key=True),
    sa.Column("started_by", sa.String(200), nullable=False),
    sa.Column("mode", sa.String(40), nullable=False),
    sa.Column("started_at", Seconds, nullable=False, index=True),
    sa.Column("finished_at", Seconds),
    sa.Column("outcome", sa.String(20), nullable=False),  # core.models.Outcome
    sa.Column("counts", LongText, nullable=False, default="{}"),
    sa.Column("error", LongText),
    **MYSQL_TABLE,
)

actions = sa.Table(
    "maintenance_actions",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("run_id", sa.String(36), nullable=False, index=True),
    sa.Column("at", Seconds, nullable=False),
    sa.Column("action", sa.String(30), nullable=False),
    sa.Column("kind", sa.String(30), nullable=False),
    sa.Column("reason", sa.String(40), nullable=False),
    sa.Column("task_id", sa.String(255), nullable=False, index=True),
    sa.Column("task_name", sa.String(255)),
    sa.Column("db_id", sa.String(255)),
    sa.Column("location", sa.String(500)),
    **MYSQL_TABLE,
)


@dataclass(frozen=True)
class ActionRecord:
    action: str
    kind: str
    reason: str
    task_id: str
    task_name: str = ""
    db_id: str | None = None
    location: str = ""


class ActionBuffer:
    """Batches action rows: one insert per few thousand actions instead of one per script call.

    The caller flushes it before recording the run's end, on success and on failure alike, so
    the history still says exactly what was done; the quarantine entries themselves carry the
    run id, so even a killed process leaves every removed message traceable and restorable.
    """

    def __init__(
        self, store: HistoryStore, run_id: str, max_rows: int = 5000, max_age_s: float = 2.0
    ):
        self.store = store
        self.run_id = run_id
        self.max_rows = max_rows
        self.max_age_s = max_age_s
        self._rows: list[ActionRecord] = []
        self._since = time.monotonic()

    def add(self, records: Iterable[ActionRecord]) -> None:
        if not self._rows:
            self._since = time.monotonic()
        self._rows.extend(records)
        if len(self._rows) >= self.max_rows or time.monotonic() - self._since >= self.max_age_s:
            self.flush()

    def flush(self) -> None:
        rows, self._rows = self._rows, []
        self.store.record_actions(self.run_id, rows)


class HistoryStore:
    """Writes are small and committed at once, so a run that dies mid-way leaves a true record."""

    def __init__(self, engine: Engine, clock: Callable[[], float] = time.time):
        self.engine = engine
        self.clock = clock
        self._ready = False

    def init(self) -> None:
        with database_errors("creating the history tables"):
            metadata.create_all(self.engine)
        self._ready = True

    def _ensure(self) -> None:
        if not self._ready:
            self.init()

    def start_run(self, started_by: str, mode: str) -> str:
        self._ensure()
        run_id = str(uuid.uuid4())
        with database_errors("recording the run start"), self.engine.begin() as conn:
            conn.execute(
                sa.insert(runs).values(
                    id=run_id,
                    started_by=started_by,
                    mode=str(mode),
                    started_at=self.clock(),
                    outcome="running",
                    counts="{}",
                )
            )
        return run_id

    def record_actions(self, run_id: str, records: Iterable[ActionRecord]) -> int:
        now = self.clock()
        rows = [{"run_id": run_id, "at": now, **vars(r)} for r in records]
        if not rows:
            return 0
        self._ensure()
        with database_errors("recording actions"), self.engine.begin() as conn:
            if conn.dialect.driver == "psycopg2":
                _copy_rows(conn, actions, rows)
            else:
                conn.execute(sa.insert(actions), rows)
        return len(rows)

    def finish_run(
        self, run_id: str, outcome: str, counts: dict[str, Any], error: str | None = None
    ) -> None:
        with database_errors("recording the run end"), self.engine.begin() as conn:
            conn.execute(
                sa.update(runs)
                .where(runs.c.id == run_id)
                .values(
                    finished_at=self.clock(),
                    outcome=str(outcome),
                    counts=json.dumps(counts),
                    error=error,
                )
            )

    def unfinished_runs(self, but: str) -> list[dict[str, Any]]:
        """Runs other than `but` that may have left work half done: still marked running
        (under the run lock: dead), or ended failed or partial and not yet finished by a later
        run (their counts name no `finished_by`)."""
        self._ensure()
        cut_short = sa.and_(
            runs.c.outcome.in_(["failed", "partial"]),
            sa.not_(runs.c.counts.contains('"finished_by"')),
        )
        query = sa.select(runs).where(
            runs.c.id != but, sa.or_(runs.c.outcome == "running", cut_short)
        )
        with database_errors("reading the history"), self.engine.connect() as conn:
            rows = [dict(r._mapping) for r in conn.execute(query)]
        for row in rows:
            row["counts"] = json.loads(row["counts"] or "{}")
        return rows

    def amend_counts(self, run_id: str, counts: dict[str, Any]) -> None:
        """Replace a finished run's counts, leaving its outcome and error as they were."""
        with database_errors("recording the run end"), self.engine.begin() as conn:
            conn.execute(
                sa.update(runs).where(runs.c.id == run_id).values(counts=json.dumps(counts))
            )

    def recorded_task_ids(self, run_id: str, *action: str) -> set[str]:
        """Task ids with an action of these kinds recorded for the run."""
        query = sa.select(actions.c.task_id).where(
            actions.c.run_id == run_id, actions.c.action.in_(action)
        )
        with database_errors("reading the history"), self.engine.connect() as conn:
            return {task_id for (task_id,) in conn.execute(query)}

    def action_counts(self, run_id: str) -> dict[str, int]:
        query = (
            sa.select(actions.c.action, sa.func.count())
            .where(actions.c.run_id == run_id)
            .group_by(actions.c.action)
        )
        with database_errors("reading the history"), self.engine.connect() as conn:
            return {action: int(count) for action, count in conn.execute(query)}

    def check(self) -> None:
        """One round trip: raises DatabaseUnavailable when the database no longer answers."""
        with database_errors("checking the database"), self.engine.connect() as conn:
            conn.execute(sa.text("SELECT 1"))

    def recent_runs(self, limit: int = 20) -> list[dict[str, Any]]:
        self._ensure()
        query = sa.select(runs).order_by(runs.c.started_at.desc()).limit(limit)
        with database_errors("reading the history"), self.engine.connect() as conn:
            rows = [dict(r._mapping) for r in conn.execute(query)]
        for row in rows:
            row["counts"] = json.loads(row["counts"] or "{}")
        return rows

    def actions_of(self, run_id: str, limit: int = 1000) -> list[dict[str, Any]]:
        self._ensure()
        query = (
            sa.select(actions).where(actions.c.run_id == run_id).order_by(actions.c.id).limit(limit)
        )
        with database_errors("reading the history"), self.engine.connect() as conn:
            return [dict(r._mapping) for r in conn.execute(query)]


def _copy_rows(conn: sa.Connection, table: sa.Table, rows: list[dict[str, Any]]) -> None:
    """PostgreSQL's COPY, in the connection's transaction: 100,000 action rows take 0.6 s where
    a multi-row INSERT took 4 s (the server parses and plans 9,000 parameters per statement)."""
    columns = list(rows[0])
    text = "".join("\t".join(_copy_field(row[c]) for c in columns) + "\n" for row in rows)
    preparer = conn.dialect.identifier_preparer
    sql = (
        f"COPY {preparer.format_table(table)} ({', '.join(map(preparer.quote, columns))}) "
        "FROM STDIN"
    )
    dbapi = conn.dialect.loaded_dbapi
    try:
        # A checked-out connection always has its DBAPI connection (typed Optional).
        with conn.connection.dbapi_connection.cursor() as cursor:  # type: ignore[union-attr]
            cursor.copy_expert(sql, io.StringIO(text))
    except dbapi.Error as exc:
        raise sa.exc.DBAPIError(sql, None, exc) from exc


def _copy_field(value: Any) -> str:
    """COPY's text format: \\N is NULL; backslash, tab, newline and return are escaped."""
    if value is None:
        return "\\N"
    return (
        str(value)
        .replace("\\", "\\\\")
        .replace("\t", "\\t")
        .replace("\n", "\\n")
        .replace("\r", "\\r")
    )
