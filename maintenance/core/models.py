"""Frozen data passed between snapshot, diff, plan and apply."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Literal

RowKind = Literal["task", "sub_task"]  # which of the app's tables a message's id points into
Bound = RowKind | Literal[""]  # a message's or finding's row kind; "" when unmanaged
Progress = Callable[[str, int, int | None], None]  # (phase, done, total or None when unknown)


class RunMode(StrEnum):
    """What a recorded maintenance run was started to do (the history's `mode` column)."""

    CLEANUP = "cleanup"
    QUICK_FIX = "quick-fix"
    SCAN_ORPHANS = "scan_orphans"
    CLEANUP_EXPIRED_TASKS = "cleanup_expired_tasks"
    REVOKE_ORPHANS = "revoke_orphans"  # RedisTaskCleaner.revoke_orphaned_tasks
    EXPIRED_RESULTS = "expired_results"  # RedisTaskCleaner.cleanup_expired_results
    REVOKE = "revoke"  # operator: named tasks
    RESTORE = "restore"  # operator: back from the quarantine
    PURGE = "purge"  # operator: queued messages selected by task name, queue and arguments


class Outcome(StrEnum):
    """How a maintenance run ended (the history's `outcome` column)."""

    RUNNING = "running"  # started, not finished yet
    OK = "ok"
    PARTIAL = "partial"  # stopped early (time limit), what it did is recorded
    REFUSED = "refused"  # the circuit breaker refused the plan
    DECLINED = "declined"  # the operator answered no
    DRY_RUN = "dry_run"  # nothing was recorded or changed
    FAILED = "failed"  # Redis or the database failed: nothing further was changed
    SKIPPED = "skipped"  # a Celery task met another run's lock
    INTERRUPTED = "interrupted"  # found unfinished by a later run (killed, or its end unrecorded)


def as_text(value: object) -> str:
    """A driver's value as text: bytes decoded, None as ""."""
    if value is None:
        return ""
    return value.decode() if isinstance(value, bytes) else str(value)


class FindingKind(StrEnum):
    ORPHAN = "orphan"  # a message whose row is gone or finished
    STALE_RESULT = "stale_result"  # a result key past retention, or one that never expires
    LOST = "lost"  # a row still to run with no message anywhere
    UNREADABLE = "unreadable"  # a message we could not parse or bind: never judged
    # Hazards: messages that will run more than once, or take a queue's place for nothing.
    ETA_BEYOND_VISIBILITY = "eta_beyond_visibility"  # redelivered every visibility_timeout
    DUPLICATE = "duplicate"  # another copy of a task id present elsewhere: it runs twice
    EXPIRED_WAITING = "expired_waiting"  # `expires` has passed: workers will only discard it


class Reason(StrEnum):
    ROW_MISSING = "row_missing"
    ROW_FINISHED = "row_finished"
    PARENT_MISSING = "parent_missing"
    PARENT_FINISHED = "parent_finished"
    RESULT_EXPIRED = "result_expired"
    RESULT_NO_TTL = "result_no_ttl"
    NO_MESSAGE = "no_message"
    BAD_ENVELOPE = "bad_envelope"
    NO_BOUND_ID = "no_bound_id"
    BAD_ID = "bad_id"
    OPERATOR = "operator"  # named by an operator's `revoke`, whatever its row says
    ETA_TOO_FAR = "eta_too_far"  # ETA further out than the transport's visibility timeout
    SAME_TASK_ID = "same_task_id"  # a second copy (another delivery tag) of one task id
    EXPIRED = "expired"  # its `expires` lies in the past

    @property
    def certain(self) -> bool:
        """A finished row is final; a missing row may be a producer that has not committed yet."""
        return self in (
            Reason.ROW_FINISHED,
            Reason.PARENT_FINISHED,
            Reason.SAME_TASK_ID,
            Reason.EXPIRED,
        )


class Where(StrEnum):
    QUEUE = "queue"
    UNACKED = "unacked"
    WORKER = "worker"
    RESULT = "result"
    DATABASE = "database"


@dataclass(frozen=True, slots=True)
class Location:
    where: Where
    queue: str = ""  # logical queue name (without priority suffix or prefix)
    priority: int = 0  # kombu priority band (0 = the plain list)
    key: str = ""  # the Redis key holding it
    index: int = -1  # position in the list when read (a hint: lists move)
    delivery_tag: str = ""
    worker: str = ""
    state: str = ""  # worker: active/reserved/scheduled; result: its status

    def describe(self) -> str:
        if self.where is Where.QUEUE:
            band = f" priority {self.priority}" if self.priority else ""
            return f"queue {self.queue}{band}"
        if self.where is Where.UNACKED:
            return f"unacked (queue {self.queue}, tag {self.delivery_tag})"
        if self.where is Where.WORKER:
            return f"worker {self.worker} ({self.state})"
        if self.where is Where.RESULT:
            return f"result {self.state}".strip()
        return str(self.where)


@dataclass(frozen=True, slots=True)
class Message:
    """The envelope of one Celery message: what we need to judge it, never the body itself."""

    task_id: str
    task_name: str
    location: Location
    db_id: str | None = None  # the bound database id, normalised to text
    row_kind: Bound = ""
    problem: Reason | None = None  # set when the message cannot be judged
    detail: str = ""
    eta: str | None = None
    taken_at: float | None = None  # unacked: when a worker took it (unix seconds)
    expires: str | None = None  # the `expires` header: ISO time after which workers discard it
    raw: bytes | None = None  # the exact payload, kept only where an action may need it


@dataclass(frozen=True, slots=True)
class RowState:
    """What the database says about one id. `parent_id` is set for sub-tasks."""

    active: bool
    status: str = ""
    parent_id: str | None = None


@dataclass(frozen=True, slots=True)
class Rows:
    """What one primary-key look-up found: the row, and for a sub-task its parent."""

    row: RowState | None
    parent: RowState | None = None
    parent_checked: bool = False  # False when the row has no parent to check


@dataclass(frozen=True, slots=True)
class ResultMeta:
    task_id: str
    key: str
    status: str
    date_done: float | None  # unix seconds
    ttl_s: int  # -1: no expiry


@dataclass(frozen=True, slots=True)
class StuckRow:
    db_id: str
    row_kind: RowKind
    status: str
    updated_at: float | None
    celery_id: str | None = None


@dataclass(frozen=True, slots=True)
class Finding:
    kind: FindingKind
    reason: Reason
    task_id: str
    task_name: str
    db_id: str | None
    location: Location
    age_s: float | None = None  # as reported: the finding's age when it was judged
    detail: str = ""
    row_kind: Bound = ""  # which table the verdict was read from
    taken_at: float | None = None  # unacked: when a worker took the message (unix seconds)

    def as_dict(self) -> dict[str, Any]:
        loc = self.location
        return {
            "kind": self.kind.value,
            "reason": self.reason.value,
            "task_id": self.task_id,
            "task_name": self.task_name,
            "db_id": self.db_id,
            "row_kind": self.row_kind or None,
            "location": {
                "where": loc.where.value,
                "queue": loc.queue or None,
                "priority": loc.priority if loc.where is Where.QUEUE else None,
                "key": loc.key or None,
                "delivery_tag": loc.delivery_tag or None,
                "worker": loc.worker or None,
                "state": loc.state or None,
            },
            "age_s": None if self.age_s is None else round(self.age_s, 3),
            "detail": self.detail or None,
        }
