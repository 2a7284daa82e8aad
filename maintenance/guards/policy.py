"""The guards' decisions as pure functions: run, skip or re-check a task, given what the rows say.

No Celery, database or clock here: every rule is tested with a table (tests/guards/test_policy.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from maintenance.config import GuardSettings
from maintenance.core.models import Reason, RowKind, Rows

DB_RETRY_BASE_DELAY_S = 1.0  # first wait while the database is unreachable; doubles per attempt
ATTEMPTS_HEADER = "maintenance_guard"  # message header carrying the guard's own re-check counts


class Action(StrEnum):
    RUN = "run"
    SKIP = "skip"  # store REVOKED and end with Ignore
    RECHECK = "recheck"  # re-send the message with a countdown and look again
    GIVE_UP = "give_up"  # the database stayed unreachable too long: fail, never skip


@dataclass(frozen=True, slots=True)
class Verdict:
    action: Action
    reason: Reason | None = None
    delay_s: float = 0.0


@dataclass(frozen=True, slots=True)
class Attempts:
    """How often the guard already re-checked this message: kept apart from `request.retries`.

    Celery's own counter is the task's retry budget (`max_retries`, `autoretry_for`); spending it
    on a row that was not committed yet would make the body's first real retry fail at once.
    """

    missing: int = 0  # re-checks because the row (or its parent) was missing
    db: int = 0  # re-checks because the database was unreachable

    def as_header(self) -> dict[str, int]:
        return {"missing": self.missing, "db": self.db}

    @classmethod
    def from_header(cls, value: Any) -> Attempts:
        """Tolerates a missing or foreign header: a bad counter must not block the task."""
        if not isinstance(value, dict):
            return cls()
        return cls(missing=_count(value.get("missing")), db=_count(value.get("db")))


def _count(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else 0


def row_problem(kind: RowKind, rows: Rows) -> Reason | None:
    """Why the task must not run, or None. A sub-task runs only while its parent runs too."""
    if rows.row is None:
        return Reason.ROW_MISSING
    if not rows.row.active:
        return Reason.ROW_FINISHED
    if kind == "sub_task" and rows.parent_checked:
        if rows.parent is None:
            return Reason.PARENT_MISSING
        if not rows.parent.active:
            return Reason.PARENT_FINISHED
    return None


def judge(kind: RowKind, rows: Rows, attempts: Attempts, guards: GuardSettings) -> Verdict:
    """A finished row is certain: skip now. A missing one may be uncommitted: re-check first."""
    reason = row_problem(kind, rows)
    if reason is None:
        return Verdict(Action.RUN)
    if reason.certain or attempts.missing >= guards.missing_retries:
        return Verdict(Action.SKIP, reason)
    return Verdict(Action.RECHECK, reason, guards.missing_retry_delay_s)


def judge_unavailable(attempts: Attempts, guards: GuardSettings, jitter: float) -> Verdict:
    """The database did not answer: never skip. Back off exponentially, capped; `jitter` in [0, 1].

    Half the delay is fixed and half random ("equal jitter"), so workers that lost the database
    together do not all come back in the same second.
    """
    if attempts.db >= guards.db_max_retries:
        return Verdict(Action.GIVE_UP)
    cap = guards.db_retry_max_delay_s
    delay = min(cap, DB_RETRY_BASE_DELAY_S * 2 ** min(attempts.db, 32))
    return Verdict(Action.RECHECK, None, delay / 2 + delay / 2 * min(max(jitter, 0.0), 1.0))
