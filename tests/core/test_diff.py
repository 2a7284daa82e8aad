"""The pure diff: messages and results against database rows, as tables of cases; the batch
verdicts (Verdicts) and the lost-row tracker (LostTracker)."""

from __future__ import annotations

import random

import pytest

from maintenance.core.diff import Lookup, LostTracker, Verdicts, judge_message, judge_result
from maintenance.core.models import (
    Bound,
    FindingKind,
    Location,
    Message,
    Reason,
    ResultMeta,
    RowState,
    StuckRow,
    Where,
)

LOC = Location(Where.QUEUE, queue="q", priority=3, key="q\x06\x163")
ACTIVE = RowState(active=True, status="pending")
DONE = RowState(active=False, status="done")


def task_msg(db_id: str | None = "t1", task_id: str = "cid", kind: Bound = "task") -> Message:
    return Message(task_id, "demo.process_video", LOC, db_id=db_id, row_kind=kind)


@pytest.mark.parametrize(
    ("lookup", "expected"),
    [
        (Lookup(tasks={"t1": ACTIVE}), None),
        (Lookup(tasks={"t1": RowState(active=True, status="processing")}), None),
        (Lookup(), (FindingKind.ORPHAN, Reason.ROW_MISSING)),
        (Lookup(tasks={"other": ACTIVE}), (FindingKind.ORPHAN, Reason.ROW_MISSING)),
        (Lookup(tasks={"t1": DONE}), (FindingKind.ORPHAN, Reason.ROW_FINISHED)),
        (Lookup(sub_tasks={"t1": ACTIVE}), (FindingKind.ORPHAN, Reason.ROW_MISSING)),
        (Lookup(invalid=frozenset({"t1"})), (FindingKind.UNREADABLE, Reason.BAD_ID)),
    ],
)
def test_task_messages(lookup: Lookup, expected: tuple[FindingKind, Reason] | None) -> None:
    """A task message is fine while its row is still to run, an orphan otherwise."""
    finding = judge_message(task_msg(), lookup)
    if expected is None:
        assert finding is None
    else:
        assert finding is not None
        assert (finding.kind, finding.reason) == expected
        assert (finding.task_id, finding.db_id, finding.location) == ("cid", "t1", LOC)


def sub(status_active: bool, parent: str | None = "p1") -> RowState:
    return RowState(
        active=status_active, status="pending" if status_active else "done", parent_id=parent
    )


@pytest.mark.parametrize(
    ("lookup", "expected"),
    [
        (Lookup(sub_tasks={"s1": sub(True)}, parents={"p1": ACTIVE}), None),
        (Lookup(), Reason.ROW_MISSING),
        (Lookup(parents={"p1": ACTIVE}), Reason.ROW_MISSING),
        (Lookup(sub_tasks={"s1": sub(False)}, parents={"p1": ACTIVE}), Reason.ROW_FINISHED),
        (Lookup(sub_tasks={"s1": sub(False)}), Reason.ROW_FINISHED),  # own state first
        (Lookup(sub_tasks={"s1": sub(True)}), Reason.PARENT_MISSING),
        (Lookup(sub_tasks={"s1": sub(True, parent=None)}), Reason.PARENT_MISSING),
        (Lookup(sub_tasks={"s1": sub(True)}, parents={"p1": DONE}), Reason.PARENT_FINISHED),
        (Lookup(sub_tasks={"s1": sub(True)}, tasks={"p1": ACTIVE}), Reason.PARENT_MISSING),
    ],
)
def test_sub_task_messages(lookup: Lookup, expected: Reason | None) -> None:
    """A sub-task runs only while its own row and its parent row are both still to run."""
    finding = judge_message(task_msg("s1", kind="sub_task"), lookup)
    if expected is None:
        assert finding is None
    else:
        assert finding is not None
        assert finding.kind is FindingKind.ORPHAN
        assert finding.reason is expected


@pytest.mark.parametrize(
    "msg",
    [
        Message("cid", "demo.send_email", LOC),
        Message("cid", "demo.send_email", LOC, db_id="t1"),  # no kind: not bound
    ],
)
def test_unmanaged_messages_are_never_judged(msg: Message) -> None:
    """Messages of unbound task names give no finding, whatever the database says."""
    assert judge_message(msg, Lookup()) is None


@pytest.mark.parametrize("reason", [Reason.BAD_ENVELOPE, Reason.NO_BOUND_ID])
def test_messages_with_a_problem_are_unreadable(reason: Reason) -> None:
    """A message that could not be read is reported as unreadable with its detail."""
    msg = Message("cid", "demo.x", LOC, row_kind="task", problem=reason, detail="why")
    finding = judge_message(msg, Lookup(tasks={"t1": ACTIVE}))
    assert finding is not None
    assert (finding.kind, finding.reason, finding.detail) == (FindingKind.UNREADABLE, reason, "why")


def test_one_lookup_judges_a_batch_of_messages() -> None:
    """A batch gives one finding per bad message and nothing for good ones."""
    messages = [task_msg("t1", "a"), task_msg("gone", "b"), task_msg("t2", "c")]
    lookup = Lookup(tasks={"t1": ACTIVE, "t2": DONE})
    found = [f for msg in messages if (f := judge_message(msg, lookup)) is not None]
    assert [(f.task_id, f.reason) for f in found] == [
        ("b", Reason.ROW_MISSING),
        ("c", Reason.ROW_FINISHED),
    ]


NOW = 1_000_000.0
DAY = 86_400.0


@pytest.mark.parametrize(
    ("date_done", "ttl_s", "expected", "age"),
    [
        (NOW - 60, 3600, None, None),
        (NOW - DAY + 1, 3600, None, None),
        (NOW - DAY - 1, 3600, Reason.RESULT_EXPIRED, DAY + 1),
        (NOW - 3 * DAY, -1, Reason.RESULT_EXPIRED, 3 * DAY),
        (NOW - 60, -1, Reason.RESULT_NO_TTL, 60.0),
        (None, -1, Reason.RESULT_NO_TTL, None),
        (None, 500, None, None),
        (NOW + 60, 500, None, None),  # clock skew: a result from the future is not stale
    ],
)
def test_results(
    date_done: float | None, ttl_s: int, expected: Reason | None, age: float | None
) -> None:
    """A result is stale past the retention, or when its key never expires."""
    meta = ResultMeta("cid", "celery-task-meta-cid", "SUCCESS", date_done, ttl_s)
    finding = judge_result(meta, NOW, DAY)
    if expected is None:
        assert finding is None
    else:
        assert finding is not None
        assert finding.kind is FindingKind.STALE_RESULT
        assert finding.reason is expected
        assert finding.age_s == age
        assert finding.location.where is Where.RESULT
        assert finding.location.key == "celery-task-meta-cid"
        assert finding.task_id == "cid"


def stuck(db_id: str, celery_id: str | None = None) -> StuckRow:
    return StuckRow(db_id, "task", "pending", NOW - 2 * DAY, celery_id)


def test_lost_rows_are_those_never_seen() -> None:
    """Rows still to run with no message anywhere are lost; any sighting crosses them off."""
    tracker = LostTracker([stuck("a"), stuck("b", "cid-b"), stuck("c", "cid-c"), stuck("d")])
    assert len(tracker) == 4
    tracker.saw(task_msg("a", "x"))  # by database id
    tracker.saw(Message("cid-b", "other.task", LOC))  # by the row's Celery id, even unmanaged
    tracker.saw(Message("cid-c", "other.task", Location(Where.WORKER, worker="w1")))  # held
    tracker.saw(task_msg("d", "y", kind="sub_task"))  # a sub-task with the same id: not it
    found = tracker.findings(NOW)
    assert [(f.db_id, f.kind, f.reason) for f in found] == [
        ("d", FindingKind.LOST, Reason.NO_MESSAGE)
    ]
    assert found[0].age_s == 2 * DAY
    assert found[0].location.where is Where.DATABASE
    assert found[0].location.state == "pending"


def test_lost_tracker_without_candidates_is_empty() -> None:
    """With no stuck rows there is nothing to report, whatever is seen."""
    tracker = LostTracker([])
    tracker.saw(task_msg())
    assert tracker.findings(NOW) == []


def test_lost_tracker_saw_many_crosses_off_what_saw_ids_does() -> None:
    """A chunk seen at once crosses off exactly the rows its messages cross off one by one."""
    rng = random.Random(7)
    rows = [
        StuckRow(
            f"r{i}",
            rng.choice(["task", "sub_task"]),
            "pending",
            0.0,
            celery_id=f"c{i}" if i % 3 else None,
        )
        for i in range(200)
    ]
    seen = [
        (
            f"c{rng.randrange(400)}",
            rng.choice(["task", "sub_task", ""]),
            rng.choice([f"r{rng.randrange(400)}", None]),
        )
        for _ in range(300)
    ]
    one_by_one, at_once = LostTracker(rows), LostTracker(rows)
    for task_id, row_kind, db_id in seen:
        one_by_one.saw_ids(row_kind, db_id, task_id)
    at_once.saw_many(seen)
    assert len(at_once) < len(rows)
    assert [f.db_id for f in at_once.findings(1.0)] == [f.db_id for f in one_by_one.findings(1.0)]


def test_not_fine_is_every_id_fine_rejects() -> None:
    rng = random.Random(3)
    pool = [f"i{n}" for n in range(60)]
    for _ in range(200):
        checked = {k: set(rng.sample(pool, 30)) for k in ("task", "sub_task") if rng.random() < 0.9}
        problems = {
            k: frozenset(rng.sample(pool, 10)) for k in ("task", "sub_task") if rng.random() < 0.9
        }
        verdicts = Verdicts(checked, problems, Lookup())
        for kind in ("task", "sub_task", "other"):
            ids = set(rng.sample(pool, 25))
            assert verdicts.not_fine(kind, ids) == {i for i in ids if not verdicts.fine(kind, i)}
