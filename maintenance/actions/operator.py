"""Operator actions on named tasks: revoke them, restore them from the quarantine."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import structlog

from maintenance.actions.apply import Applier
from maintenance.actions.recorder import RunRecorder
from maintenance.actions.run import RunOptions, policy_for
from maintenance.adapters.history import ActionRecord
from maintenance.core.models import FindingKind, RunMode
from maintenance.core.plan import Plan, Planned, orphan_action
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
        """Revoke named tasks: refuse one whose row is still to run, unless `force`.

        Queued or unacked copies are quarantined (so `restore` can undo it); every id is also
        broadcast to live workers, which is what the operator asked for.
        """
        policy = policy_for(
            self.adapters.settings, RunOptions(), self.adapters.layout.visibility_timeout_s
        )
        planned: list[Planned] = []
        details: list[str] = []
        for task_id in task_ids:
            report = self.scan_one(task_id)
            orphans = report.of_kind(FindingKind.ORPHAN)
            live = (
                report.managed_messages - len(orphans) - len(report.of_kind(FindingKind.UNREADABLE))
            )
            if live > 0 and not force:
                raise PlanRefused(
                    f"task {task_id} has a message whose row is still to run; "
                    "revoke it anyway with --force"
                )
            for f in report.findings:
                if f.kind in (FindingKind.ORPHAN, FindingKind.UNREADABLE) or force:
                    planned.append(
                        Planned(orphan_action(f, bool(report.workers), self.clock(), policy), f)
                    )
            details.extend(report.notes)
        with self.recorder.run(RunMode.REVOKE, started_by) as run:
            applier = Applier(
                self.adapters, run.run_id, run.record, done=run.done, clock=self.clock
            )
            applier.apply(Plan(actions=tuple(planned)))
            found = {p.finding.task_id for p in planned}
            extra = [t for t in task_ids if t not in found]
            if extra:  # not found anywhere we can see: a worker may hold it, so broadcast anyway
                self.adapters.workers.revoke(extra)
                self.adapters.results.mark_revoked(extra, "revoked by operator")
                run.record([ActionRecord("revoked", "manual", "operator", t) for t in extra])
                run.done["revoked"] += len(extra)
        for task_id in task_ids:
            log.info("🚫 revoked by operator", task_id=task_id)
        return OperatorResult(run.run_id, dict(run.done), details)

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
