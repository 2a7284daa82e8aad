"""The app's task tables through SQLAlchemy Core: batched look-ups and a streamed reverse check."""

from __future__ import annotations

import math
from collections.abc import Callable, Collection, Iterator
from collections.abc import Set as AbstractSet
from contextlib import contextmanager, nullcontext, suppress
from datetime import UTC, datetime
from functools import partial
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql
from sqlalchemy.engine import Engine

from maintenance.adapters.id_coercion import IdCoercer, pg_array_literal
from maintenance.config import (
    DatabaseSettings,
    Settings,
    SubTaskTableSettings,
    TaskTableSettings,
)
from maintenance.core.diff import Lookup, Verdicts
from maintenance.core.models import RowKind, RowState, StuckRow
from maintenance.errors import ConfigError, DatabaseUnavailable
from maintenance.redaction import redact_text


@contextmanager
def database_errors(what: str) -> Iterator[None]:
    """Any driver error becomes DatabaseUnavailable: a failed query never reads as 'row missing'."""
    try:
        yield
    except sa.exc.NoSuchTableError:
        raise
    except (sa.exc.SQLAlchemyError, OSError) as exc:
        detail = redact_text(str(getattr(exc, "orig", None) or exc)).strip().splitlines()
        raise DatabaseUnavailable(
            f"database failed while {what}: {detail[0] if detail else type(exc).__name__}"
        ) from None


MYSQL_BACKENDS = frozenset({"mysql", "mariadb"})


def is_mysql(dialect: sa.Dialect) -> bool:
    """MySQL and MariaDB alike (a `mysql+pymysql://` URL to MariaDB is dialect "mysql")."""
    return dialect.name in MYSQL_BACKENDS


def server_engine_options(db: DatabaseSettings, url: sa.URL) -> dict[str, Any]:
    """Pool and time-outs for a database server; SQLite, a file, gets none.

    PyMySQL's `connect_timeout` covers only the TCP connect: the handshake, like every reply,
    waits `read_timeout`, so without it a hung server hangs the connect for ever. Both take
    `connect_timeout_s`, so on MySQL it also bounds each wait for a reply. The recycle keeps
    pooled connections younger than the server's `wait_timeout` (the guards do not ping). The
    session in UTC: MySQL reads and writes TIMESTAMP columns in the session's time zone, and
    the stuck-row cut-off and ages are naive UTC."""
    backend = url.get_backend_name()
    pool = {"pool_size": db.pool_size, "max_overflow": db.pool_size}
    if backend == "postgresql":
        # libpq takes whole seconds and reads 0 as "wait for ever": never round down to it
        seconds = max(1, math.ceil(db.connect_timeout_s))
        return {**pool, "connect_args": {"connect_timeout": seconds}}
    if backend in MYSQL_BACKENDS:
        timeout: float = db.connect_timeout_s
        if url.get_driver_name() != "pymysql":  # mysqlclient and Connector/C take whole seconds
            timeout = max(1, round(timeout))
        times = ("connect_timeout", "read_timeout", "write_timeout")
        args = {**dict.fromkeys(times, timeout), "init_command": "SET time_zone = '+00:00'"}
        return {**pool, "pool_recycle": 3600, "connect_args": args}
    return {}


def create_db_engine(settings: Settings, **overrides: Any) -> Engine:
    """The engine of the app's database; `overrides` go to `create_engine` as they are."""
    db = settings.database
    try:
        url = sa.make_url(db.url)
        kwargs: dict[str, Any] = {"pool_pre_ping": True, **server_engine_options(db, url)}
        engine = sa.create_engine(url, **{**kwargs, **overrides})
    except (sa.exc.ArgumentError, ImportError, ValueError) as exc:  # ValueError: bad port
        hint = ""
        if isinstance(exc, ImportError) and db.url.startswith(("mysql", "mariadb")):
            hint = " (pip install 'task-maintenance[mysql]')"
        raise ConfigError(
            f"invalid database URL: {exc}{hint}", key="database.url", source=settings.source
        ) from None
    if engine.dialect.driver == "pymysql":
        sa.event.listen(engine, "handle_error", _end_broken_stream)
    return engine


def _end_broken_stream(context: sa.engine.ExceptionContext) -> None:
    """PyMySQL: a streaming (SSCursor) result whose connection was lost still reads for its
    remaining rows when closed or collected, and fails there again (AttributeError, printed as
    "Exception ignored"). The connection is gone, and with it the rest of the result."""
    # getattr all the way: an error raised here would replace the one being handled.
    cursor = getattr(context.execution_context, "cursor", None)
    result = getattr(cursor, "_result", None)
    if context.is_disconnect and getattr(result, "unbuffered_active", False):
        result.unbuffered_active = False  # type: ignore[union-attr]


class TaskDatabase:
    """Reads the app's own tables; never writes them except through explicit action methods."""

    def __init__(self, engine: Engine, settings: Settings):
        self.engine = engine
        self.settings = settings
        self._tasks: sa.Table | None = None
        self._sub_tasks: sa.Table | None = None

    # -- schema -----------------------------------------------------------------------------
    def validate(self) -> None:
        """Reflect the configured tables; a missing table or column is a config error (exit 2)."""
        cfg = self.settings.tasks
        with database_errors("reading the schema"):
            self._tasks = self._reflect(
                "tasks",
                cfg.table,
                cfg.schema,
                [
                    ("id_column", cfg.id_column),
                    ("status_column", cfg.status_column),
                    ("updated_at_column", cfg.updated_at_column),
                    ("celery_id_column", cfg.celery_id_column),
                ],
            )
            sub = self.settings.sub_tasks
            if sub.enabled:
                self._sub_tasks = self._reflect(
                    "sub_tasks",
                    sub.table,
                    sub.schema,
                    [
                        ("id_column", sub.id_column),
                        ("parent_column", sub.parent_column),
                        ("status_column", sub.status_column),
                    ],
                )

    def _reflect(
        self, section: str, name: str, schema: str, columns: list[tuple[str, str]]
    ) -> sa.Table:
        source = self.settings.source
        try:
            # The columns alone, one catalogue query: a whole-table reflection (keys, indexes,
            # constraints, comments) made sixteen, a tenth of a second of every small check,
            # and nothing here reads more than the columns' names and types.
            found = sa.inspect(self.engine).get_columns(name, schema=schema or None)
        except sa.exc.NoSuchTableError:
            raise ConfigError(
                f"table {name!r} does not exist in the database",
                key=f"{section}.table",
                source=source,
            ) from None
        table = sa.Table(
            name,
            sa.MetaData(),
            *(sa.Column(c["name"], c["type"], nullable=c["nullable"]) for c in found),
            schema=schema or None,
        )
        for key, column in columns:
            if column and column not in table.c:
                raise ConfigError(
                    f"column {column!r} does not exist in table {name!r} "
                    f"(columns: {', '.join(table.c.keys())})",
                    key=f"{section}.{key}",
                    source=source,
                )
        self._note_comparison(table)
        return table

    def _note_comparison(self, table: sa.Table) -> None:
        """How the database compares each text column, in `column.info` for `IdCoercer`: a
        PostgreSQL char(n) ignores trailing spaces; on MySQL the column's collation decides
        (reflection names it only where it differs from the table's), and its character set
        which ids it can hold at all."""
        dialect = self.engine.dialect
        if dialect.name == "postgresql":
            for column in table.c:
                column.info["pad_space"] = isinstance(column.type, sa.CHAR)
            return
        if not is_mysql(dialect):
            return
        query = sa.text(
            "SELECT column_name, character_set_name, collation_name"
            " FROM information_schema.columns"
            " WHERE table_schema = COALESCE(:schema, DATABASE()) AND table_name = :name"
        )
        params = {"schema": table.schema, "name": table.name}
        with self.engine.connect() as conn:
            found = {str(n).lower(): (cs, c) for n, cs, c in conn.execute(query, params)}
        for column in table.c:
            charset, collation = found.get(column.name.lower(), (None, None))
            if collation is not None:
                column.info.update(charset=charset, collation=collation, pad_space=True)

    @property
    def tasks(self) -> sa.Table:
        if self._tasks is None:
            self.validate()
        assert self._tasks is not None
        return self._tasks

    @property
    def sub_tasks(self) -> sa.Table:
        if self._sub_tasks is None:
            self.validate()
        if self._sub_tasks is None:
            raise ConfigError(
                "no [sub_tasks] table configured",
                key="sub_tasks.table",
                source=self.settings.source,
            )
        return self._sub_tasks

    # -- look-ups -----------------------------------------------------------------------------
    def lookup(
        self,
        task_ids: Collection[str],
        sub_task_ids: Collection[str] = (),
        conn: sa.Connection | None = None,
    ) -> Lookup:
        """Rows for a batch of ids: one query per table per batch, never one per message."""
        with (
            database_errors("looking up task rows"),
            nullcontext(conn) if conn is not None else self.engine.connect() as conn,
        ):
            invalid: set[str] = set()
            subs: dict[str, RowState] = {}
            if sub_task_ids:
                sub_cfg = self.settings.sub_tasks
                subs, bad = self._fetch(
                    conn,
                    self.sub_tasks,
                    sub_cfg.id_column,
                    sub_cfg.status_column,
                    sub_task_ids,
                    parent_column=sub_cfg.parent_column,
                )
                invalid |= bad
            parent_ids = {row.parent_id for row in subs.values() if row.parent_id is not None}
            cfg = self.settings.tasks
            wanted = set(task_ids) | parent_ids
            found, bad = self._fetch(conn, self.tasks, cfg.id_column, cfg.status_column, wanted)
            invalid |= bad & set(task_ids)
            tasks = {k: v for k, v in found.items() if k in task_ids}
            parents = {k: v for k, v in found.items() if k in parent_ids}
        return Lookup(tasks=tasks, sub_tasks=subs, parents=parents, invalid=frozenset(invalid))

    @contextmanager
    def pinned_verdicts(self) -> Iterator[Callable[[AbstractSet[str], AbstractSet[str]], Verdicts]]:
        """`verdicts` on one connection for a whole scan. A check-out per batch costs a ping and
        a rollback round trip, and in the scan's busy process each round trip also waits for
        the GIL: that made the look-up thread, not PostgreSQL, the bottleneck."""
        with database_errors("connecting to the database"):
            conn = self.engine.connect()
            if is_mysql(self.engine.dialect):
                # Each look-up its own transaction, as PostgreSQL's READ COMMITTED reads: one
                # REPEATABLE READ snapshot for the whole scan would miss every row committed
                # after its first batch (and hold the tables' metadata locks throughout).
                conn = conn.execution_options(isolation_level="AUTOCOMMIT")
        try:
            yield partial(self.verdicts, conn=conn)
        finally:
            with suppress(sa.exc.SQLAlchemyError, OSError):  # it may be the connection that broke
                conn.close()

    def verdicts(
        self,
        task_ids: AbstractSet[str],
        sub_task_ids: AbstractSet[str],
        conn: sa.Connection | None = None,
    ) -> Verdicts:
        """The scan's batch look-up. On PostgreSQL the task rows come from an anti-join that
        returns only the missing and finished ones: live rows, nearly all of them, never leave
        the database. Sub-task rows and their parents are fetched whole, as in `lookup`."""
        if self.engine.dialect.name != "postgresql":
            # MySQL's pinned connection is in autocommit; SQLite keeps a connection per call.
            pinned = conn if is_mysql(self.engine.dialect) else None
            lookup = self.lookup(task_ids, sub_task_ids, conn=pinned)
            return Verdicts.build(task_ids, sub_task_ids, lookup)
        with (
            database_errors("looking up task rows"),
            nullcontext(conn) if conn is not None else self.engine.connect() as conn,
        ):
            subs: dict[str, RowState] = {}
            parents: dict[str, RowState] = {}
            invalid: set[str] = set()
            cfg, sub_cfg = self.settings.tasks, self.settings.sub_tasks
            if sub_task_ids:
                subs, invalid = self._fetch(
                    conn,
                    self.sub_tasks,
                    sub_cfg.id_column,
                    sub_cfg.status_column,
                    sub_task_ids,
                    parent_column=sub_cfg.parent_column,
                )
                parent_ids = {row.parent_id for row in subs.values() if row.parent_id is not None}
                parents, _ = self._fetch(
                    conn, self.tasks, cfg.id_column, cfg.status_column, parent_ids
                )
            finished, not_live, bad = self._not_live(conn, task_ids)
        lookup = Lookup(
            tasks=finished, sub_tasks=subs, parents=parents, invalid=frozenset(invalid | bad)
        )
        return Verdicts.build(task_ids, sub_task_ids, lookup, not_live_tasks=not_live)

    def _not_live(
        self,
        conn: sa.Connection,
        task_ids: Collection[str],
    ) -> tuple[dict[str, RowState], set[str], set[str]]:
        """(rows of finished tasks, ids whose row is missing or finished, ids that cannot be)."""
        cfg = self.settings.tasks
        table = self.tasks
        id_col = table.c[cfg.id_column]
        coerce = IdCoercer.for_column(id_col)
        by_value, invalid = coerce.group(task_ids)
        by_key = coerce.by_key(by_value)
        status = table.c[cfg.status_column] if cfg.status_column else sa.null()
        active = set(cfg.active_statuses)
        array_type = postgresql.ARRAY(id_col.type)
        # One text parameter in array syntax: a list parameter is expanded into an ARRAY[...] of
        # 5000 quoted literals, which costs psycopg2 and PostgreSQL ~7 ms more per batch.
        ids = sa.cast(sa.bindparam("ids", type_=sa.Text()), array_type)
        wanted = (
            sa.func.unnest(ids)
            .table_valued(sa.column("id", id_col.type))
            .render_derived(name="wanted")
        )
        gone: sa.ColumnElement[bool] = id_col.is_(None)
        if cfg.status_column:
            gone = sa.or_(gone, status.is_(None), status.not_in(list(active)))
        query = (
            sa.select(wanted.c.id, id_col.is_not(None), status)
            .select_from(wanted.outerjoin(table, id_col == wanted.c.id))
            .where(gone)
        )
        rows: dict[str, RowState] = {}
        not_live: set[str] = set()
        values = list(by_value)
        batch = self.settings.database.batch_size
        for start in range(0, len(values), batch):
            chunk = values[start : start + batch]
            for row_id, found, state in conn.execute(query, {"ids": pg_array_literal(chunk)}):
                texts = by_key.get(coerce.row_key(row_id), ())
                not_live.update(texts)
                if found:
                    row = RowState(
                        active=(state is None and not cfg.status_column) or state in active,
                        status="" if state is None else str(state),
                    )
                    rows.update(dict.fromkeys(texts, row))
        return rows, not_live, invalid

    def _fetch(
        self,
        conn: sa.Connection,
        table: sa.Table,
        id_column: str,
        status_column: str,
        ids: Collection[str],
        parent_column: str = "",
    ) -> tuple[dict[str, RowState], set[str]]:
        id_col = table.c[id_column]
        coerce = IdCoercer.for_column(id_col)
        by_value, invalid = coerce.group(ids)
        columns: list[sa.ColumnElement[Any]] = [id_col]
        columns.append(table.c[status_column] if status_column else sa.null())
        columns.append(table.c[parent_column] if parent_column else sa.null())
        active = set(self.settings.tasks.active_statuses)

        states: dict[tuple[Any, Any], RowState] = {}  # a few statuses: one RowState each

        def state(status: Any, parent: Any) -> RowState:
            found = states.get((status, parent))
            if found is None:
                found = states[status, parent] = RowState(
                    active=(status is None and not status_column) or status in active,
                    status="" if status is None else str(status),
                    parent_id=None if parent is None else str(parent),
                )
            return found

        rows: dict[str, RowState] = {}
        values = list(by_value)
        batch = self.settings.database.batch_size
        for start in range(0, len(values), batch):
            chunk = values[start : start + batch]
            # A row stands for the ids of its own batch that the server calls equal to it.
            by_key = coerce.by_key({v: by_value[v] for v in chunk} if coerce.fold else by_value)
            strays = False  # a row that matches no id's key: the fold is not the equality
            doubtful: set[str] = set()  # ids matched to a row by a fold that may be wrong
            for row_id, status, parent in conn.execute(
                sa.select(*columns).where(self._id_filter(id_col, chunk))
            ):
                texts = by_key.get(coerce.row_key(row_id))
                if texts is None:
                    strays = True
                    continue
                rows.update(dict.fromkeys(texts, state(status, parent)))
                if coerce.unsure(row_id):
                    doubtful.update(texts)
            if strays or doubtful or (coerce.fold_ascii_only and any(map(coerce.unsure, chunk))):
                # Which ids those rows were for is not known for sure: each id of the batch
                # not matched for certain (no row, or a non-ASCII id or row) is asked on its
                # own, with the server's own `=`: never missing (nor present) on the fold's word.
                for value in chunk:
                    text = by_value[value][0]
                    if text not in rows or text in doubtful or coerce.unsure(value):
                        query = sa.select(*columns).where(id_col == coerce.param(text))
                        found = conn.execute(query).first()
                        for each in by_value[value]:
                            if found is None:
                                rows.pop(each, None)
                            else:
                                rows[each] = state(found[1], found[2])
        return rows, invalid

    def _id_filter(self, column: sa.Column[Any], values: list[Any]) -> sa.ColumnElement[bool]:
        if self.engine.dialect.name == "postgresql":
            # One array-literal parameter instead of thousands of bind parameters.
            array_type = postgresql.ARRAY(column.type)
            ids = sa.literal(pg_array_literal(values), sa.Text())
            return column == sa.any_(sa.cast(ids, array_type))
        return column.in_(values)

    # -- the reverse check ----------------------------------------------------------------------
    def iter_stuck(self, older_than_s: float, now: float) -> Iterator[StuckRow]:
        """Rows still to run, untouched for `older_than_s`, streamed with a server-side cursor."""
        cfg = self.settings.tasks
        if not cfg.updated_at_column:
            return
        yield from self._iter_stuck_table(self.tasks, cfg, "task", older_than_s, now)

    def _iter_stuck_table(
        self,
        table: sa.Table,
        cfg: TaskTableSettings | SubTaskTableSettings,
        kind: RowKind,
        older_than_s: float,
        now: float,
    ) -> Iterator[StuckRow]:
        assert isinstance(cfg, TaskTableSettings)
        updated = table.c[cfg.updated_at_column]
        cutoff = _cutoff_for(updated, now - older_than_s)
        celery_col = table.c[cfg.celery_id_column] if cfg.celery_id_column else sa.null()
        query = (
            sa.select(table.c[cfg.id_column], table.c[cfg.status_column], updated, celery_col)
            .where(table.c[cfg.status_column].in_(list(cfg.active_statuses)))
            .where(updated < cutoff)
            .execution_options(yield_per=self.settings.database.batch_size)
        )
        with database_errors("streaming rows still to run"), self.engine.connect() as conn:
            for row_id, status, updated_at, celery_id in conn.execute(query):
                yield StuckRow(
                    db_id=str(row_id),
                    row_kind=kind,
                    status=str(status),
                    updated_at=_as_epoch(updated_at),
                    celery_id=None if celery_id is None else str(celery_id),
                )

    def iter_active_rows(self) -> Iterator[dict[str, Any]]:
        """Every row in a "still to run" status, whole, streamed with a server-side cursor."""
        cfg = self.settings.tasks
        table = self.tasks
        query = (
            sa.select(table)
            .where(table.c[cfg.status_column].in_(cfg.active_statuses))
            .execution_options(yield_per=self.settings.database.batch_size)
        )
        with database_errors("reading active rows"), self.engine.connect() as conn:
            for row in conn.execute(query):
                yield dict(row._mapping)


def _cutoff_for(column: sa.Column[Any], epoch: float) -> Any:
    if isinstance(column.type, sa.DateTime):
        moment = datetime.fromtimestamp(epoch, tz=UTC)
        return moment if column.type.timezone else moment.replace(tzinfo=None)
    return epoch


def _as_epoch(value: Any) -> float | None:
    if value is None:
        return None
    if isinstance(value, datetime):
        if value.tzinfo is None:
            value = value.replace(tzinfo=UTC)
        return float(value.timestamp())
    if isinstance(value, int | float):
        return float(value)
    return None
