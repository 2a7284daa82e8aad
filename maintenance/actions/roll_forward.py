"""Roll forward: each run that acts first finishes what a run that died left half done.

A run killed (kill -9, OOM, a container stopped) or cut off from the database mid-way leaves
its history row `running`, and may have quarantined messages whose `REVOKED` state and history
action were never written (that bookkeeping trails the quarantine by one script call, and the
action rows are written in batches). The quarantine entries themselves name the run that took
them, so under the run lock (no other run is alive) the next run can write what is missing and
mark the dead run `interrupted` with what it had done. Idempotent: a second pass finds nothing.
Tombstones a dead run left in a queue are the cleanup's to remove: its scan sees them.
"""

from __future__ import annotations

from collections import defaultdict

import structlog

from maintenance.adapters.history import ActionRecord, HistoryStore
from maintenance.adapters.quarantine import Quarantine, QuarantineEntry
from maintenance.adapters.results import ResultWriter
from maintenance.core.models import Outcome

log = structlog.get_logger(__name__)


class RollForward:
    def __init__(self, history: HistoryStore, quarantine: Quarantine, results: ResultWriter):
        self.history = history
        self.quarantine = quarantine
        self.results = results

    def finish_dead_runs(self, current_run_id: str) -> int:
        """Finish every run other than the current one still marked running; returns how many."""
        dead = self.history.unfinished_runs(but=current_run_id)
        if not dead:
            return 0
        taken: dict[str, list[QuarantineEntry]] = defaultdict(list)
        for entry in self.quarantine.entries_of_runs({run["id"] for run in dead}):
            taken[str(entry.meta["run_id"])].append(entry)
        for run in dead:
            self._finish(run["id"], taken.get(run["id"], []), current_run_id)
        return len(dead)

    def _finish(self, run_id: str, entries: list[QuarantineEntry], by: str) -> None:
        recorded = self.history.recorded_task_ids(run_id, "quarantined")
        missing = [e for e in entries if e.task_id not in recorded]
        if entries:  # the one write the quarantine could not make atomically with the move
            self.results.mark_revoked(
                [e.task_id for e in entries], "orphan quarantined", only_if_absent=True
            )
        self.history.record_actions(run_id, [_quarantined(e) for e in missing])
        done = self.history.action_counts(run_id)
        self.history.finish_run(
            run_id,
            Outcome.INTERRUPTED,
            {"done": done},
            f"interrupted: found unfinished by run {by}",
        )
        log.warning(
            "🧹 finished what an interrupted run left",
            interrupted_run=run_id,
            quarantined=len(entries),
            actions_written=len(missing),
            done=done,
        )


def _quarantined(entry: QuarantineEntry) -> ActionRecord:
    meta = entry.meta
    return ActionRecord(
        action="quarantined",
        kind="manual" if meta.get("reason") == "operator" else "orphan",
        reason=str(meta.get("reason") or ""),
        task_id=entry.task_id,
        task_name=str(meta.get("task_name") or ""),
        db_id=None if meta.get("db_id") is None else str(meta["db_id"]),
        location=f"queue {meta.get('queue')}" if meta.get("origin") == "queue" else "unacked",
    )
