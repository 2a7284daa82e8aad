"""`RedisTaskCleaner`: the seed's Python API, for programs and notebooks, over the same services.

    from maintenance import RedisTaskCleaner

    with RedisTaskCleaner.from_config("config/maintenance.toml") as cleaner:
        orphans = cleaner.find_orphaned_tasks()
        cleaner.revoke_orphaned_tasks(dry_run=True)

Every method returns plain data (dicts and lists) and raises this package's own errors.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from itertools import islice
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from maintenance.adapters.database import database_errors
from maintenance.config import Settings, load_settings, resolve_config_path
from maintenance.core.models import FindingKind, Where
from maintenance.core.report import ScanReport
from maintenance.reconcile import Reconciler
from maintenance.services import Services, open_services


class RedisTaskCleaner:
    def __init__(self, settings: Settings, services: Services | None = None):
        self.settings = settings
        self._services = services

    @classmethod
    def from_config(cls, path: str | Path | None = None,
                    env: Mapping[str, str] | None = None) -> RedisTaskCleaner:
        env = os.environ if env is None else env
        return cls(load_settings(resolve_config_path(str(path) if path else None, env), env))

    @property
    def services(self) -> Services:
        """Connections are opened on first use, not on construction."""
        if self._services is None:
            self._services = open_services(self.settings)
        return self._services

    def close(self) -> None:
        if self._services is not None:
            self._services.close()
            self._services = None

    def __enter__(self) -> RedisTaskCleaner:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- reading ------------------------------------------------------------------------------
    def scan(self, task_id: str | None = None, results: bool = True) -> ScanReport:
        s = self.services
        return Reconciler(self.settings, s.reader, s.db, s.workers).scan(only=task_id,
                                                                          results=results)

    def get_active_tasks_from_db(self, limit: int | None = 10_000) -> list[dict[str, Any]]:
        """Rows in a "still to run" status (streamed from the database, at most `limit`)."""
        return list(islice(self.iter_active_rows(), limit))

    def iter_active_rows(self) -> Iterator[dict[str, Any]]:
        db = self.services.db
        cfg = self.settings.tasks
        table = db.tasks
        query = (sa.select(table).where(table.c[cfg.status_column].in_(cfg.active_statuses))
                 .execution_options(yield_per=self.settings.database.batch_size))
        with database_errors("reading active rows"), db.engine.connect() as conn:
            for row in conn.execute(query):
                yield {k: v for k, v in row._mapping.items()}

    def get_active_tasks_from_redis(self, limit: int | None = 10_000) -> list[dict[str, Any]]:
        """Messages waiting in the queues, held unacked, or on live workers (at most `limit`)."""
        return list(islice(self.iter_redis_tasks(), limit))

    def iter_redis_tasks(self) -> Iterator[dict[str, Any]]:
        from maintenance.core.bindings import BindingTable
        from maintenance.core.envelope import parse_list_element, parse_unacked_entry
        from maintenance.core.models import Location

        s = self.services
        bindings = BindingTable(self.settings.bindings)
        for queue in self.settings.scan.queues:
            for band, key in s.layout.queue_keys(queue):
                for start, chunk in s.reader.iter_list(key):
                    for offset, raw in enumerate(chunk):
                        loc = Location(Where.QUEUE, queue=queue, priority=band, key=key,
                                       index=start + offset)
                        yield _message_dict(parse_list_element(raw, loc, bindings))
        for entries in s.reader.iter_unacked():
            for entry in entries:
                loc = Location(Where.UNACKED, key=s.layout.unacked,
                               delivery_tag=entry.delivery_tag)
                yield _message_dict(parse_unacked_entry(entry.raw, loc, bindings))

    def find_orphaned_tasks(self) -> list[dict[str, Any]]:
        """Messages whose row is gone or finished, with where each one sits."""
        report = self.scan(results=False)
        return [f.as_dict() for f in report.of_kind(FindingKind.ORPHAN)]

    def check_task(self, task_id: str) -> dict[str, Any]:
        return self.scan(task_id=task_id).as_dict()

    # -- acting (every safety check of `task-cleanup cleanup` applies) -------------------------
    def revoke_orphaned_tasks(self, *, dry_run: bool = False, grace_s: float | None = None,
                              started_by: str = "api") -> dict[str, Any]:
        from maintenance.cleanup import CleanupService, RunOptions

        options = RunOptions(mode="revoke_orphans", started_by=started_by, dry_run=dry_run,
                             grace_s=grace_s, scan_results=False,
                             kinds=frozenset({FindingKind.ORPHAN}))
        return CleanupService(self.services).run(options).summary()

    def cleanup_expired_results(self, *, dry_run: bool = False, started_by: str = "api"
                                ) -> dict[str, Any]:
        from maintenance.cleanup import CleanupService, RunOptions

        options = RunOptions(mode="expired_results", started_by=started_by, dry_run=dry_run,
                             kinds=frozenset({FindingKind.STALE_RESULT}))
        return CleanupService(self.services).run(options).summary()

    def revoke(self, task_ids: list[str], force: bool = False) -> dict[str, Any]:
        from maintenance.cleanup import CleanupService
        from maintenance.manual import revoke_tasks

        result = revoke_tasks(CleanupService(self.services), task_ids, force=force)
        return {"run_id": result.run_id, "done": result.done, "details": result.details}

    def restore(self, task_ids: list[str] | None = None) -> dict[str, Any]:
        """Put quarantined messages back (all of them when `task_ids` is None)."""
        from maintenance.cleanup import CleanupService
        from maintenance.manual import restore_tasks

        result = restore_tasks(CleanupService(self.services), task_ids)
        return {"run_id": result.run_id, "done": result.done, "details": result.details}


def _message_dict(msg: Any) -> dict[str, Any]:
    loc = msg.location
    return {"task_id": msg.task_id, "task_name": msg.task_name, "db_id": msg.db_id,
            "row_kind": msg.row_kind or None, "where": loc.where.value, "queue": loc.queue,
            "priority": loc.priority, "eta": msg.eta,
            "problem": msg.problem.value if msg.problem else None}
