"""The guard's read: one statement per task start, by primary key, on a pool tuned for it.

The batched `TaskDatabase.lookup` is built for a scan of a million ids; a guard reads one row on
every task start, where each round trip counts. So: a plain `id = :id` select (a sub-task's parent
comes along through a join), autocommit (no BEGIN/ROLLBACK around it) and no pre-ping.
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from maintenance.adapters.database import (
    MYSQL_BACKENDS,
    TaskDatabase,
    create_db_engine,
    database_errors,
)
from maintenance.adapters.id_coercion import IdCoercer
from maintenance.config import Settings
from maintenance.core.models import RowKind, Rows, RowState, as_text
from maintenance.errors import ConfigError


def create_guard_engine(settings: Settings) -> Engine:
    """A server database (PostgreSQL, MySQL, MariaDB) in autocommit and without pre-ping: after
    a database restart the first read fails, the pool is invalidated and the guard's own back-off
    retries the task; a ping on every task would buy nothing but a round trip. SQLite gets the
    shared engine unchanged."""
    backend = _backend(settings)
    if backend != "postgresql" and backend not in MYSQL_BACKENDS:
        return create_db_engine(settings)
    return create_db_engine(settings, isolation_level="AUTOCOMMIT", pool_pre_ping=False)


def _backend(settings: Settings) -> str:
    try:
        return sa.make_url(settings.database.url).get_backend_name()
    except sa.exc.ArgumentError:
        return ""  # create_db_engine reports it against database.url


class RowReader:
    """Compiled once per process from the reflected tables; `read` is one round trip."""

    def __init__(self, db: TaskDatabase):
        settings = db.settings
        self.engine = db.engine
        self.active = frozenset(settings.tasks.active_statuses)
        tasks, cfg = db.tasks, settings.tasks
        task_id = tasks.c[cfg.id_column]
        # An id no row can have ('abc' for an int key) is not sent: the failed query would
        # read as "database unavailable" forever.
        self._task_id = IdCoercer.for_column(task_id)
        self._task_query = sa.select(tasks.c[cfg.status_column]).where(
            task_id == sa.bindparam("id", type_=task_id.type)
        )
        self._sub_query: sa.Select[Any] | None = None
        sub_cfg = settings.sub_tasks
        if sub_cfg.enabled:
            subs = db.sub_tasks
            parent = tasks.alias("parent")
            sub_id, parent_ref = subs.c[sub_cfg.id_column], subs.c[sub_cfg.parent_column]
            self._sub_has_status = bool(sub_cfg.status_column)
            sub_status = subs.c[sub_cfg.status_column] if sub_cfg.status_column else sa.null()
            self._sub_id = IdCoercer.for_column(sub_id)
            self._sub_query = (
                sa.select(
                    sub_status, parent_ref, parent.c[cfg.id_column], parent.c[cfg.status_column]
                )
                .select_from(subs.outerjoin(parent, parent.c[cfg.id_column] == parent_ref))
                .where(sub_id == sa.bindparam("id", type_=sub_id.type))
            )

    def read(self, kind: RowKind, db_id: str) -> Rows:
        if kind == "sub_task":
            return self._read_sub_task(db_id)
        value = self._task_id.param(db_id)
        if value is None:
            return Rows(None)
        with database_errors("reading a task row"), self.engine.connect() as conn:
            row = conn.execute(self._task_query, {"id": value}).first()
        return Rows(None if row is None else self._state(row[0]))

    def _read_sub_task(self, db_id: str) -> Rows:
        if self._sub_query is None:
            raise ConfigError(
                "@validate_sub_task_exists needs a [sub_tasks] table", key="sub_tasks.table"
            )
        value = self._sub_id.param(db_id)
        if value is None:
            return Rows(None)
        with database_errors("reading a sub-task row"), self.engine.connect() as conn:
            row = conn.execute(self._sub_query, {"id": value}).first()
        if row is None:
            return Rows(None)
        status, parent_ref, parent_id, parent_status = row
        sub = RowState(
            active=self._sub_active(status),
            status=as_text(status),
            parent_id=None if parent_ref is None else str(parent_ref),
        )
        if parent_ref is None:
            return Rows(sub)
        parent = None if parent_id is None else self._state(parent_status)
        return Rows(sub, parent, parent_checked=True)

    def _state(self, status: Any) -> RowState:
        return RowState(active=status in self.active, status=as_text(status))

    def _sub_active(self, status: Any) -> bool:
        """Without a status column a sub-task lives as long as its row (and its parent)."""
        return status in self.active if self._sub_has_status else True

    def close(self) -> None:
        self.engine.dispose()

    def forget(self) -> None:
        """Inherited through fork: drop the parent's pool without closing its sockets."""
        self.engine.dispose(close=False)


def open_row_reader(settings: Settings) -> RowReader:
    """Reflects the tables, which reads the database: DatabaseUnavailable may propagate, and
    the next task start tries again."""
    engine = create_guard_engine(settings)
    try:
        return RowReader(TaskDatabase(engine, settings))
    except BaseException:
        engine.dispose()
        raise
