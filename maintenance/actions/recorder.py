"""The run recorder: every operation that acts runs under the lock, as one history row.

Shared by cleanup, the expiry run and the operator's revoke and restore, so each of them gets
the same guarantees: one run at a time, a history row from start to end, a failure recorded as
`failed` (an interruption as `partial`) instead of a row left `running`, and the alert sent after
the record, never before.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import structlog

from maintenance.actions.roll_forward import RollForward
from maintenance.adapters.history import ActionBuffer, ActionRecord, HistoryStore
from maintenance.adapters.run_lock import Lease, RunLock
from maintenance.alerts import maybe_alert
from maintenance.config import Settings
from maintenance.core.models import Outcome, RunMode
from maintenance.errors import UnavailableError

log = structlog.get_logger(__name__)


@dataclass
class RecordedRun:
    """A run in progress: what it did so far, and how it ends (set by the operation)."""

    run_id: str
    mode: RunMode
    actions: ActionBuffer
    lease: Lease
    done: Counter[str] = field(default_factory=Counter)
    found: dict[str, int] = field(default_factory=dict)
    planned: dict[str, int] = field(default_factory=dict)
    held: int = 0
    refused: str = ""
    outcome: Outcome = Outcome.OK
    error: str | None = None

    def record(self, records: list[ActionRecord]) -> None:
        self.actions.add(records)

    def end(self, outcome: Outcome, error: str | None = None) -> None:
        self.outcome, self.error = outcome, error

    def checkpoint(self) -> None:
        """Between two steps: what was done is written, and the database still answers."""
        self.actions.flush()
        self.actions.store.check()

    def lost_lock(self) -> bool:
        """The lease could not be renewed: another run may start, so this one must stop."""
        return self.lease.lost()


class RunRecorder:
    def __init__(
        self, settings: Settings, lock: RunLock, history: HistoryStore, roll_forward: RollForward
    ):
        self.settings = settings
        self.lock = lock
        self.history = history
        self.roll_forward = roll_forward

    @contextmanager
    def run(
        self, mode: RunMode, started_by: str, interrupted_by: tuple[type[BaseException], ...] = ()
    ) -> Iterator[RecordedRun]:
        """Lock, history row, then the body; the row is finished whatever the body does.

        `LockHeld` propagates before anything is recorded. A Redis or database error is
        recorded as `failed` and one of `interrupted_by` (Celery's soft time limit) as
        `partial`, both best effort since the history may be what failed, then re-raised.
        """
        with self.lock.held(f"{mode} by {started_by}") as lease:
            run_id = self.history.start_run(started_by, mode)
            run = RecordedRun(run_id, mode, ActionBuffer(self.history, run_id), lease)
            with structlog.contextvars.bound_contextvars(run_id=run_id):
                try:
                    lease.name_run(run_id)
                    # First what a dead run left: no other run is alive while we hold the lock.
                    if finished := self.roll_forward.finish_dead_runs(run_id):
                        run.done["interrupted_runs_finished"] += finished
                    yield run
                    run.actions.flush()
                except UnavailableError as exc:
                    self._flush_best_effort(run)
                    self._finish(run, Outcome.FAILED, str(exc), best_effort=True)
                    log.error(
                        "maintenance run failed: nothing further was changed",
                        error=str(exc),
                        done=dict(run.done),
                    )
                    raise
                except interrupted_by as exc:
                    self._flush_best_effort(run)
                    self._finish(
                        run, Outcome.PARTIAL, f"interrupted: {type(exc).__name__}", best_effort=True
                    )
                    raise
                except BaseException as exc:
                    self._flush_best_effort(run)
                    if run.outcome is Outcome.OK:  # not ended by the operation: a failure
                        run.end(Outcome.FAILED, f"{type(exc).__name__}: {exc}")
                    self._finish(run, run.outcome, run.error, best_effort=True)
                    raise
                self._finish(run, run.outcome, run.error)

    @staticmethod
    def _flush_best_effort(run: RecordedRun) -> None:
        try:
            run.actions.flush()
        except UnavailableError as exc:
            log.error("could not record the last actions in the history", error=str(exc))

    def _finish(
        self, run: RecordedRun, outcome: Outcome, error: str | None, best_effort: bool = False
    ) -> None:
        run.end(outcome, error)
        done = dict(run.done)
        log.info(
            "🧹 maintenance run finished", outcome=outcome, **done, found=run.found, held=run.held
        )
        counts = {"found": run.found, "planned": run.planned, "done": done}
        try:
            self.history.finish_run(run.run_id, outcome, counts, error)
        except UnavailableError as exc:
            if not best_effort:
                raise
            log.error("could not record the run's end in the history", error=str(exc))
        finally:
            # After the record, never before: an alert must not delay or fail the run itself.
            maybe_alert(
                self.settings,
                {
                    "counts": run.found,
                    "run_id": run.run_id,
                    "done": done,
                    "error": error,
                    "refused": run.refused or None,
                },
                outcome,
            )
