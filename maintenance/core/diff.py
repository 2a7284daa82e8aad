"""The diff: Redis facts against database facts, giving findings. Pure functions only."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from collections.abc import Set as AbstractSet
from concurrent.futures import Executor
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from typing import Any, Protocol

from maintenance.core.models import (
    Finding,
    FindingKind,
    Location,
    Message,
    Reason,
    ResultMeta,
    RowState,
    StuckRow,
    Where,
)


@dataclass(frozen=True)
class Lookup:
    """Rows found for one batch of ids. An id absent from every mapping was looked up and is gone.

    Only a *successful* look-up may produce a `Lookup`: a failed query raises instead, so that a
    database error can never read as "row missing".
    """

    tasks: Mapping[str, RowState] = field(default_factory=dict)
    sub_tasks: Mapping[str, RowState] = field(default_factory=dict)
    parents: Mapping[str, RowState] = field(default_factory=dict)
    invalid: frozenset[str] = frozenset()  # ids that cannot exist in the id column's type


def judge_message(msg: Message, lookup: Lookup) -> Finding | None:
    """One message: unreadable, orphan, or fine (None). Unmanaged messages are never judged."""
    if msg.problem is not None:
        return _finding(msg, FindingKind.UNREADABLE, msg.problem, msg.detail)
    if msg.db_id is None or not msg.row_kind:
        return None
    if msg.db_id in lookup.invalid:
        return _finding(
            msg,
            FindingKind.UNREADABLE,
            Reason.BAD_ID,
            f"{msg.db_id!r} is not a valid id for the {msg.row_kind} table",
        )
    reason = row_verdict(msg.row_kind, msg.db_id, lookup)
    if reason is None:
        return None
    return _finding(msg, FindingKind.ORPHAN, reason, "")


def row_verdict(row_kind: str, db_id: str, lookup: Lookup) -> Reason | None:
    """Why the row behind a valid id is not live, or None when it is."""
    if row_kind == "task":
        return _row_verdict(lookup.tasks.get(db_id), Reason.ROW_MISSING, Reason.ROW_FINISHED)
    return _sub_task_verdict(db_id, lookup)


@dataclass(frozen=True)
class Verdicts:
    """One batch look-up as the scan uses it: the ids that are certainly fine, and the rest.

    Fetching and holding a RowState for every live row would cost more than the rest of the
    scan, so a look-up may return only the rows of the ids that are not fine. `lookup` holds
    all that `judge_message` reads for those; an id for which `fine` is True needs no judging.
    """

    checked: Mapping[str, AbstractSet[str]]  # row kind -> the ids looked up
    problems: Mapping[str, AbstractSet[str]]  # row kind -> ids of rows not live, invalid ids
    lookup: Lookup

    def fine(self, row_kind: str, db_id: str) -> bool:
        return db_id in self.checked.get(row_kind, ()) and db_id not in self.problems.get(
            row_kind, ()
        )

    def not_fine(self, row_kind: str, ids: AbstractSet[str]) -> set[str]:
        """Those of `ids` for which `fine` is False, by set algebra: the scan asks once per
        batch rather than once per message, and only the few ids returned need judging."""
        unchecked = ids - self.checked.get(row_kind, frozenset())
        return set(unchecked) | (ids & self.problems.get(row_kind, frozenset()))

    @classmethod
    def build(
        cls,
        task_ids: AbstractSet[str],
        sub_task_ids: AbstractSet[str],
        lookup: Lookup,
        not_live_tasks: AbstractSet[str] | None = None,
    ) -> Verdicts:
        """`not_live_tasks`: the task ids whose rows are missing or finished, when
        `lookup.tasks` holds only those rows; None when it holds every row found."""

        def problems(row_kind: str, ids: AbstractSet[str]) -> frozenset[str]:
            if row_kind == "task" and not_live_tasks is not None:  # set algebra, no loop
                return frozenset((ids & lookup.invalid) | (ids & not_live_tasks))
            return frozenset(
                db_id
                for db_id in ids
                if db_id in lookup.invalid or row_verdict(row_kind, db_id, lookup) is not None
            )

        checked = {"task": task_ids, "sub_task": sub_task_ids}
        return cls(checked, {kind: problems(kind, ids) for kind, ids in checked.items()}, lookup)


def _row_verdict(row: RowState | None, missing: Reason, finished: Reason) -> Reason | None:
    if row is None:
        return missing
    return None if row.active else finished


def _sub_task_verdict(db_id: str, lookup: Lookup) -> Reason | None:
    """A sub-task runs only while its own row and its parent's row are both still to run."""
    row = lookup.sub_tasks.get(db_id)
    own = _row_verdict(row, Reason.ROW_MISSING, Reason.ROW_FINISHED)
    if own is not None or row is None:
        return own
    parent = lookup.parents.get(row.parent_id or "")
    return _row_verdict(parent, Reason.PARENT_MISSING, Reason.PARENT_FINISHED)


def _finding(msg: Message, kind: FindingKind, reason: Reason, detail: str) -> Finding:
    return Finding(
        kind,
        reason,
        msg.task_id,
        msg.task_name,
        msg.db_id,
        msg.location,
        detail=detail,
        row_kind=msg.row_kind,
    )


def judge_result(meta: ResultMeta, now: float, retention_s: float) -> Finding | None:
    """Stale when finished longer ago than the retention, or when the key never expires."""
    reason = result_verdict(meta.date_done, meta.ttl_s, now, retention_s)
    if reason is None:
        return None
    age = None if meta.date_done is None else max(0.0, now - meta.date_done)
    detail = "key has no expiry" if reason is Reason.RESULT_NO_TTL else ""
    return Finding(
        FindingKind.STALE_RESULT,
        reason,
        meta.task_id,
        "",
        None,
        _result_location(meta),
        age_s=age,
        detail=detail,
    )


def result_verdict(
    date_done: float | None, ttl_s: int, now: float, retention_s: float
) -> Reason | None:
    """Why a result key is stale, from the two facts that decide it; None when it is not."""
    if date_done is not None and max(0.0, now - date_done) > retention_s:
        return Reason.RESULT_EXPIRED
    if ttl_s == -1:
        return Reason.RESULT_NO_TTL
    return None


def _result_location(meta: ResultMeta) -> Location:
    return Location(Where.RESULT, key=meta.key, state=meta.status)


class LostCheck(Protocol):
    """The lost-row check of one scan: every message seen crosses its row off; what is left of
    the rows still to run past the stuck age when the scan ends is lost.

    `LostTracker` holds the candidates in memory; `adapters.lost_rows.ServerLostRows` keeps them
    in a temporary table on the database side, so the scan's memory does not grow with them."""

    def saw(self, msg: Message) -> None: ...

    def saw_many(self, seen: Sequence[Sequence[Any]]) -> None: ...

    def run_on(self, pool: Executor) -> None:
        """Where crossing off may run: the scan's look-up thread."""

    def closed_on_error(self) -> AbstractContextManager[None]:
        """Around the scan: a failed scan lets go of what the check holds."""

    def findings(self, now: float) -> Iterable[Finding]: ...


def lost_finding(row: StuckRow, now: float) -> Finding:
    """A row still to run past the stuck age that no message crossed off."""
    age = None if row.updated_at is None else max(0.0, now - row.updated_at)
    return Finding(
        FindingKind.LOST,
        Reason.NO_MESSAGE,
        row.celery_id or "",
        "",
        row.db_id,
        Location(Where.DATABASE, state=row.status),
        age_s=age,
        detail=f"{row.row_kind} row '{row.status}' with no message",
        row_kind=row.row_kind,
    )


class LostTracker:
    """Rows still to run past the stuck age; every message seen anywhere crosses its row off.

    Holding only the stuck candidates (not every id seen) keeps memory bounded by the number of
    old pending rows rather than by the size of the queues: the fallback where the database
    cannot keep them (`ServerLostRows`), and the reference it is tested against.
    """

    def __init__(self, candidates: Iterable[StuckRow]):
        self._rows: dict[tuple[str, str], StuckRow] = {}
        self._by_celery_id: dict[str, tuple[str, str]] = {}
        for row in candidates:
            key = (row.row_kind, row.db_id)
            self._rows[key] = row
            if row.celery_id:
                self._by_celery_id[row.celery_id] = key
        self._db_ids = {db_id for _, db_id in self._rows}  # a superset once rows are seen

    def __len__(self) -> int:
        return len(self._rows)

    def run_on(self, pool: Executor) -> None:
        """Crossing off in memory is quicker than handing it over: it stays where it is called."""

    def closed_on_error(self) -> AbstractContextManager[None]:
        return nullcontext()

    def saw(self, msg: Message) -> None:
        self.saw_ids(msg.row_kind, msg.db_id, msg.task_id)

    def saw_many(self, seen: Sequence[Sequence[Any]]) -> None:
        """Messages seen, as (task id, row kind, database id, ...). A chunk at a time: the few
        candidates are found by set intersection, not by a look-up per message."""
        if not self._rows:
            return
        db_ids = {s[2] for s in seen} & self._db_ids
        task_ids = {s[0] for s in seen} & self._by_celery_id.keys()
        if db_ids or task_ids:
            for task_id, row_kind, db_id, *_ in seen:
                if db_id in db_ids or task_id in task_ids:
                    self.saw_ids(row_kind, db_id, task_id)

    def saw_ids(self, row_kind: str, db_id: str | None, task_id: str) -> None:
        if not self._rows:
            return
        if db_id is not None:
            self._rows.pop((row_kind, db_id), None)
        key = self._by_celery_id.pop(task_id, None)
        if key is not None:
            self._rows.pop(key, None)

    def findings(self, now: float) -> list[Finding]:
        return [lost_finding(row, now) for row in self._rows.values()]
