"""Operator actions on named tasks: revoke them, restore them from the quarantine."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import structlog

from maintenance.actions.apply import Applier
from maintenance.actions.recorder import RecordedRun, RunRecorder
from maintenance.actions.run import RunOptions, policy_for
from maintenance.adapters.history import ActionRecord
from maintenance.core.inventory import operator_finding
from maintenance.core.models import Finding, FindingKind, Location, Message, RunMode
from maintenance.core.plan import Action, Plan, Planned, orphan_action
from maintenance.core.report import ScanReport
from maintenance.errors import PlanRefused
from maintenance.services import Adapters

log = structlog.get_logger(__name__)
ScanOne = Callable[[str], ScanReport]  # a `--task-id` scan of one id, queues and workers only


@dataclass
class OperatorResult:
    run_id: str
    done: dict[str, int] = field(default_factory=dict)
    details: list[str] = field(default_factory=list)


class OperatorActions:
    def __init__(
        self,
        adapters: Adapters,
        scan_one: ScanOne,
        recorder: RunRecorder,
        *,
        clock: Callable[[], float] = time.time,
    ):
        self.adapters = adapters
        self.scan_one = scan_one
        self.recorder = recorder
        self.clock = clock

    def revoke(self, task_ids: Sequence[str], *, force: bool, started_by: str) -> OperatorResult:
        """Take named tasks out of play: every queued copy, and every unacked copy no live
        worker holds, into the quarantine (state REVOKED, restorable with `restore`); a copy a
        live worker holds is revoked by a broadcast, which counts once a worker acknowledged it.
        A task whose row is still to run needs `force`. An id seen nowhere is reported as
        `not_found`, never counted as revoked.
        """
        policy = policy_for(
            self.adapters.settings, RunOptions(), self.adapters.layout.visibility_timeout_s
        )
        planned: list[Planned] = []
        details: list[str] = []
        unseen: list[str] = []
        workers: set[str] = set()
        inspected = True
        for task_id in task_ids:
            report = self.scan_one(task_id)
            workers.update(report.workers)
            inspected = inspected and report.workers_inspected
            _refuse_live_unless_forced(task_id, report, force)
            alive = bool(report.workers) or not report.workers_inspected
            copies = _copies(report)
            if not copies:
                unseen.append(task_id)
            planned += [Planned(orphan_action(f, alive, self.clock(), policy), f) for f in copies]
            details.extend(report.notes)
        live = tuple(sorted(workers)) if inspected else None
        with self.recorder.run(RunMode.REVOKE, started_by) as run:
            applier = self._apply(run, planned, live)
            if unseen:
                # A worker the inspection missed may still hold it: tell them, count nothing.
                heard = self.adapters.workers.revoke(unseen, expect=applier.workers_alive or ())
                run.done["not_found"] += len(unseen)
                run.record([ActionRecord("not_found", "manual", "operator", t) for t in unseen])
                details += [
                    f"not found anywhere: {t} (revoke broadcast "
                    + ("acknowledged by live workers)" if t in heard else "heard by no worker)")
                    for t in unseen
                ]
        log.info("🚫 revoked by operator", task_ids=list(task_ids), done=dict(run.done))
        return OperatorResult(run.run_id, dict(run.done), details)

    def purge(self, selected: Sequence[Finding], *, started_by: str) -> OperatorResult:
        """Take the selected messages into the quarantine (REVOKED, restorable): every queued
        one, and every unacked one no worker can still hold (taken longer ago than the
        visibility timeout, or no worker alive). One a live worker may hold is left, counted
        `held_by_worker`: a purge takes only what waits. A queued one a worker took in the
        meantime is revoked by a broadcast, as a revoke's is."""
        policy = policy_for(
            self.adapters.settings, RunOptions(), self.adapters.layout.visibility_timeout_s
        )
        alive = tuple(sorted(self.adapters.workers.ping()))
        now = self.clock()
        planned: list[Planned] = []
        held: list[Finding] = []
        for finding in selected:
            action = orphan_action(finding, bool(alive), now, policy)
            if action is Action.REVOKE:
                held.append(finding)
            else:
                planned.append(Planned(action, finding))
        with self.recorder.run(RunMode.PURGE, started_by) as run:
            self._apply(run, planned, alive)
            if held:
                run.done["held_by_worker"] += len(held)
                run.record(
                    [
                        ActionRecord("held_by_worker", "manual", "operator", f.task_id, f.task_name)
                        for f in held
                    ]
                )
        log.info("🧹 purged by operator", selected=len(selected), done=dict(run.done))
        details = [f"held by a live worker, left: {f.task_id}" for f in held[:20]]
        return OperatorResult(run.run_id, dict(run.done), details)

    def _apply(
        self, run: RecordedRun, planned: list[Planned], workers_alive: tuple[str, ...] | None
    ) -> Applier:
        """Act on an operator's plan within its recorded run; the applier says what it did."""
        applier = Applier(
            self.adapters,
            run.run_id,
            run.record,
            done=run.done,
            clock=self.clock,
            workers_alive=workers_alive,
            checkpoint=run.checkpoint,
        )
        applier.apply(Plan(actions=tuple(planned)))
        return applier

    def restore(self, task_ids: Sequence[str] | None, *, started_by: str) -> OperatorResult:
        """Put quarantined messages back, intact, and clear the REVOKED state we wrote for them."""
        quarantine, results = self.adapters.quarantine, self.adapters.results
        restored: list[ActionRecord] = []
        details: list[str] = []
        with self.recorder.run(RunMode.RESTORE, started_by) as run:
            for entry in list(quarantine.entries(task_ids)):
                key = quarantine.put_back(entry)
                results.forget_revoked(entry.task_id)
                details.append(f"restored {entry.task_id} to {key!r}")
                if entry.meta.get("revoked_by_broadcast"):
                    details.append(
                        f"warning: {entry.task_id} was revoked by a broadcast: workers that heard "
                        "it skip it until they restart (Celery's worker_revoke_expires)"
                    )
                record = ActionRecord(
                    "restored",
                    str(entry.meta.get("origin", "queue")),
                    str(entry.meta.get("reason", "")),
                    entry.task_id,
                    str(entry.meta.get("task_name") or ""),
                    entry.meta.get("db_id"),
                    key,
                )
                restored.append(record)
                run.record([record])
                run.done["restored"] += 1
                log.info("restored from quarantine", task_id=entry.task_id, key=key)
        missing = sorted(set(task_ids or ()) - {r.task_id for r in restored})
        details.extend(f"not in quarantine: {t}" for t in missing)
        return OperatorResult(run.run_id, {"restored": len(restored)}, details)


def _refuse_live_unless_forced(task_id: str, report: ScanReport, force: bool) -> None:
    orphans = report.of_kind(FindingKind.ORPHAN)
    live = report.managed_messages - len(orphans) - len(report.of_kind(FindingKind.UNREADABLE))
    if live > 0 and not force:
        raise PlanRefused(
            f"task {task_id} has a message whose row is still to run; revoke it anyway with --force"
        )


def _copies(report: ScanReport) -> list[Finding]:
    """Every copy the scan of one id saw, once each: its finding where it has one (an orphan,
    an unreadable message), else the operator's own (a live or unmanaged task)."""
    judged = {_place(f.location): f for f in report.findings}
    copies: dict[tuple[str, str, str, str], Finding] = {}
    for msg in report.sightings:
        place = _place(msg.location)
        copies.setdefault(place, judged.get(place) or _by_operator(msg))
    return list(copies.values())


def _place(loc: Location) -> tuple[str, str, str, str]:
    return (loc.where, loc.key, loc.delivery_tag, loc.worker)


def _by_operator(msg: Message) -> Finding:
    return operator_finding(msg)
