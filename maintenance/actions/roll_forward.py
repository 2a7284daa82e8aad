"""Roll forward: each run that acts first finishes what an earlier run left half done.

A run killed (kill -9, OOM, a container stopped) or cut off from the database mid-way leaves
its history row `running`, and may have quarantined messages whose `REVOKED` state and history
action were never written (that bookkeeping trails the quarantine by one script call, and the
action rows are written in batches). A run that failed on a Redis time-out may have had its
last script call completed by Redis after it gave up: it said `failed`, but the same applies.
The quarantine entries name the run that took them, so under the run lock (no other run is
alive) the next run writes what is missing, marks a dead run `interrupted` with what it had
done, and notes `finished_by` in the counts of each run it finished. Idempotent: a second pass
finds nothing. Tombstones left in a queue are the cleanup's to remove: its scan sees them.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

import structlog

from maintenance.adapters.history import ActionRecord, HistoryStore
from maintenance.adapters.quarantine import Quarantine
from maintenance.adapters.results import ResultWriter
from maintenance.core.models import Outcome

log = structlog.get_logger(__name__)
Taken = tuple[str, dict[str, Any]]  # a quarantined message's task id and its entry's meta


class RollForward:
    def __init__(self, history: HistoryStore, quarantine: Quarantine, results: ResultWriter):
        self.history = history
        self.quarantine = quarantine
        self.results = results

    def finish_dead_runs(self, current_run_id: str) -> int:
        """Finish every earlier run that may have left work half done; returns how many."""
        dead = self.history.unfinished_runs(but=current_run_id)
        if not dead:
            return 0
        # What each took, without the messages themselves (a big run took a great many)
        taken: dict[str, list[Taken]] = defaultdict(list)
        for entry in self.quarantine.entries_of_runs({run["id"] for run in dead}):
            taken[str(entry.meta["run_id"])].append((entry.task_id, entry.meta))
        for run in dead:
            self._finish(run, taken.get(run["id"], []), current_run_id)
        return len(dead)

    def _finish(self, run: dict[str, Any], entries: list[Taken], by: str) -> None:
        run_id = run["id"]
        # A revoked copy an operator named is in the quarantine too, recorded as revoked.
        recorded = self.history.recorded_task_ids(run_id, "quarantined", "revoked")
        missing = [e for e in entries if e[0] not in recorded]
        if entries:  # the one write the quarantine could not make atomically with the move
            self.results.mark_revoked(
                [task_id for task_id, _ in entries], "orphan quarantined", only_if_absent=True
            )
        self.history.record_actions(run_id, [_quarantined(e) for e in missing])
        done = self.history.action_counts(run_id)
        recovered = {"actions": len(missing)}
        if run["outcome"] == Outcome.RUNNING:  # it died: its end was never recorded
            self.history.finish_run(
                run_id,
                Outcome.INTERRUPTED,
                {"done": done, "recovered": recovered, "finished_by": by},
                f"interrupted: found unfinished by run {by}",
            )
        else:  # it failed or stopped, and said so, but a step in flight may have completed
            counts = {**run["counts"], "recovered": recovered, "finished_by": by}
            self.history.amend_counts(run_id, counts)
        log.warning(
            "🧹 finished what an interrupted run left",
            interrupted_run=run_id,
            outcome=run["outcome"],
            quarantined=len(entries),
            actions_written=len(missing),
        )


def _quarantined(entry: Taken) -> ActionRecord:
    task_id, meta = entry
    return ActionRecord(
        action="quarantined",
        kind="manual" if meta.get("reason") == "operator" else "orphan",
        reason=str(meta.get("reason") or ""),
        task_id=task_id,
        task_name=str(meta.get("task_name") or ""),
        db_id=None if meta.get("db_id") is None else str(meta["db_id"]),
        location=f"queue {meta.get('queue')}" if meta.get("origin") == "queue" else "unacked",
    )
