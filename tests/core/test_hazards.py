"""Hazards, pure: ETAs beyond the visibility timeout, duplicate task ids, expired messages."""

from __future__ import annotations

from datetime import UTC, datetime

from maintenance.core.envelope import Quick
from maintenance.core.hazards import (
    HazardWatch,
    extra_copies,
    first_taken,
    parse_time,
    redeliveries,
)
from maintenance.core.models import Finding, FindingKind, Location, Message, Reason, Where

NOW = 1_800_000_000.0
VT = 3600.0
PLACE = Location(Where.QUEUE, queue="q", priority=0, key="q")


def iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat()


def read(task_id: str, tag: str, eta: str | None = None, expires: str | None = None) -> Quick:
    return (task_id, "", None, "demo.t", tag, eta, expires)


def watch(started: float = NOW) -> HazardWatch:
    return HazardWatch(now=NOW, visibility_timeout_s=VT, scan_started_at=started)


def test_times_and_redeliveries() -> None:
    assert (
        parse_time("2027-01-15T08:00:00+00:00") == datetime(2027, 1, 15, 8, tzinfo=UTC).timestamp()
    )
    assert parse_time("2027-01-15T08:00:00") == parse_time("2027-01-15T08:00:00+00:00")
    assert parse_time("not a time") is None and parse_time(None) is None
    assert parse_time(12.5) == 12.5 and parse_time(True) is None
    assert redeliveries(NOW + VT - 1, NOW, VT) == 1
    assert redeliveries(NOW + VT + 1, NOW, VT) == 2
    assert redeliveries(NOW + 5 * VT, NOW, VT) == 6
    assert redeliveries(NOW + 5 * VT, NOW, 0) == 1


def test_eta_beyond_the_visibility_timeout_queued_and_unacked() -> None:
    w = watch()
    near, far = iso(NOW + VT / 2), iso(NOW + 2.5 * VT)
    found = list(w.queued([read("a", "t1", eta=near), read("b", "t2", eta=far)], PLACE, 10))
    assert [(f.kind, f.task_id, f.location.index) for f in found] == [
        (FindingKind.ETA_BEYOND_VISIBILITY, "b", 11)
    ]
    assert "runs about 3 times" in found[0].detail
    held = Message(
        "c",
        "demo.t",
        Location(Where.UNACKED, key="unacked", delivery_tag="t3"),
        eta=iso(NOW + VT / 2),
        taken_at=NOW - VT,  # taken an hour ago, ETA in half an hour: restored once already
    )
    (unacked,) = list(w.message(held))
    assert (
        unacked.kind is FindingKind.ETA_BEYOND_VISIBILITY and unacked.reason is Reason.ETA_TOO_FAR
    )
    assert "runs about 2 times" in unacked.detail


def test_expired_waiting() -> None:
    w = watch()
    found = list(
        w.queued([read("a", "t1", expires=iso(NOW - 60)), read("b", "t2", expires=iso(NOW + 60))],
                 PLACE, 0)
    )  # fmt: skip
    assert [(f.kind, f.task_id) for f in found] == [(FindingKind.EXPIRED_WAITING, "a")]
    assert found[0].reason.certain
    # a naive expiry is read by workers in their local zone, unknown here: never reported
    naive = datetime.fromtimestamp(NOW - 86400, UTC).replace(tzinfo=None).isoformat()
    assert list(w.queued([read("c", "t3", expires=naive)], PLACE, 2)) == []
    assert parse_time(naive, naive_as_utc=False) is None


def test_duplicates_need_two_delivery_tags() -> None:
    """One message read twice (a moving list, same tag) is no duplicate; two publishes are."""
    w = watch()
    assert list(w.queued([read("a", "t1"), read("b", "t2")], PLACE, 0)) == []
    # the next chunk re-reads "b" (pushes moved it), and holds a second publish of "a"
    again = list(w.queued([read("b", "t2"), read("a", "t9"), read("c", "t3")], PLACE, 2))
    assert [(f.task_id, f.location.index) for f in again] == [("a", 3)]
    assert again[0].kind is FindingKind.DUPLICATE and w.duplicate_ids == {"a"}
    # within one chunk, and in another list
    other = Location(Where.QUEUE, queue="r", priority=0, key="r")
    inside = list(w.queued([read("d", "t4"), read("d", "t5"), read("b", "t2")], other, 0))
    assert [f.task_id for f in inside] == ["d", "b"]  # "b" in another list is another message


def test_an_unacked_entry_taken_during_the_scan_is_the_queued_copy() -> None:
    w = watch(started=NOW - 5)
    list(w.queued([read("a", "t1"), read("b", "t2")], PLACE, 0))
    taken_now = Message(
        "a", "demo.t", Location(Where.UNACKED, key="unacked", delivery_tag="t1"), taken_at=NOW - 1
    )
    taken_before = Message(
        "b", "demo.t", Location(Where.UNACKED, key="unacked", delivery_tag="t7"), taken_at=NOW - 60
    )
    assert list(w.message(taken_now)) == []
    assert [f.task_id for f in w.message(taken_before)] == ["b"]
    worker = Message("b", "demo.t", Location(Where.WORKER, worker="w1"))
    assert list(w.message(worker)) == []  # a worker's copy is its unacked entry


def copy(where: Where, tag: str, queue: str = "q", band: int = 0, index: int = -1) -> Finding:
    loc = Location(where, queue=queue, priority=band, key=f"{queue}{band}", index=index,
                   delivery_tag=tag)  # fmt: skip
    return Finding(FindingKind.DUPLICATE, Reason.SAME_TASK_ID, "x", "demo.t", None, loc)


def test_the_copy_kept_is_the_one_a_worker_takes_first() -> None:
    tail, head = copy(Where.QUEUE, "t1", index=9), copy(Where.QUEUE, "t2", index=2)
    assert first_taken([head, tail], ["q"]) is tail  # workers pop the tail
    band3 = copy(Where.QUEUE, "t3", band=3, index=50)
    assert first_taken([band3, head], ["q"]) is head  # band 0 before band 3
    other_queue = copy(Where.QUEUE, "t4", queue="r", index=99)
    assert first_taken([other_queue, head], ["q", "r"]) is head  # configured order
    unacked = copy(Where.UNACKED, "t5")
    assert first_taken([tail, unacked], ["q"]) is unacked  # already in a worker's hands
    assert extra_copies([head, tail, band3, unacked], ["q"]) == [head, tail, band3]
    assert extra_copies([head, tail], ["q"]) == [head]
    same_message = copy(Where.QUEUE, "t1", index=10)  # the kept one, read twice
    assert extra_copies([tail, same_message], ["q"]) == []
    fanout = copy(Where.QUEUE, "t1", queue="r", index=3)  # one publish routed to two queues
    assert extra_copies([tail, fanout], ["q", "r"]) == [fanout]
