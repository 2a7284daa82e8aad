"""Apply a plan: quarantine, then revoke, then delete results, then handle lost rows.

Each step records what it did in the history as soon as it is done, so a run that fails half way
leaves an exact account. Any Redis or database error propagates at once: nothing further runs.
The one overlap: the bookkeeping of a quarantine script call (REVOKED states, history rows)
runs while the next call moves messages, so an error there stops the run after that call.
"""

from __future__ import annotations

import contextvars
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import structlog

from maintenance.actions.requeue import requeue_rows
from maintenance.adapters.history import ActionRecord
from maintenance.adapters.quarantine import tombstone_for
from maintenance.adapters.results import SET_BATCH
from maintenance.core.models import Finding, FindingKind, Progress, Reason, Where
from maintenance.core.plan import Action, Plan
from maintenance.errors import UnavailableError
from maintenance.services import Adapters

log = structlog.get_logger(__name__)
Record = Callable[[list[ActionRecord]], object]
LOGGED_IDS_MAX = 20  # task ids named in each step's log line
HAZARDS = (FindingKind.DUPLICATE, FindingKind.EXPIRED_WAITING)  # removed, never revoked


def _record(action: str, findings: Sequence[Finding]) -> list[ActionRecord]:
    return [
        ActionRecord(
            action=action,
            kind="manual" if f.reason is Reason.OPERATOR else f.kind.value,
            reason=f.reason.value,
            task_id=f.task_id or "",
            task_name=f.task_name,
            db_id=f.db_id,
            location=f.location.describe(),
        )
        for f in findings
    ]


class Applier:
    def __init__(
        self,
        adapters: Adapters,
        run_id: str,
        record: Record,
        *,
        done: Counter[str] | None = None,
        should_stop: Callable[[], bool] = lambda: False,
        progress: Progress | None = None,
        clock: Callable[[], float] = time.time,
        workers_alive: tuple[str, ...] | None = None,
        checkpoint: Callable[[], None] = lambda: None,
        compact_whole: bool = False,
    ):
        self.adapters = adapters
        # The one whole-list LREM per list (`cleanup --compact`) instead of bounded pieces.
        self.compact_whole = compact_whole
        self.checkpoint = checkpoint  # writes the actions recorded so far (raises on failure)
        # The workers whose acknowledgement makes a revoke count; None: not known, ask them.
        self.workers_alive = workers_alive
        self.progress = progress or (lambda phase, done, total: None)
        self.settings = adapters.settings
        self.run_id = run_id
        self.record = record
        self.should_stop = should_stop
        self.clock = clock
        self.done: Counter[str] = Counter() if done is None else done  # counted as it happens
        self.quarantine = adapters.quarantine
        self.results = adapters.results
        self.stopped_early = False
        self._states_due: list[str] = []  # quarantined task ids whose REVOKED state is pending

    def apply(self, plan: Plan) -> Counter[str]:
        steps: list[tuple[Action, Callable[[list[Finding]], None]]] = [
            (Action.QUARANTINE, self._quarantine_queued),
            (Action.QUARANTINE_UNACKED, self._quarantine_unacked),
            (Action.REVOKE, self._revoke),
            (Action.DELETE_RESULT, self._delete_results),
            (Action.MARK_FAILED, self._mark_failed),
            (Action.REQUEUE, self._requeue),
        ]
        for action, step in steps:
            findings = plan.of(action)
            if not findings:
                continue
            if self.should_stop():
                self.stopped_early = True
                log.warning("stopping before the next step", step=action.value)
                break
            # What the steps so far did is in the history before the next one starts; a
            # database that failed meanwhile stops the run here (fail closed), not at its end.
            self.checkpoint()
            step(findings)
        return self.done

    def _meta(self, f: Finding, origin: str) -> dict[str, Any]:
        loc = f.location
        return {
            "origin": origin,
            "key": loc.key,
            "queue": loc.queue,
            "priority": loc.priority,
            "task_id": f.task_id,
            "task_name": f.task_name,
            "db_id": f.db_id,
            "reason": f.reason.value,
            "run_id": self.run_id,
            "quarantined_at": self.clock(),
        }

    def _quarantine_queued(self, findings: list[Finding]) -> None:
        by_key: dict[str, list[Finding]] = defaultdict(list)
        untagged = [f for f in findings if not f.location.delivery_tag]
        for f in findings:
            if f.location.delivery_tag:  # the tag is what proves "this very message"
                by_key[f.location.key].append(f)
        if untagged:
            self._revoke_or_leave(untagged)
        for key, group in by_key.items():
            name = Counter(f.task_name for f in group).most_common(1)[0][0]
            tombstone = tombstone_for(name, group[0].location.queue, self.run_id)
            placed, seen = 0, 0
            first_ids: list[str] = []
            books = _Overlapped(self._book_quarantined, final=self._write_revoked_states)
            try:
                for taken, missing in self.quarantine.take_from_list(
                    key, group, tombstone, lambda f: self._meta(f, "queue")
                ):
                    placed += len(taken)
                    seen += len(taken) + len(missing)
                    first_ids += [f.task_id for f in taken[: LOGGED_IDS_MAX - len(first_ids)]]
                    books.submit(taken, missing)  # raises the previous batch's error, if any
                    self.progress(f"quarantine {key}", seen, len(group))
                books.finish()
            finally:
                books.finish(best_effort=True)  # after a failure: record what was taken
                removed = self._compact(key, tombstone, placed) if placed else 0
                # One line per list, not per script call: the history holds every action.
                log.info(
                    "🧹 quarantined orphans",
                    key=key,
                    count=placed,
                    tombstones_removed=removed,
                    tombstones_left=placed - removed,
                    task_ids=first_ids,
                )

    def _compact(self, key: str, tombstone: bytes, placed: int) -> int:
        """Remove this run's tombstones of one list (even after a failure): in bounded pieces
        from both ends, or all at once when the operator opted in. Those not removed stay
        queued for workers to discard (or a worker already took them): `tombstones_left`,
        which the next run's compaction takes as they drift toward the tail."""
        if self.compact_whole:
            removed = self.quarantine.compact_whole(key, tombstone).removed
        else:
            depth = self.settings.cleanup.compact_depth
            removed = self.quarantine.compact(key, tombstone, depth).removed
        # The tombstones removed are part of the quarantine (as they always were); only those
        # still queued are worth a count of their own.
        if placed > removed:
            self.done["tombstones_left"] += placed - removed
        return removed

    def _book_quarantined(self, taken: list[Finding], missing: list[Finding]) -> None:
        """Taken messages are in no worker's hands: mark them REVOKED in the result backend.

        A broadcast revoke would stay in every live worker's memory and make a later `restore`
        useless, so only messages that slipped away (a worker may have just taken them) get one.
        REVOKED states are written SET_BATCH at a time: a write per script call queued behind
        the next script call in Redis and held the quarantine up (3 s at 100,000 orphans).
        """
        if taken:
            # A duplicate's other copy still runs: its task is not REVOKED.
            self._states_due += [f.task_id for f in taken if f.kind is not FindingKind.DUPLICATE]
            if len(self._states_due) >= SET_BATCH:
                self._write_revoked_states()
            self.done["quarantined"] += len(taken)
            self.record(_record("quarantined", taken))
        if missing:
            self._revoke_or_leave(missing)

    def _revoke_or_leave(self, findings: list[Finding]) -> None:
        """A message not found where it was: an orphan is revoked (a worker may hold it). A
        duplicate or expired copy is left: revoking its task id would also stop the copy that
        must run (a duplicate's), or stop nothing (an expired one is discarded by its worker)."""
        orphans = [f for f in findings if f.kind not in HAZARDS]
        left = [f for f in findings if f.kind in HAZARDS]
        if orphans:
            self._revoke(orphans)
        if left:
            self.done["not_removed"] += len(left)
            self.record(_record("not_removed", left))

    def _write_revoked_states(self) -> None:
        task_ids, self._states_due = self._states_due, []
        if task_ids:
            self.results.mark_revoked(task_ids, "orphan quarantined")

    def _after_quarantine(self, taken: list[Finding], missing: list[Finding]) -> None:
        self._book_quarantined(taken, missing)
        self._write_revoked_states()
        if taken:
            log.info(
                "🧹 quarantined orphans",
                count=len(taken),
                task_ids=[f.task_id for f in taken[:LOGGED_IDS_MAX]],
            )

    def _quarantine_unacked(self, findings: list[Finding]) -> None:
        taken, missing = self.quarantine.take_unacked(findings, lambda f: self._meta(f, "unacked"))
        self._after_quarantine(taken, missing)

    def _revoke(self, findings: list[Finding]) -> None:
        """A revoke counts when a live worker acknowledged it: those workers will not run the
        task. One nobody acknowledged stopped nothing: it is `not_removed`, for the next run."""
        ids = sorted({f.task_id for f in findings if f.task_id})
        if self.workers_alive is None:
            self.workers_alive = tuple(self.adapters.workers.ping())
        heard = self.adapters.workers.revoke(
            ids, self.settings.cleanup.revoke_batch_size, expect=self.workers_alive
        )
        revoked = sorted(heard)
        if revoked:
            self.results.mark_revoked(revoked, "orphan revoked", only_if_absent=True)
            self._keep_from_restart([f for f in findings if f.task_id in heard])
            self.done["revoked"] += len(revoked)
            self.record(_record("revoked", [f for f in findings if f.task_id in heard]))
            log.info("🚫 revoked orphans", count=len(revoked), task_ids=revoked[:LOGGED_IDS_MAX])
        unheard = [f for f in findings if f.task_id not in heard]
        if unheard:
            self.done["not_removed"] += len({f.task_id for f in unheard})
            self.record(_record("not_removed", unheard))
            log.warning(
                "⚠️ orphans not removed: no live worker acknowledged their revoke; the next run "
                "looks again",
                count=len(unheard),
                task_ids=[f.task_id for f in unheard[:LOGGED_IDS_MAX]],
            )

    def _keep_from_restart(self, revoked: list[Finding]) -> None:
        """An unacked copy its live worker holds (an ETA task) is revoked in that worker's
        memory only: were the worker to stop before the ETA, kombu would put the message back
        for a worker that never heard the revoke. Once its revoke was acknowledged,
        the entry goes to the quarantine too; the holder's later ack of it is a no-op."""
        # Only a task an operator named: an orphan put back by such a restart is found again
        # by the next run (and skipped by the guards), a live task would simply run.
        held = [
            f for f in revoked if f.location.where is Where.UNACKED and f.reason is Reason.OPERATOR
        ]
        if held:
            self.quarantine.take_unacked(
                held, lambda f: {**self._meta(f, "unacked"), "revoked_by_broadcast": True}
            )

    def _delete_results(self, findings: list[Finding]) -> None:
        for start in range(0, len(findings), 10_000):
            chunk = findings[start : start + 10_000]
            self.done["results_deleted"] += self.results.unlink(f.location.key for f in chunk)
            self.record(_record("result_deleted", chunk))
        log.info("🧹 stale results deleted", count=self.done["results_deleted"])

    def _mark_failed(self, findings: list[Finding]) -> None:
        cleanup, scan = self.settings.cleanup, self.settings.scan
        ids = [f.db_id for f in findings if f.db_id]
        marked = self.adapters.stuck_rows.mark_failed(
            ids, cleanup.failed_status, scan.stuck_after_h * 3600, self.clock()
        )
        self.done["rows_marked"] += marked
        self.record(_record("marked_failed", findings))
        log.info("🧹 lost rows marked failed", count=marked, status=cleanup.failed_status)

    def _requeue(self, findings: list[Finding]) -> None:
        """The seed's task migration: send the bound task again with the row's id."""
        sent = requeue_rows(self.adapters, findings, self.clock())
        self.done["requeued"] += len(sent)
        self.record(_record("requeued", [f for f in findings if f.db_id in sent]))


class _Overlapped:
    """Runs the bookkeeping of one script call (history rows, REVOKED states) on a helper
    thread while the next script call moves messages: Python and PostgreSQL do the paperwork
    while Redis works, instead of each waiting for the other.

    At most one batch is in flight, and its error is raised before the next script call is
    made: a failure lets at most the call already under way finish, and that call's batch is
    still recorded (best effort), so the history still says what was taken. `final` runs once
    at the end, after the last batch, whatever happened (it writes what was deferred).
    """

    def __init__(
        self,
        fn: Callable[[list[Finding], list[Finding]], None],
        final: Callable[[], None] | None = None,
    ):
        self.fn = fn
        self.final = final
        self.pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="bookkeeping")
        self.pending: Future[None] | None = None

    def submit(self, taken: list[Finding], missing: list[Finding]) -> None:
        context = contextvars.copy_context()  # the run id bound for log lines, in the thread too
        previous, self.pending = (
            self.pending,
            self.pool.submit(context.run, self.fn, taken, missing),
        )
        if previous is not None:
            previous.result()

    def finish(self, best_effort: bool = False) -> None:
        pending, self.pending = self.pending, None
        final, self.final = self.final, None
        errors: list[UnavailableError] = []
        for step in (pending.result if pending is not None else None, final):
            try:
                if step is not None:
                    step()
            except UnavailableError as exc:
                errors.append(exc)
        self.pool.shutdown(wait=True)
        if errors and not best_effort:
            raise errors[0]
        for error in errors:
            log.error(
                "could not finish the bookkeeping of the last quarantined batches", error=str(error)
            )
