"""Operator actions on named tasks: revoke them, restore them from the quarantine."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import structlog

from maintenance.adapters.history import ActionRecord
from maintenance.adapters.quarantine import Quarantine
from maintenance.adapters.results import ResultWriter
from maintenance.apply import Applier
from maintenance.cleanup import CleanupService, RunOptions
from maintenance.core.models import FindingKind
from maintenance.core.plan import Plan, Planned, orphan_action
from maintenance.errors import PlanRefused
from maintenance.reconcile import Reconciler

log = structlog.get_logger(__name__)


@dataclass
class ManualResult:
    run_id: str
    done: dict[str, int] = field(default_factory=dict)
    details: list[str] = field(default_factory=list)


def revoke_tasks(service: CleanupService, task_ids: Sequence[str], force: bool = False
                 ) -> ManualResult:
    """Revoke named tasks: refuse one whose row is still to run, unless `force`.

    Queued or unacked copies are quarantined (so `restore` can undo it); every id is also
    broadcast to live workers, which is what the operator asked for.
    """
    services = service.services
    reconciler = Reconciler(services.settings, services.reader, services.db, services.workers)
    planned: list[Planned] = []
    details: list[str] = []
    policy = service.policy(RunOptions())
    for task_id in task_ids:
        report = reconciler.scan(only=task_id, results=False)
        orphans = report.of_kind(FindingKind.ORPHAN)
        live = report.managed_messages - len(orphans) - len(report.of_kind(
            FindingKind.UNREADABLE))
        if live > 0 and not force:
            raise PlanRefused(f"task {task_id} has a message whose row is still to run; "
                              "revoke it anyway with --force")
        for f in report.findings:
            if f.kind in (FindingKind.ORPHAN, FindingKind.UNREADABLE) or force:
                planned.append(Planned(orphan_action(f, bool(report.workers), 0.0, policy,
                                                     None), f))
        details.extend(report.notes)
    with service.run_lock():
        run_id = service.history.start_run("cli", "revoke")
        applier = Applier(services, run_id,
                          lambda records: service.history.record_actions(run_id, records))
        done = applier.apply(Plan(actions=tuple(planned)))
        found = {p.finding.task_id for p in planned}
        extra = [t for t in task_ids if t not in found]
        if extra:  # not found anywhere we can see: a worker may hold it, so broadcast anyway
            services.workers.revoke(extra)
            ResultWriter(services.app.backend, services.results,
                         services.result_layout).mark_revoked(extra, "revoked by operator")
            service.history.record_actions(run_id, [
                ActionRecord("revoked", "manual", "operator", t) for t in extra])
            done["revoked"] += len(extra)
        service.history.finish_run(run_id, "ok", {"done": dict(done)})
    for task_id in task_ids:
        log.info("🚫 revoked by operator", task_id=task_id)
    return ManualResult(run_id, dict(done), details)


def restore_tasks(service: CleanupService, task_ids: Sequence[str] | None) -> ManualResult:
    """Put quarantined messages back, intact, and clear the REVOKED state we wrote for them."""
    services = service.services
    quarantine = Quarantine(services.broker, services.layout, services.own_keys)
    results = ResultWriter(services.app.backend, services.results, services.result_layout)
    restored: list[ActionRecord] = []
    details: list[str] = []
    with service.run_lock():
        run_id = service.history.start_run("cli", "restore")
        for entry in list(quarantine.entries(task_ids)):
            key = quarantine.put_back(entry)
            results.forget_revoked(entry.task_id)
            details.append(f"restored {entry.task_id} to {key!r}")
            restored.append(ActionRecord("restored", str(entry.meta.get("origin", "queue")),
                                         str(entry.meta.get("reason", "")), entry.task_id,
                                         str(entry.meta.get("task_name") or ""),
                                         entry.meta.get("db_id"), key))
            log.info("restored from quarantine", task_id=entry.task_id, key=key)
        service.history.record_actions(run_id, restored)
        service.history.finish_run(run_id, "ok", {"done": {"restored": len(restored)}})
    missing = sorted(set(task_ids or ()) - {r.task_id for r in restored})
    details.extend(f"not in quarantine: {t}" for t in missing)
    return ManualResult(run_id, {"restored": len(restored)}, details)

