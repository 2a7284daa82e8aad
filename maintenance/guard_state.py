"""Per-process state of the guards: settings, one database pool per worker process, skip counters.

Nothing happens at import. Settings come from `configure_guards()` (the user's Celery module) or,
on the first guarded task, from `$MAINTENANCE_CONFIG` / `config/maintenance.toml`. The pool is
created on first use in each process, so a prefork child never shares sockets with its parent.
"""

from __future__ import annotations

import os
import threading
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import redis
import structlog

from maintenance.adapters.database import TaskDatabase
from maintenance.adapters.redis_layout import OwnKeys
from maintenance.config import Settings, load_settings, resolve_config_path
from maintenance.core.bindings import Binding, BindingTable, RowKind
from maintenance.guard_policy import Rows
from maintenance.guard_rows import RowReader, create_guard_engine

log = structlog.get_logger(__name__)


@dataclass(frozen=True, slots=True)
class GuardSkip:
    """One skipped task, as handed to skip listeners (an exporter, a webhook)."""

    task_name: str
    task_id: str
    db_id: str
    kind: RowKind
    reason: str


#: Skips in this process by reason; an exporter may read it (prefork: one counter per child).
GUARD_SKIPS: Counter[str] = Counter()
#: Re-checks in this process: "row_missing", "parent_missing" or "database_unavailable".
GUARD_RECHECKS: Counter[str] = Counter()
_listeners: list[Callable[[GuardSkip], None]] = []
_counter_lock = threading.Lock()


def add_skip_listener(listener: Callable[[GuardSkip], None]) -> None:
    """Call `listener` on every skip in this process (metrics, alerts); it must be quick."""
    _listeners.append(listener)


def remove_skip_listener(listener: Callable[[GuardSkip], None]) -> None:
    if listener in _listeners:
        _listeners.remove(listener)


def record_skip(skip: GuardSkip) -> None:
    """Count the skip, then tell listeners; a failing listener never changes the task's fate."""
    with _counter_lock:
        GUARD_SKIPS[skip.reason] += 1
    for listener in list(_listeners):
        try:
            listener(skip)
        except Exception:
            log.exception("guard skip listener failed", listener=repr(listener))


def record_recheck(reason: str) -> None:
    with _counter_lock:
        GUARD_RECHECKS[reason] += 1


class GuardRuntime:
    """Settings plus a lazily built row reader, rebuilt when the process id changes (fork)."""

    def __init__(self, settings: Settings):
        self.settings = settings
        self.bindings = BindingTable(settings.bindings)
        self._reader: RowReader | None = None
        self._pid = 0
        self._lock = threading.Lock()
        self._redis: tuple[int, redis.Redis] | None = None
        self.skips_key = OwnKeys(settings.cleanup.key_prefix).key("guard", "skips")

    def binding(self, task_name: str) -> Binding | None:
        return self.bindings.lookup(task_name)

    def reader(self) -> RowReader:
        """The process's reader; the threads pool shares it (SQLAlchemy pools are thread-safe).

        Built on first use: reflecting the tables reads the database, which may be down; then
        DatabaseUnavailable propagates and the next task start tries again.
        """
        reader, pid = self._reader, os.getpid()
        if reader is not None and self._pid == pid:
            return reader
        with self._lock:
            if self._reader is not None and self._pid != pid:
                # Inherited through fork: drop the parent's pool without closing its sockets.
                self._reader.engine.dispose(close=False)
                self._reader = None
            if self._reader is None:
                engine = create_guard_engine(self.settings)
                try:
                    self._reader = RowReader(TaskDatabase(engine, self.settings))
                except BaseException:
                    engine.dispose()
                    raise
                self._pid = pid
            return self._reader

    def fetch(self, kind: RowKind, db_id: str) -> Rows:
        """One primary-key look-up (a sub-task's parent comes along in the same statement)."""
        return self.reader().read(kind, db_id)

    def publish_skip(self, reason: str) -> None:
        """HINCRBY the skip hash that `task-cleanup monitor` exports as guard_skips_total.

        Per-process counters die with prefork children; this one is shared by every worker and
        lives in the broker Redis the maintenance settings name. Best effort: a failed write is
        logged and never changes the task's fate.
        """
        try:
            client = self._redis[1] if self._redis and self._redis[0] == os.getpid() else None
            if client is None:
                client = redis.Redis.from_url(
                    self.settings.redis.broker_url,
                    socket_timeout=self.settings.redis.socket_timeout_s,
                    socket_connect_timeout=self.settings.redis.socket_timeout_s)
                self._redis = (os.getpid(), client)
            client.hincrby(self.skips_key, reason, 1)
        except (redis.RedisError, OSError, ValueError) as exc:
            log.warning("could not count the skip in Redis", key=self.skips_key, error=str(exc))

    def close(self) -> None:
        with self._lock:
            if self._reader is not None and self._pid == os.getpid():
                self._reader.engine.dispose()
            self._reader = None
            if self._redis is not None and self._redis[0] == os.getpid():
                self._redis[1].close()
            self._redis = None


_runtime: GuardRuntime | None = None
_runtime_lock = threading.Lock()


def configure_guards(settings: Settings | None = None, *,
                     config_path: str | Path | None = None) -> GuardRuntime:
    """Give the guards their settings explicitly (from the app's Celery module), or a file path.

    Opens no connection: the pool is created by the first guarded task of each process.
    """
    global _runtime
    if settings is None:
        settings = load_settings(resolve_config_path(
            None if config_path is None else str(config_path), os.environ))
    with _runtime_lock:
        if _runtime is not None:
            _runtime.close()
        _runtime = GuardRuntime(settings)
        return _runtime


def guard_runtime() -> GuardRuntime:
    """The configured runtime; loads `$MAINTENANCE_CONFIG` on first use if nobody configured it."""
    global _runtime
    runtime = _runtime
    if runtime is not None:
        return runtime
    with _runtime_lock:
        if _runtime is None:
            _runtime = GuardRuntime(load_settings(resolve_config_path(None, os.environ)))
        return _runtime
