"""The cleanup run: lock, scan, wait out the grace period, re-check, plan, confirm, apply, record.

Shared by `task-cleanup cleanup|quick-fix`, `RedisTaskCleaner` and the Celery tasks.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import structlog
from redis.exceptions import LockError

from maintenance.adapters.history import ActionBuffer, HistoryStore
from maintenance.adapters.redis_reader import broker_errors
from maintenance.adapters.scan_summary import ScanSummaryStore
from maintenance.adapters.stuck_rows import StuckRows
from maintenance.alerts import maybe_alert
from maintenance.apply import Applier
from maintenance.core.diff import judge_message
from maintenance.core.models import Finding, FindingKind, Message
from maintenance.core.plan import Plan, Policy, Recheck, make_plan, needs_recheck, recheck_key
from maintenance.core.report import ScanReport
from maintenance.errors import LockHeld, PlanRefused, UnavailableError
from maintenance.reconcile import Progress, Reconciler
from maintenance.services import Services

log = structlog.get_logger(__name__)


@dataclass(frozen=True)
class RunOptions:
    mode: str = "cleanup"  # cleanup, quick-fix, scan_orphans, cleanup_expired_tasks
    started_by: str = "cli"
    dry_run: bool = False
    grace_s: float | None = None  # None: cleanup.grace_s
    max_orphan_ratio: float | None = None
    max_orphans: int | None = None
    scan_results: bool = True
    kinds: frozenset[FindingKind] = frozenset(FindingKind)  # which findings this run acts on
    confirm: Callable[[Plan, ScanReport], bool] | None = None  # None: proceed
    should_stop: Callable[[], bool] = lambda: False  # e.g. Celery's soft time limit is near
    on_wait: Callable[[float, int], None] | None = None  # (seconds, findings) before a re-check
    # Exceptions that end a run early but cleanly (Celery's SoftTimeLimitExceeded): the run is
    # recorded "partial", the lock released, and the exception re-raised to the caller.
    interrupted_by: tuple[type[BaseException], ...] = ()


@dataclass
class RunResult:
    run_id: str
    outcome: str  # ok, partial, refused, declined, dry_run, failed
    plan: Plan
    report: ScanReport
    done: dict[str, int] = field(default_factory=dict)
    error: str = ""

    def summary(self) -> dict[str, Any]:
        return {"run_id": self.run_id, "outcome": self.outcome, "done": dict(self.done),
                "planned": self.plan.counts(), "found": self.report.counts(),
                "refused": self.plan.refused or None, "error": self.error or None}


class CleanupService:
    def __init__(self, services: Services, *, progress: Progress | None = None,
                 clock: Callable[[], float] = time.time,
                 sleep: Callable[[float], None] = time.sleep):
        self.services = services
        self.settings = services.settings
        self.progress = progress
        self.clock = clock
        self.sleep = sleep
        self.history = HistoryStore(services.db.engine)

    def policy(self, options: RunOptions) -> Policy:
        c = self.settings.cleanup
        return Policy(
            grace_s=c.grace_s if options.grace_s is None else options.grace_s,
            max_orphan_ratio=options.max_orphan_ratio or c.max_orphan_ratio,
            max_orphans=c.max_orphans if options.max_orphans is None else options.max_orphans,
            stuck_action=c.stuck_action,
            visibility_timeout_s=self.services.layout.visibility_timeout_s)

    @contextmanager
    def run_lock(self, wait_s: float | None = None) -> Iterator[None]:
        """One run at a time across CLI, beat and every maintenance worker."""
        cfg = self.settings.cleanup
        with broker_errors("taking the run lock"):
            lock = self.services.broker.lock(self.services.own_keys.lock, timeout=cfg.lock_ttl_s,
                                             blocking_timeout=cfg.lock_wait_s if wait_s is None
                                             else wait_s)
            if not lock.acquire(blocking=(wait_s or cfg.lock_wait_s) > 0):
                holder = self.services.broker.get(self.services.own_keys.key("lock", "holder"))
                raise LockHeld("another maintenance run holds the lock "
                               f"({_text(holder or b'unknown')}); try again when it ends")
            self.services.broker.set(self.services.own_keys.key("lock", "holder"),
                                     f"{self.run_holder}", ex=int(cfg.lock_ttl_s))
        try:
            yield
        finally:
            with broker_errors("releasing the run lock"):
                try:
                    lock.release()
                except LockError:  # it expired (run longer than lock_ttl_s): nothing to release
                    log.warning("run lock had expired before release")

    run_holder = "task-cleanup"

    def run(self, options: RunOptions) -> RunResult:
        policy = self.policy(options)
        if options.dry_run:
            report, plan = self._scan_and_plan(options, policy, recheck_now=True)
            return RunResult("", "dry_run", plan, report)
        self.run_holder = f"{options.mode} by {options.started_by}"
        with self.run_lock():
            run_id = self.history.start_run(options.started_by, options.mode)
            with structlog.contextvars.bound_contextvars(run_id=run_id):
                return self._run_locked(run_id, options, policy)

    def _run_locked(self, run_id: str, options: RunOptions, policy: Policy) -> RunResult:
        done: Counter[str] = Counter()
        plan, report = Plan(), ScanReport(started_at=self.clock())
        applier: Applier | None = None
        actions = ActionBuffer(self.history, run_id)
        try:
            report, plan = self._scan_and_plan(options, policy, recheck_now=False)
            if options.should_stop():  # the limit came during the scan or grace wait: act on none
                self._finish(run_id, "partial", report, plan, done, "stopped before acting: "
                             "time limit near")
                return RunResult(run_id, "partial", plan, report)
            if plan.refused:
                self._finish(run_id, "refused", report, plan, done, plan.refused)
                raise PlanRefused(plan.refused)
            if options.confirm is not None and not options.confirm(plan, report):
                self._finish(run_id, "declined", report, plan, done)
                return RunResult(run_id, "declined", plan, report)
            applier = Applier(self.services, run_id, actions.add,
                              should_stop=options.should_stop, progress=self.progress)
            done = applier.apply(plan)
            actions.flush()
        except UnavailableError as exc:
            done = applier.done if applier is not None else done
            self._flush_best_effort(actions)
            self._finish(run_id, "failed", report, plan, done, str(exc), best_effort=True)
            log.error("maintenance run failed: nothing further was changed", error=str(exc),
                      done=dict(done))
            raise
        except options.interrupted_by as exc:
            done = applier.done if applier is not None else done
            self._flush_best_effort(actions)
            self._finish(run_id, "partial", report, plan, done,
                         f"interrupted: {type(exc).__name__}", best_effort=True)
            raise
        outcome = "partial" if applier.stopped_early else "ok"
        self._finish(run_id, outcome, report, plan, done)
        return RunResult(run_id, outcome, plan, report, dict(done))

    def _scan_and_plan(self, options: RunOptions, policy: Policy, recheck_now: bool
                       ) -> tuple[ScanReport, Plan]:
        reconciler = Reconciler(self.settings, self.services.reader, self.services.db,
                                self.services.workers, progress=self.progress, clock=self.clock)
        report = reconciler.scan(results=options.scan_results)
        if options.scan_results and not options.dry_run:  # a whole scan: what `monitor` shows
            ScanSummaryStore(self.services.broker, self.services.own_keys).save_report(
                report, options.mode)
        findings = [f for f in report.findings if f.kind in options.kinds]
        recheck = Recheck()
        pending = needs_recheck(findings, policy)
        if pending and not recheck_now:
            recheck = self._recheck(report, pending, policy, options)
        plan = make_plan(findings, managed_messages=report.managed_messages,
                         workers_alive=bool(report.workers) or not report.workers_inspected,
                         now=self.clock(), policy=policy, recheck=recheck,
                         taken_at=_taken_at(report))
        return report, plan

    def _recheck(self, report: ScanReport, pending: list[Finding],
                 policy: Policy, options: RunOptions) -> Recheck:
        """The second look: a missing row must still be missing `grace_s` after the first."""
        wait_s = max(0.0, report.finished_at + policy.grace_s - self.clock())
        if options.on_wait is not None:
            options.on_wait(wait_s, len(pending))
        log.info("waiting out the grace period before acting on missing rows",
                 seconds=round(wait_s, 1), findings=len(pending))
        deadline = self.clock() + wait_s
        while self.clock() < deadline:
            if options.should_stop():
                return Recheck()
            self.sleep(min(1.0, deadline - self.clock()))
        orphans = [f for f in pending if f.kind is FindingKind.ORPHAN]
        lost = [f for f in pending if f.kind is FindingKind.LOST]
        still: set[str] = set()
        if orphans:
            # The scan's own batch look-up and verdict, so a row is judged the same way twice;
            # on PostgreSQL only the rows still not live come back from the anti-join.
            verdicts = self.services.db.verdicts(
                {f.db_id for f in orphans if f.db_id and f.row_kind == "task"},
                {f.db_id for f in orphans if f.db_id and f.row_kind == "sub_task"})
            for f in orphans:
                if f.db_id and verdicts.fine(f.row_kind, f.db_id):
                    continue  # its row is live now: committed during the grace period
                again = judge_message(_as_message(f), verdicts.lookup)
                if again is not None and again.kind is FindingKind.ORPHAN:
                    still.add(recheck_key(f))
        if lost:
            ids = StuckRows(self.services.db).still_stuck(
                {f.db_id for f in lost if f.db_id}, self.settings.scan.stuck_after_h * 3600,
                self.clock())
            still.update(recheck_key(f) for f in lost if f.db_id in ids)
        return Recheck(still_bad=frozenset(still), checked_at=self.clock())

    @staticmethod
    def _flush_best_effort(actions: ActionBuffer) -> None:
        try:
            actions.flush()
        except UnavailableError as exc:
            log.error("could not record the last actions in the history", error=str(exc))

    def _finish(self, run_id: str, outcome: str, report: ScanReport, plan: Plan,
                done: Counter[str], error: str | None = None, best_effort: bool = False) -> None:
        counts = {"found": report.counts(), "planned": plan.counts(), "done": dict(done)}
        log.info("🧹 maintenance run finished", outcome=outcome, **dict(done),
                 found=report.counts(), held=len(plan.held))
        try:
            self.history.finish_run(run_id, outcome, counts, error)
        except UnavailableError as exc:
            if not best_effort:
                raise
            log.error("could not record the run's end in the history", error=str(exc))
        finally:
            # After the record, never before: an alert must not delay or fail the run itself.
            maybe_alert(self.settings, {"counts": report.counts(), "run_id": run_id,
                                        "done": dict(done), "error": error,
                                        "refused": plan.refused or None}, outcome)


def _taken_at(report: ScanReport) -> dict[str, float]:
    out = {}
    for f in report.findings:
        if f.location.delivery_tag and f.age_s is not None:
            out[f.location.delivery_tag] = time.time() - f.age_s
    return out


def _as_message(f: Finding) -> Message:
    return Message(f.task_id, f.task_name, f.location, db_id=f.db_id, row_kind=f.row_kind)


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
