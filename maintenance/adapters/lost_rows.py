"""The lost-row check kept on the database side: memory flat in the number of rows and messages.

When the scan starts, the rows still to run past the stuck age are copied, by the server itself,
into a session TEMPORARY table (one statement: the same moment and the same read as the in-memory
`LostTracker`, which read them all at that point). As the scan goes, the ids seen are buffered a
look-up batch at a time and the rows they name are deleted from it, on the scan's look-up thread.
What is left at the end is lost, streamed back with a server-side cursor.

Crossing off (deleting) rather than recording every id seen and anti-joining at the end: the
tables never hold more than the candidates and a bounded share of the ids seen, whatever the
number of messages (10M messages would be 20M ids to store), and it is the in-memory tracker's
semantics as they are: a row goes when a message names its id (as `str` would render it,
compared exactly, byte for byte on MySQL whatever the collation) or its Celery id.

On PostgreSQL the ids are first appended to two unindexed temporary tables of ids seen (cheap:
~2 µs an id), and the candidates they name are deleted in one hash join when those hold
`CROSS_EVERY` ids or as many as the candidates left, then emptied. A `DELETE … = ANY(array)`
per batch, as MySQL still does, made PostgreSQL scan the whole candidate table once per 20,000
ids: on a 1.7-million-row old backlog, 66 s of a 3M-message scan, where the hash joins take a
few. The candidate table has no index there either: its one full read per cross-off is
cheaper than keeping two indexes up to date while copying it (28 s against 2 s).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator, Sequence
from concurrent.futures import Executor, Future
from contextlib import contextmanager, suppress
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import mysql

from maintenance.adapters.database import (
    TaskDatabase,
    _as_epoch,
    _cutoff_for,
    database_errors,
    is_mysql,
)
from maintenance.adapters.id_coercion import pg_array_literal
from maintenance.core.diff import lost_finding
from maintenance.core.models import Finding, Message, StuckRow

TABLE = "maintenance_lost_candidates"
# PostgreSQL: the ids seen, by the column of the candidates they name (crossed off in bulk).
SEEN_TABLES = {
    "db_id": "maintenance_lost_seen_ids",
    "celery_id": "maintenance_lost_seen_celery_ids",
}
CROSS_EVERY = 1_000_000  # PostgreSQL: ids seen held before a cross-off (fewer if fewer are left)
FLUSH_IDS = 20_000  # ids buffered before they are sent: one statement per ~look-up batch
MAX_PENDING = 2  # flushes in flight on the look-up thread: bounds the buffered ids
MYSQL_KEY_PREFIX = 255  # bytes of an id indexed (equality is still checked on the whole id)


class TempTableRefused(Exception):
    """The database would not create the temporary table (no TEMPORARY privilege, read only)."""


def supports(db: TaskDatabase) -> bool:
    """PostgreSQL and MySQL/MariaDB; others (SQLite) keep the candidates in memory."""
    return db.engine.dialect.name == "postgresql" or is_mysql(db.engine.dialect)


class ServerLostRows:
    """`LostCheck` on a temporary table of the candidates, on a connection of its own."""

    def __init__(self, db: TaskDatabase, conn: sa.Connection, table: sa.Table, candidates: int):
        self.db = db
        # Candidates not yet crossed off (updated on the look-up thread): none left, and the
        # ids seen need not be sent at all, as in the usual case of no old backlog.
        self._left = candidates
        self._conn = conn
        self._table = table
        self._mysql = is_mysql(db.engine.dialect)
        self._cross_celery_ids = bool(db.settings.tasks.celery_id_column)
        self._db_ids: list[str] = []
        self._task_ids: list[str] = []
        self._seen_held = 0  # PostgreSQL: ids in the seen tables, not yet crossed off
        self._pool: Executor | None = None
        self._pending: deque[Future[None]] = deque()
        self._closed = False

    # -- setup ------------------------------------------------------------------------------
    @classmethod
    def open(cls, db: TaskDatabase, older_than_s: float, now: float) -> ServerLostRows:
        """Copy the candidates into the temporary table. Raises TempTableRefused when the
        database refuses it, DatabaseUnavailable when the database fails."""
        with database_errors("connecting to the database"):
            # READ COMMITTED: MySQL's INSERT ... SELECT would otherwise take shared locks on
            # every candidate row of the app's table while it copies them.
            conn = db.engine.connect().execution_options(isolation_level="READ COMMITTED")
        try:
            with database_errors("copying the rows still to run"):
                table, candidates = _create(db, conn, older_than_s, now)
        except TempTableRefused:
            _let_go(conn)
            raise
        except BaseException:
            _discard(conn)
            raise
        return cls(db, conn, table, candidates)

    # -- crossing off -----------------------------------------------------------------------
    def run_on(self, pool: Executor) -> None:
        self._pool = pool

    def saw(self, msg: Message) -> None:
        if self._left <= 0:
            return
        if msg.db_id is not None and msg.row_kind == "task":
            self._db_ids.append(msg.db_id)
        if msg.task_id and self._cross_celery_ids:
            self._task_ids.append(msg.task_id)
        self._maybe_flush()

    def saw_many(self, seen: Sequence[Sequence[Any]]) -> None:
        """(task id, row kind, database id, ...) each, a chunk at a time."""
        if self._left <= 0:
            return
        self._db_ids.extend(s[2] for s in seen if s[2] is not None and s[1] == "task")
        if self._cross_celery_ids:
            self._task_ids.extend(s[0] for s in seen if s[0])
        self._maybe_flush()

    def _maybe_flush(self) -> None:
        if len(self._db_ids) + len(self._task_ids) < FLUSH_IDS:
            return
        db_ids, task_ids, self._db_ids, self._task_ids = self._db_ids, self._task_ids, [], []
        if self._pool is None:
            self._cross_off(db_ids, task_ids)
            return
        self._pending.append(self._pool.submit(self._cross_off, db_ids, task_ids))
        while len(self._pending) > MAX_PENDING:
            self._pending.popleft().result()  # re-raises DatabaseUnavailable: no verdict

    def _cross_off(self, db_ids: list[str], task_ids: list[str]) -> None:
        """Delete the candidates these ids name. A failure raises: a row whose message was seen
        but not crossed off must never be reported lost."""
        db_ids, task_ids = _sendable(db_ids), _sendable(task_ids)
        if not (db_ids or task_ids):
            return
        table = self._table
        with database_errors("crossing off rows still to run"):
            if self._mysql:
                batch = self.db.settings.database.batch_size
                for column, ids in ((table.c.db_id, db_ids), (table.c.celery_id, task_ids)):
                    for start in range(0, len(ids), batch):
                        part = [i.encode() for i in ids[start : start + batch]]
                        done = self._conn.execute(sa.delete(table).where(column.in_(part)))
                        self._left -= done.rowcount
            else:
                for name, ids in (("db_id", db_ids), ("celery_id", task_ids)):
                    if ids:
                        self._conn.execute(
                            sa.text(
                                f"INSERT INTO pg_temp.{SEEN_TABLES[name]} (id)"
                                " SELECT unnest(CAST(:ids AS text[]))"
                            ),
                            {"ids": pg_array_literal(ids)},
                        )
                self._seen_held += len(db_ids) + len(task_ids)
                if self._seen_held >= min(CROSS_EVERY, self._left):
                    self._cross_off_seen()
            self._conn.commit()

    def _cross_off_seen(self) -> None:
        """PostgreSQL: delete the candidates the seen tables name, then empty them."""
        for column, seen in SEEN_TABLES.items():
            done = self._conn.exec_driver_sql(
                f"DELETE FROM pg_temp.{TABLE} AS c USING pg_temp.{seen} AS s"
                f" WHERE c.{column} = s.id"
            )
            self._left -= done.rowcount
        self._conn.exec_driver_sql(
            f"TRUNCATE {', '.join(f'pg_temp.{t}' for t in SEEN_TABLES.values())}"
        )
        self._seen_held = 0

    # -- the end ----------------------------------------------------------------------------
    def findings(self, now: float) -> Iterator[Finding]:
        """What is left, streamed; the connection is let go when the stream ends."""
        try:
            while self._pending:
                self._pending.popleft().result()
            self._cross_off(self._db_ids, self._task_ids)
            self._db_ids, self._task_ids = [], []
            if self._seen_held:
                with database_errors("crossing off rows still to run"):
                    self._cross_off_seen()
                    self._conn.commit()
            table = self._table
            query = sa.select(table.c.db_id, table.c.status, table.c.updated_at, table.c.celery_id)
            with database_errors("reading the lost rows"):
                rows = self._conn.execution_options(
                    yield_per=self.db.settings.database.batch_size
                ).execute(query)
                for db_id, status, updated_at, celery_id in rows:
                    yield lost_finding(
                        StuckRow(
                            db_id=_text(db_id),
                            row_kind="task",
                            status=_text(status),
                            updated_at=_as_epoch(updated_at),
                            celery_id=None if celery_id is None else _text(celery_id),
                        ),
                        now,
                    )
        except BaseException:
            self._drop(broken=True)
            raise
        self._drop(broken=False)

    @contextmanager
    def closed_on_error(self) -> Iterator[None]:
        try:
            yield
        except BaseException:
            self._drop(broken=True)
            raise

    def _drop(self, broken: bool) -> None:
        """Let the connection go: a broken or abandoned one is discarded (its session, and the
        table with it, ends); a sound one drops the table first and goes back to the pool."""
        if self._closed:
            return
        self._closed = True
        if broken:
            _discard(self._conn)
        else:
            _let_go(self._conn)


def _create(
    db: TaskDatabase, conn: sa.Connection, older_than_s: float, now: float
) -> tuple[sa.Table, int]:
    """The temporary table, filled; and how many candidates it holds."""
    cfg = db.settings.tasks
    source = db.tasks
    status, updated = source.c[cfg.status_column], source.c[cfg.updated_at_column]
    text_type: sa.types.TypeEngine[Any] = mysql.BLOB() if is_mysql(conn.dialect) else sa.Text()
    table = sa.Table(
        TABLE,
        sa.MetaData(),
        sa.Column("db_id", text_type),
        sa.Column("status", text_type),
        sa.Column("updated_at", updated.type),
        sa.Column("celery_id", text_type),
        prefixes=["TEMPORARY"],
    )
    if is_mysql(conn.dialect):  # its cross-off looks ids up one by one: the indexes serve it
        for column in ("db_id", "celery_id"):
            sa.Index(f"{TABLE}_{column}", table.c[column], mysql_length={column: MYSQL_KEY_PREFIX})
    celery = _as_text(conn, source.c[cfg.celery_id_column]) if cfg.celery_id_column else sa.null()
    select = sa.select(
        _as_text(conn, source.c[cfg.id_column]), _as_text(conn, status), updated, celery
    ).where(
        status.in_(list(cfg.active_statuses)),
        updated < _cutoff_for(updated, now - older_than_s),
    )
    try:
        conn.exec_driver_sql(_drop_sql(conn))  # one left by an earlier scan on this connection
        table.create(conn)
        copied = conn.execute(sa.insert(table).from_select([c.name for c in table.c], select))
        if not is_mysql(conn.dialect):
            conn.exec_driver_sql(f"ANALYZE pg_temp.{TABLE}")  # autovacuum skips temp tables
            for seen in SEEN_TABLES.values():
                conn.exec_driver_sql(f"CREATE TEMPORARY TABLE {seen} (id text)")
        conn.commit()
    except sa.exc.DBAPIError as exc:
        if exc.connection_invalidated:
            raise
        # Refused (no TEMPORARY privilege, a read-only server, MySQL's statement binlog in
        # READ COMMITTED): the in-memory check reads the rows itself, and fails if they fail.
        raise TempTableRefused(str(exc.orig).strip().splitlines()[0]) from None
    return table, int(copied.rowcount)


def _drop_sql(conn: sa.Connection) -> str:
    """Only ever our temporary tables: PostgreSQL's pg_temp never resolves to the app's."""
    if is_mysql(conn.dialect):
        return f"DROP TEMPORARY TABLE IF EXISTS {TABLE}"
    return (
        f"DROP TABLE IF EXISTS {', '.join(f'pg_temp.{t}' for t in (TABLE, *SEEN_TABLES.values()))}"
    )


def _as_text(conn: sa.Connection, column: sa.ColumnElement[Any]) -> sa.ColumnElement[Any]:
    """The id as `str()` of what the driver returns would render it: PostgreSQL's output
    function (`concat`, which keeps a char(n)'s padding, unlike a cast), MySQL's text of it in
    utf8mb4 as bytes, so that ids compare exactly whatever the column's collation."""
    if conn.dialect.name == "postgresql":
        return sa.case((column.is_(None), sa.null()), else_=sa.func.concat(column))
    assert isinstance(column, sa.Column)
    name = conn.dialect.identifier_preparer.format_column(column, use_table=True)
    return sa.literal_column(f"CAST(CONVERT({name} USING utf8mb4) AS BINARY)")


def _sendable(ids: list[str]) -> list[str]:
    """Ids that a database text can hold: one with a NUL or a lone surrogate can name no row
    (and would fail the statement), so it is left out rather than failing the scan."""
    joined = "".join(ids)
    try:
        joined.encode()
    except UnicodeEncodeError:
        pass
    else:
        if "\x00" not in joined:
            return ids
    return [i for i in ids if "\x00" not in i and _encodes(i)]


def _encodes(text: str) -> bool:
    try:
        text.encode()
    except UnicodeEncodeError:
        return False
    return True


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _let_go(conn: sa.Connection) -> None:
    """Drop the table and return the connection to the pool; if that fails, discard it."""
    try:
        conn.rollback()
        conn.exec_driver_sql(_drop_sql(conn))
        conn.commit()
        conn.close()
    except (sa.exc.SQLAlchemyError, OSError):
        _discard(conn)


def _discard(conn: sa.Connection) -> None:
    """End the session (and its temporary table with it): never back to the pool as it is."""
    with suppress(sa.exc.SQLAlchemyError, OSError):
        conn.invalidate()
    with suppress(sa.exc.SQLAlchemyError, OSError):
        conn.close()
