"""The cleanup run: scan, wait out the grace period, re-check, plan, confirm, apply.

Shared by `task-cleanup cleanup|quick-fix`, `RedisTaskCleaner` and the Celery tasks, all through
`Maintenance.cleanup`; the lock and the history row come from the run recorder.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

import structlog

from maintenance.actions.apply import Applier
from maintenance.actions.recorder import RecordedRun, RunRecorder
from maintenance.config import Settings
from maintenance.core.bindings import BindingTable
from maintenance.core.diff import judge_message
from maintenance.core.hazards import extra_copies
from maintenance.core.models import (
    Finding,
    FindingKind,
    Message,
    Outcome,
    Progress,
    RunMode,
)
from maintenance.core.plan import Plan, Policy, Recheck, make_plan, needs_recheck, recheck_key
from maintenance.core.report import ScanReport
from maintenance.errors import PlanRefused
from maintenance.scan.copies import locate_copies
from maintenance.services import Adapters

log = structlog.get_logger(__name__)
# (results: scan the result keys too, record_as: the summary's source, None: save none)
Scan = Callable[[bool, str | None], ScanReport]


@dataclass(frozen=True)
class RunOptions:
    mode: RunMode = RunMode.CLEANUP
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
    # Remove tombstones with one whole-list LREM per list (blocks Redis ~0.3-1.4 s at 1M
    # messages) instead of bounded pieces that leave the deep ones to workers.
    compact_whole: bool = False


@dataclass
class RunResult:
    run_id: str
    outcome: Outcome
    plan: Plan
    report: ScanReport
    done: dict[str, int] = field(default_factory=dict)
    error: str = ""

    def summary(self) -> dict[str, Any]:
        return {
            "run_id": self.run_id,
            "outcome": self.outcome,
            "done": dict(self.done),
            "planned": self.plan.counts(),
            "found": self.report.counts(),
            "refused": self.plan.refused or None,
            "error": self.error or None,
        }


def policy_for(settings: Settings, options: RunOptions, visibility_timeout_s: float) -> Policy:
    c = settings.cleanup
    return Policy(
        grace_s=c.grace_s if options.grace_s is None else options.grace_s,
        max_orphan_ratio=options.max_orphan_ratio or c.max_orphan_ratio,
        max_orphans=c.max_orphans if options.max_orphans is None else options.max_orphans,
        stuck_action=c.stuck_action,
        visibility_timeout_s=visibility_timeout_s,
    )


class CleanupRun:
    def __init__(
        self,
        adapters: Adapters,
        scan: Scan,
        recorder: RunRecorder,
        *,
        progress: Progress | None = None,
        clock: Callable[[], float] = time.time,
        sleep: Callable[[float], None] = time.sleep,
    ):
        self.adapters = adapters
        self.settings = adapters.settings
        self.scan = scan
        self.recorder = recorder
        self.progress = progress
        self.clock = clock
        self.sleep = sleep

    def run(self, options: RunOptions) -> RunResult:
        policy = policy_for(self.settings, options, self.adapters.layout.visibility_timeout_s)
        if options.dry_run:
            report, plan = self._scan_and_plan(options, policy)
            return RunResult("", Outcome.DRY_RUN, plan, report)
        with self.recorder.run(
            options.mode, options.started_by, interrupted_by=options.interrupted_by
        ) as run:
            limit = options.should_stop
            # A run that lost its lease stops before its next step, as at a time limit.
            options = replace(options, should_stop=lambda: limit() or run.lost_lock())
            report, plan = self._scan_and_plan(options, policy)
            run.found, run.planned, run.held = report.counts(), plan.counts(), len(plan.held)
            run.refused = plan.refused
            self._act(run, options, plan, report)
        return RunResult(run.run_id, run.outcome, plan, report, dict(run.done))

    def _act(self, run: RecordedRun, options: RunOptions, plan: Plan, report: ScanReport) -> None:
        if options.should_stop():  # the limit came during the scan or grace wait: act on none
            run.end(Outcome.PARTIAL, f"stopped before acting: {_why_stopped(run)}")
            return
        if plan.refused:
            run.end(Outcome.REFUSED, plan.refused)
            raise PlanRefused(plan.refused)
        if options.confirm is not None and not options.confirm(plan, report):
            run.end(Outcome.DECLINED)
            return
        self._remove_tombstones(run, report, options.compact_whole)
        applier = Applier(
            self.adapters,
            run.run_id,
            run.record,
            done=run.done,
            should_stop=options.should_stop,
            progress=self.progress,
            clock=self.clock,
            workers_alive=report.workers if report.workers_inspected else None,
            checkpoint=run.checkpoint,
            compact_whole=options.compact_whole,
        )
        applier.apply(plan)
        if applier.stopped_early:
            run.end(Outcome.PARTIAL, f"stopped between steps: {_why_stopped(run)}")

    def _remove_tombstones(self, run: RecordedRun, report: ScanReport, whole: bool) -> None:
        """Ours, left by a quarantine that was cut short or by a bounded compaction (whichever
        run placed them): in bounded pieces from both ends unless `whole`."""
        quarantine = self.adapters.quarantine
        removed = 0
        for key, payloads in report.tombstones.items():
            for payload in payloads:
                if whole:
                    done = quarantine.compact_whole(key, payload)
                else:
                    done = quarantine.compact(key, payload, self.settings.cleanup.compact_depth)
                removed += done.removed
        if removed:
            run.done["tombstones_removed"] += removed  # what LREM said it removed, no more
        if report.tombstones_seen > removed:  # deeper than a piece reaches (or taken since)
            run.done["tombstones_left"] += report.tombstones_seen - removed
        if report.tombstones:
            log.info(
                "🧹 removed tombstones an earlier run left",
                lists=len(report.tombstones),
                count=removed,
                left=max(0, report.tombstones_seen - removed),
            )

    def _scan_and_plan(self, options: RunOptions, policy: Policy) -> tuple[ScanReport, Plan]:
        """The plan the run acts on. A dry run makes the very same plan, re-check included,
        whenever the real run would re-check at once (`grace_s` 0); with a grace period to wait
        it leaves those findings held `awaiting_grace`, and says so."""
        # A whole scan's summary is what `monitor` shows; a dry run leaves it as it was.
        report = self.scan(options.scan_results, None if options.dry_run else options.mode)
        findings = [f for f in report.findings if f.kind in options.kinds]
        if any(f.kind is FindingKind.DUPLICATE for f in findings):
            findings = self._with_copies_located(findings)
        recheck = Recheck()
        pending = needs_recheck(findings, policy)
        if pending and (not options.dry_run or policy.grace_s <= 0):
            recheck = self._recheck(report, pending, policy, options)
        plan = make_plan(
            findings,
            managed_messages=report.managed_messages,
            workers_alive=bool(report.workers) or not report.workers_inspected,
            now=self.clock(),
            policy=policy,
            recheck=recheck,
        )
        return report, plan

    def _with_copies_located(self, findings: list[Finding]) -> list[Finding]:
        """The scan names a duplicate's later copies only: read every copy of those ids again
        and act on all but the one a worker takes first."""
        dups = {f.task_id for f in findings if f.kind is FindingKind.DUPLICATE}
        copies = locate_copies(
            self.adapters.reader,
            self.settings.scan.queues,
            BindingTable(self.settings.bindings),
            dups,
        )
        extras = extra_copies(copies, list(self.settings.scan.queues))
        return [f for f in findings if f.kind is not FindingKind.DUPLICATE] + extras

    def _recheck(
        self, report: ScanReport, pending: list[Finding], policy: Policy, options: RunOptions
    ) -> Recheck:
        """The second look: a missing row must still be missing `grace_s` after the first."""
        wait_s = max(0.0, report.finished_at + policy.grace_s - self.clock())
        if options.on_wait is not None:
            options.on_wait(wait_s, len(pending))
        log.info(
            "waiting out the grace period before acting on missing rows",
            seconds=round(wait_s, 1),
            findings=len(pending),
        )
        deadline = self.clock() + wait_s
        while self.clock() < deadline:
            if options.should_stop():
                return Recheck()
            self.sleep(min(1.0, deadline - self.clock()))
        orphans = [f for f in pending if f.kind is FindingKind.ORPHAN]
        lost = [f for f in pending if f.kind is FindingKind.LOST]
        still: set[str] = set()
        if orphans:
            still.update(self._orphans_still_bad(orphans))
        if lost:
            ids = self.adapters.stuck_rows.still_stuck(
                {f.db_id for f in lost if f.db_id},
                self.settings.scan.stuck_after_h * 3600,
                self.clock(),
            )
            still.update(recheck_key(f) for f in lost if f.db_id in ids)
        return Recheck(still_bad=frozenset(still), checked_at=self.clock())

    def _orphans_still_bad(self, orphans: list[Finding]) -> set[str]:
        """The scan's own batch look-up and verdict, so a row is judged the same way twice;
        on PostgreSQL only the rows still not live come back from the anti-join."""
        verdicts = self.adapters.db.verdicts(
            {f.db_id for f in orphans if f.db_id and f.row_kind == "task"},
            {f.db_id for f in orphans if f.db_id and f.row_kind == "sub_task"},
        )
        still: set[str] = set()
        for f in orphans:
            if f.db_id and f.row_kind and verdicts.fine(f.row_kind, f.db_id):
                continue  # its row is live now: committed during the grace period
            again = judge_message(_as_message(f), verdicts.lookup)
            if again is not None and again.kind is FindingKind.ORPHAN:
                still.add(recheck_key(f))
        return still


def _why_stopped(run: RecordedRun) -> str:
    return "lost the run lock" if run.lost_lock() else "time limit near"


def _as_message(f: Finding) -> Message:
    return Message(f.task_id, f.task_name, f.location, db_id=f.db_id, row_kind=f.row_kind)
