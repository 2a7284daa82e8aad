"""The maintenance worker's Celery tasks: thin callers of the `Maintenance` service.

    maintenance.scan_orphans           orphans removed with all of cleanup's safety (grace period,
                                       circuit breaker, lock, fail closed, quarantine)
    maintenance.cleanup_expired_tasks  stale results, lost rows by `stuck_action`, quarantine past
                                       retention, control reply lists nobody reads
    maintenance.scan_part, scan_workers_part, scan_merge
                                       `[scan] fan_out`: scan_orphans' scan in parts, merged
                                       by a chord (actions/fanout.py)

Both are registered on an app passed in (`register_tasks`), so importing this module builds nothing;
`maintenance.worker` is the entry module that does. Each run opens its own connections and closes
them, so a worker holds nothing between two nightly runs.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import structlog
from celery import Celery, Task
from celery.exceptions import SoftTimeLimitExceeded

from maintenance.config import Settings
from maintenance.core.models import FindingKind, Outcome, RunMode
from maintenance.errors import LockHeld, PlanRefused
from maintenance.schedule import CLEANUP_EXPIRED_TASKS, SCAN_ORPHANS, task_routes
from maintenance.service import (
    SCAN_MERGE,
    SCAN_PART,
    SCAN_WORKERS_PART,
    FanOutParts,
    Maintenance,
    RunOptions,
)

log = structlog.get_logger(__name__)

Body = Callable[[Maintenance, RunOptions], dict[str, Any]]
LOCK_RETRY_S = 60  # how long a run that met the lock waits before it tries again


@dataclass(frozen=True)
class Deadline:
    """The soft limit, seen from inside the task: stop between steps before Celery interrupts.

    The margin (10% of the soft limit, within 2 s to a minute) leaves time to record the run and
    release the lock; `SoftTimeLimitExceeded` remains the backstop for a step that overruns it.
    """

    started: float
    soft_limit_s: float

    @property
    def margin_s(self) -> float:
        return min(60.0, max(2.0, self.soft_limit_s * 0.1))

    def near(self) -> bool:
        return time.monotonic() >= self.started + self.soft_limit_s - self.margin_s


def run_maintenance(
    task: Task, settings: Settings, mode: RunMode, started_by: str, body: Body
) -> dict[str, Any]:
    """Open the service, run `body`, close; map the expected refusals to a summary, not a
    failure."""
    deadline = Deadline(
        time.monotonic(), float(task.soft_time_limit or settings.schedule.soft_time_limit_s)
    )
    options = RunOptions(
        mode=mode,
        started_by=f"{started_by} via {task.request.hostname}",
        should_stop=deadline.near,
        interrupted_by=(SoftTimeLimitExceeded,),
    )
    with structlog.contextvars.bound_contextvars(maintenance_task_id=task.request.id, task=mode):
        maintenance = Maintenance.open(settings, app=task.app)
        try:
            return body(maintenance, options)
        except LockHeld as exc:
            return _lock_held(task, settings, exc)
        except PlanRefused as exc:
            log.error("maintenance run refused by the circuit breaker", reason=str(exc))
            return {"outcome": Outcome.REFUSED, "reason": str(exc)}
        except SoftTimeLimitExceeded:
            log.warning(
                "maintenance run stopped at the soft time limit; recorded as partial",
                soft_limit_s=deadline.soft_limit_s,
            )
            return {"outcome": Outcome.PARTIAL, "reason": "soft time limit exceeded"}
        finally:
            maintenance.close()


def _lock_held(task: Task, settings: Settings, exc: LockHeld) -> dict[str, Any]:
    """Another run holds the lock: retry later on a crontab schedule, else skip.

    Both tasks fire at 02:00 by default; with two workers (or concurrency above 1) one of them
    meets the other's lock, and skipping would lose that night's run. So it retries every
    `LOCK_RETRY_S` for as long as a run may last. On a short interval the next firing comes soon
    anyway: a summary saying "skipped", logged once, rather than a pile of retries or failures.
    """
    max_retries = max(1, settings.schedule.time_limit_s // LOCK_RETRY_S)
    if settings.schedule.interval_s <= 0 and task.request.retries < max_retries:
        log.info(
            "another maintenance run holds the lock: retrying later",
            reason=str(exc),
            countdown_s=LOCK_RETRY_S,
            attempt=task.request.retries + 1,
        )
        raise task.retry(countdown=LOCK_RETRY_S, max_retries=max_retries)
    log.info("maintenance run skipped: another run holds the lock", reason=str(exc))
    return {"outcome": Outcome.SKIPPED, "reason": str(exc)}


def scan_orphans_body(maintenance: Maintenance, options: RunOptions) -> dict[str, Any]:
    """Orphans only; results are not scanned, the nightly expiry run reads them. With
    `[scan] fan_out`, maintenance workers scan the parts in parallel (actions/fanout.py)."""
    options = dataclasses.replace(
        options, kinds=frozenset({FindingKind.ORPHAN}), scan_results=False
    )
    fan_out = maintenance.settings.scan.fan_out
    return maintenance.cleanup(options, fan_out=fan_out).summary()


def cleanup_expired_body(maintenance: Maintenance, options: RunOptions) -> dict[str, Any]:
    return maintenance.expire(options)


def register_fan_out_tasks(app: Celery, settings: Settings, common: dict[str, Any]) -> None:
    """The fan-out scan's parts and its chord callback: a run's parts in one worker process share
    its connections; each answers a JSON document (a part never raises: the callback names
    every failed part)."""
    ttl_s = float(settings.schedule.time_limit_s)
    fan_out = FanOutParts(settings, app)

    @app.task(name=SCAN_WORKERS_PART, **common)
    def scan_workers_part(self: Task, run_id: str) -> dict[str, Any]:
        with structlog.contextvars.bound_contextvars(maintenance_task_id=self.request.id):
            return fan_out.workers_part(run_id)

    @app.task(name=SCAN_PART, **common)
    def scan_part(
        self: Task, run_id: str, part: dict[str, Any], held_ids: list[str], ttl: float = ttl_s
    ) -> dict[str, Any]:
        with structlog.contextvars.bound_contextvars(maintenance_task_id=self.request.id):
            return fan_out.part(run_id, part, held_ids, ttl)

    @app.task(name=SCAN_MERGE, **common)
    def scan_merge(
        self: Task,
        parts: list[dict[str, Any]],
        run_id: str,
        view: dict[str, Any],
        record_as: str | None,
        ttl: float = ttl_s,
    ) -> dict[str, Any]:
        with structlog.contextvars.bound_contextvars(maintenance_task_id=self.request.id):
            return fan_out.merge(parts, run_id, view, record_as, ttl)


def register_tasks(app: Celery, settings: Settings) -> dict[str, Task]:
    """Both tasks on `app`, with the configured queue and time limits, returned by name."""
    cfg = settings.schedule
    common: dict[str, Any] = {
        "bind": True,
        "queue": cfg.queue,
        "time_limit": cfg.time_limit_s,
        "soft_time_limit": cfg.soft_time_limit_s,
        "acks_late": False,  # a run killed mid-way is not replayed: the next schedule starts anew
        "typing": True,
    }

    @app.task(name=SCAN_ORPHANS, **common)
    def scan_orphans(self: Task, started_by: str = "celery") -> dict[str, Any]:
        return run_maintenance(self, settings, RunMode.SCAN_ORPHANS, started_by, scan_orphans_body)

    @app.task(name=CLEANUP_EXPIRED_TASKS, **common)
    def cleanup_expired_tasks(self: Task, started_by: str = "celery") -> dict[str, Any]:
        return run_maintenance(
            self, settings, RunMode.CLEANUP_EXPIRED_TASKS, started_by, cleanup_expired_body
        )

    register_fan_out_tasks(app, settings, common)
    if settings.scan.fan_out:
        # A worker running a run takes no part behind it: prefetched beside the run (which is
        # acked when it starts), a part would wait for the run, and the run for the part.
        app.conf.worker_disable_prefetch = True
    routes = app.conf.task_routes
    if routes is None or isinstance(routes, Mapping):
        app.conf.task_routes = {**(routes or {}), **task_routes(settings)}
    else:  # a list of routers: ours first, the app's own after
        app.conf.task_routes = (task_routes(settings), *routes)
    return {SCAN_ORPHANS: scan_orphans, CLEANUP_EXPIRED_TASKS: cleanup_expired_tasks}
