"""Per-process state of the guards: settings, one database pool per worker process, skip counters.

Nothing happens at import. Settings come from `configure_guards()` (the user's Celery module) or,
on the first guarded task, from the loader a framework registered (`set_settings_loader`: the
Django app's `ready()`), else `$MAINTENANCE_CONFIG` / `config/maintenance.toml`. The pool is
created on first use in each process, so a prefork child never shares sockets with its parent.
"""

from __future__ import annotations

import os
import threading
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import structlog

from maintenance.adapters.guard_rows import RowReader, open_row_reader
from maintenance.adapters.guard_skips import SkipCounter
from maintenance.adapters.redis_layout import OwnKeys
from maintenance.config import Settings, load_settings, resolve_config_path
from maintenance.core.bindings import Binding, BindingTable
from maintenance.core.models import RowKind, Rows
from maintenance.errors import BrokerUnavailable

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
        self.skips = SkipCounter(settings.redis, OwnKeys(settings.cleanup.key_prefix).guard_skips)

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
                self._reader.forget()  # inherited through fork: the parent's pool is not ours
                self._reader = None
            if self._reader is None:
                self._reader = open_row_reader(self.settings)
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
            self.skips.count(reason)
        except BrokerUnavailable as exc:
            log.warning("could not count the skip in Redis", key=self.skips.key, error=str(exc))

    def close(self) -> None:
        with self._lock:
            if self._reader is not None and self._pid == os.getpid():
                self._reader.close()
            self._reader = None
            self.skips.close()


_runtime: GuardRuntime | None = None
_runtime_lock = threading.Lock()
_loader: Callable[[], Settings] | None = None


def set_settings_loader(loader: Callable[[], Settings] | None) -> None:
    """Where the first guarded task gets its settings when nobody called `configure_guards()`.

    A framework integration registers one: the Django app's `ready()` builds them from
    `settings.TASK_MAINTENANCE`, which cannot be read when the user's Celery module is imported
    (Django is not set up yet). Called lazily, so registering opens and reads nothing; `None`
    restores the config file.
    """
    global _loader
    _loader = loader


def configure_guards(
    settings: Settings | None = None, *, config_path: str | Path | None = None
) -> GuardRuntime:
    """Give the guards their settings explicitly (from the app's Celery module), or a file path.

    Opens no connection: the pool is created by the first guarded task of each process.
    """
    global _runtime
    if settings is None:
        settings = load_settings(
            resolve_config_path(None if config_path is None else str(config_path), os.environ)
        )
    with _runtime_lock:
        if _runtime is not None:
            _runtime.close()
        _runtime = GuardRuntime(settings)
        return _runtime


def guard_runtime() -> GuardRuntime:
    """The configured runtime; on first use, if nobody configured it, the registered loader's
    settings, else `$MAINTENANCE_CONFIG`'s."""
    global _runtime
    runtime = _runtime
    if runtime is not None:
        return runtime
    with _runtime_lock:
        if _runtime is None:
            if _loader is not None:
                settings = _loader()
            else:
                settings = load_settings(resolve_config_path(None, os.environ))
            _runtime = GuardRuntime(settings)
        return _runtime
