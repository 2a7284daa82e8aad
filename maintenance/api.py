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

from maintenance.config import Settings, load_settings, resolve_config_path
from maintenance.core.models import FindingKind, Message
from maintenance.core.report import ScanReport
from maintenance.core.where import compile_where
from maintenance.service import Maintenance, RunMode, RunOptions


class RedisTaskCleaner:
    def __init__(self, settings: Settings, maintenance: Maintenance | None = None):
        self.settings = settings
        self._maintenance = maintenance

    @classmethod
    def from_config(
        cls, path: str | Path | None = None, env: Mapping[str, str] | None = None
    ) -> RedisTaskCleaner:
        env = os.environ if env is None else env
        return cls(load_settings(resolve_config_path(str(path) if path else None, env), env))

    @property
    def maintenance(self) -> Maintenance:
        """Connections are opened on first use, not on construction."""
        if self._maintenance is None:
            self._maintenance = Maintenance.open(self.settings)
        return self._maintenance

    def close(self) -> None:
        if self._maintenance is not None:
            self._maintenance.close()
            self._maintenance = None

    def __enter__(self) -> RedisTaskCleaner:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- reading ------------------------------------------------------------------------------
    def scan(self, task_id: str | None = None, results: bool = True) -> ScanReport:
        return self.maintenance.scan(task_id, results=results)

    def get_active_tasks_from_db(self, limit: int | None = 10_000) -> list[dict[str, Any]]:
        """Rows in a "still to run" status (streamed from the database, at most `limit`)."""
        return list(islice(self.iter_active_rows(), limit))

    def iter_active_rows(self) -> Iterator[dict[str, Any]]:
        return self.maintenance.active_rows()

    def get_active_tasks_from_redis(self, limit: int | None = 10_000) -> list[dict[str, Any]]:
        """Messages waiting in the queues or held unacked (at most `limit`)."""
        return list(islice(self.iter_redis_tasks(), limit))

    def iter_redis_tasks(self) -> Iterator[dict[str, Any]]:
        for message in self.maintenance.redis_messages():
            yield _message_dict(message)

    def find_orphaned_tasks(self) -> list[dict[str, Any]]:
        """Messages whose row is gone or finished, with where each one sits."""
        report = self.scan(results=False)
        return [f.as_dict() for f in report.of_kind(FindingKind.ORPHAN)]

    def check_task(self, task_id: str) -> dict[str, Any]:
        return self.scan(task_id=task_id).as_dict()

    # -- acting (every safety check of `task-cleanup cleanup` applies) -------------------------
    def revoke_orphaned_tasks(
        self, *, dry_run: bool = False, grace_s: float | None = None, started_by: str = "api"
    ) -> dict[str, Any]:
        options = RunOptions(
            mode=RunMode.REVOKE_ORPHANS,
            started_by=started_by,
            dry_run=dry_run,
            grace_s=grace_s,
            scan_results=False,
            kinds=frozenset({FindingKind.ORPHAN}),
        )
        return self.maintenance.cleanup(options).summary()

    def cleanup_expired_results(
        self, *, dry_run: bool = False, started_by: str = "api"
    ) -> dict[str, Any]:
        options = RunOptions(
            mode=RunMode.EXPIRED_RESULTS,
            started_by=started_by,
            dry_run=dry_run,
            kinds=frozenset({FindingKind.STALE_RESULT}),
        )
        return self.maintenance.cleanup(options).summary()

    def revoke(
        self, task_ids: list[str], force: bool = False, started_by: str = "api"
    ) -> dict[str, Any]:
        result = self.maintenance.revoke(task_ids, force=force, started_by=started_by)
        return {"run_id": result.run_id, "done": result.done, "details": result.details}

    def restore(self, task_ids: list[str] | None = None, started_by: str = "api") -> dict[str, Any]:
        """Put quarantined messages back (all of them when `task_ids` is None)."""
        result = self.maintenance.restore(task_ids, started_by=started_by)
        return {"run_id": result.run_id, "done": result.done, "details": result.details}

    def queues(self) -> dict[str, Any]:
        """What `task-cleanup queues --json` prints: per band, messages by task name (orphans
        of bound names), ETAs, the next to be delivered; unacked entries by age and name."""
        inventory, _report = self.maintenance.queues()
        return {
            "queues": [stock.as_dict() for stock in inventory.bands.values()],
            "unacked": inventory.unacked.as_dict(),
        }

    def list_messages(
        self, task_name: str = "*", limit: int | None = 1000, sample: int | None = None
    ) -> list[dict[str, Any]]:
        """The messages of these task names (a shell glob), one dict each (`queues --task-name`)."""
        listed = self.maintenance.browse(task_name, sample=sample)
        return [d.as_dict() for d in islice(listed, limit)]

    def purge(
        self,
        task_name: str,
        *,
        queues: list[str] | None = None,
        where: str | None = None,
        older_than_s: float | None = None,
        dry_run: bool = True,
        started_by: str = "api",
    ) -> dict[str, Any]:
        """`task-cleanup purge`: the selection, and with `dry_run=False` the run that took it
        into the quarantine (restorable with `restore`). `where` as on the command line; a bad
        one raises `maintenance.core.where.WhereError` (a ValueError)."""
        selection = self.maintenance.purge_selection(
            task_name,
            queues=tuple(queues or ()),
            where=compile_where(where) if where else None,
            older_than_s=older_than_s,
        )
        doc: dict[str, Any] = {"dry_run": dry_run, "selection": selection.as_dict(), "done": {}}
        if not dry_run and selection.findings:
            result = self.maintenance.purge(selection, started_by=started_by)
            doc.update(run_id=result.run_id, done=result.done, details=result.details)
        return doc


def _message_dict(msg: Message) -> dict[str, Any]:
    loc = msg.location
    return {
        "task_id": msg.task_id,
        "task_name": msg.task_name,
        "db_id": msg.db_id,
        "row_kind": msg.row_kind or None,
        "where": loc.where.value,
        "queue": loc.queue,
        "priority": loc.priority,
        "eta": msg.eta,
        "problem": msg.problem.value if msg.problem else None,
    }
