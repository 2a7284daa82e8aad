"""The queue-list quarantine script against real Redis while the list moves under it; its entries
and tombstones."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import orjson
import pytest
import redis

import maintenance.adapters.quarantine as quarantine_module
from maintenance.adapters.quarantine import Quarantine, split_entry, tombstone_for
from maintenance.adapters.redis_layout import BrokerLayout, OwnKeys
from maintenance.core.models import Finding, FindingKind, Location, Reason, Where
from tests.conftest import wait_for
from tests.workers import demo_worker

KEY = "video_processing"


def message(task_id: str) -> bytes:
    return orjson.dumps(
        {
            "body": "W10=",
            "headers": {"id": task_id, "task": "demo.x"},
            "properties": {"delivery_tag": f"tag-{task_id}"},
        }
    )


def finding(task_id: str, index: int) -> Finding:
    return Finding(
        FindingKind.ORPHAN,
        Reason.ROW_MISSING,
        task_id,
        "demo.x",
        task_id,
        Location(Where.QUEUE, queue=KEY, key=KEY, index=index, delivery_tag=f"tag-{task_id}"),
    )


def ids_in(client: redis.Redis) -> list[str]:
    return [orjson.loads(raw)["headers"]["id"] for raw in client.lrange(KEY, 0, -1)]


def pop_id(client: redis.Redis) -> str:
    """What a worker does: take the message at the tail; its task id."""
    raw = client.rpop(KEY)
    assert isinstance(raw, bytes)
    return str(orjson.loads(raw)["headers"]["id"])


@pytest.mark.parametrize("budget_s", [0.004, 0.000001])  # the second forces a resume per call
def test_orphans_found_while_producers_push_and_workers_pop(
    redis_client: redis.Redis, monkeypatch: pytest.MonkeyPatch, budget_s: float
) -> None:
    """Each orphan still queued is taken, once; everything else stays, in order."""
    monkeypatch.setattr(quarantine_module, "CALL_BUDGET_S", budget_s)
    rng = random.Random(7)
    ids = [f"m{i}" for i in range(3000)]
    redis_client.lpush(KEY, *[message(i) for i in ids])  # m0 at the tail
    orphans = set(rng.sample(ids, 300))
    # Read head first in chunks of 500 while producers push: later chunks see larger indexes,
    # and the last elements of a chunk again (a message read twice is taken once).
    findings, pushed = [], 0
    for start in range(0, 3000, 500):
        chunk = ids_in(redis_client)[start : start + 500]
        findings += [finding(t, start + k) for k, t in enumerate(chunk) if t in orphans]
        new = [f"p{pushed + k}" for k in range(37)]
        redis_client.lpush(KEY, *[message(t) for t in new])
        pushed += len(new)
    assert len(findings) > len({f.task_id for f in findings})
    popped = [pop_id(redis_client) for _ in range(400)]
    before = ids_in(redis_client)
    tomb = tombstone_for("demo.x", KEY, "run")
    q = Quarantine(redis_client, BrokerLayout(), OwnKeys("task-maintenance"))
    taken: list[Finding] = []
    missing: list[Finding] = []
    for t, m in q.take_from_list(KEY, findings, tomb, lambda f: {"id": f.task_id}):
        taken += t
        missing += m
        redis_client.lpush(KEY, message(f"late{len(taken)}"))  # pushes between calls
        popped.append(pop_id(redis_client))
    tombs_popped = sum(1 for p in popped if p.startswith("task-maintenance-tombstone-"))
    assert q.compact_whole(KEY, tomb).removed == len(taken) - tombs_popped
    still = {t for t in before if t in orphans}
    assert {f.task_id for f in taken} | {p for p in popped if p in orphans} >= still
    assert len(taken) == len({f.task_id for f in taken})
    assert {f.task_id for f in missing} <= {p for p in popped if p in orphans}
    after = ids_in(redis_client)
    assert not orphans & set(after)
    kept = [t for t in before if t not in {f.task_id for f in taken}]
    assert [t for t in after if not t.startswith("late")] == [t for t in kept if t not in popped]
    stored: dict[Any, Any] = redis_client.hgetall("task-maintenance:quarantine")
    assert {orjson.loads(split_entry(v)[1])["headers"]["id"] for v in stored.values()} == {
        f.task_id for f in taken
    }


def test_an_entry_keeps_the_message_byte_for_byte_whatever_it_holds() -> None:
    raw = b'{"body": "eA==", "headers": {"id": "a\\nb"}}\n\n{"second": "line"}'
    stored = orjson.dumps({"key": "q", "origin": "queue"}) + b"\n" + raw
    assert split_entry(stored) == ({"key": "q", "origin": "queue"}, raw)
    first_format = orjson.dumps({"meta": {"key": "q"}, "raw": raw.decode()})
    assert split_entry(first_format) == ({"key": "q"}, raw)


def test_tombstone_is_discarded_by_a_worker_without_error(
    redis_client: redis.Redis, redis_url: str, database_url: str, tmp_path: Path
) -> None:
    """A worker that pops a tombstone before compaction discards it as expired, no error."""
    redis_client.lpush(KEY, tombstone_for("demo.process_video", KEY, "run"))
    log = tmp_path / "worker.log"
    with demo_worker(redis_url, database_url, log):
        wait_for(lambda: redis_client.llen(KEY) == 0, what="worker to pop the tombstone")
        wait_for(lambda: "Discarding revoked task" in log.read_text(), what="discard")
        # acknowledged like any message: nothing left for a restore to bring back
        wait_for(lambda: redis_client.hlen("unacked") == 0, what="the ack")
    assert "ERROR" not in log.read_text() and "Traceback" not in log.read_text()
    assert not list(redis_client.scan_iter("celery-task-meta-task-maintenance-tombstone-*"))


def plant_tombstones(client: redis.Redis, tomb: bytes, from_tail: list[int]) -> None:
    """LSET `tomb` at these depths from the tail (0: the last element), as the script does."""
    for depth in from_tail:
        client.lset(KEY, -1 - depth, tomb.decode())


def tombstone_depths(client: redis.Redis, tomb: bytes) -> list[int]:
    """Depths from the tail of the elements equal to `tomb`, shallowest first."""
    return [d for d, raw in enumerate(reversed(client.lrange(KEY, 0, -1))) if raw == tomb]


def test_bounded_compaction_removes_the_tombstones_near_either_end_in_pieces(
    redis_client: redis.Redis,
) -> None:
    """Pieces of `piece` tombstones within `depth` of the tail, then of the head; deeper ones,
    and another run's tombstones, stay where they are; every message keeps its order."""
    ids = [f"m{i}" for i in range(2000)]
    redis_client.lpush(KEY, *[message(i) for i in ids])  # m0 at the tail (depth 0)
    tomb, other = tombstone_for("demo.x", KEY, "run"), tombstone_for("demo.x", KEY, "older")
    near_tail, deep, near_head = [0, 3, 10, 11, 40, 41, 42, 90, 99], [700, 1000, 1300], [1950, 1999]
    plant_tombstones(redis_client, tomb, near_tail + deep + near_head)
    plant_tombstones(redis_client, other, [50])
    kept = [t for d, t in enumerate(ids) if d not in {*near_tail, *deep, *near_head, 50}]
    q = Quarantine(redis_client, BrokerLayout(), OwnKeys("task-maintenance"))

    done = q.compact(KEY, tomb, depth=100, piece=4)

    assert done.removed == len(near_tail) + len(near_head)  # what LREM said it removed
    assert done.pieces >= 3 + 1 + 2  # 9 at the tail: 4, 4, 1, then a piece finds none
    assert redis_client.llen(KEY) == 2000 - done.removed
    # the deep ones moved closer to the tail by the removed tombstones shallower than them
    assert tombstone_depths(redis_client, tomb) == [d - len(near_tail) for d in deep]
    assert tombstone_depths(redis_client, other) == [50 - 7]
    remaining = [orjson.loads(raw)["headers"]["id"] for raw in redis_client.lrange(KEY, 0, -1)]
    assert [t for t in remaining if t.startswith("m")] == kept[::-1]


def test_deep_tombstones_are_taken_by_a_later_compaction_as_workers_drain_the_tail(
    redis_client: redis.Redis,
) -> None:
    """What workers see: after the first compaction no tombstone near the tail, so the next
    messages they pop are live; the deep ones, once the tail reached them, the next run's
    compaction removes before any worker pops one."""
    ids = [f"m{i}" for i in range(1500)]
    redis_client.lpush(KEY, *[message(i) for i in ids])
    tomb = tombstone_for("demo.x", KEY, "run")
    plant_tombstones(redis_client, tomb, [5, 60, 400, 800, 1200])
    q = Quarantine(redis_client, BrokerLayout(), OwnKeys("task-maintenance"))
    popped: list[str] = []

    def workers_take(n: int) -> None:
        popped.extend(pop_id(redis_client) for _ in range(n))

    removed = [q.compact(KEY, tomb, depth=100, piece=2).removed]  # 5 and 60; 3 stay
    assert tombstone_depths(redis_client, tomb) == [398, 798, 1198]
    workers_take(300)
    removed.append(q.compact(KEY, tomb, depth=100, piece=2).removed)  # the one now at 98
    workers_take(400)
    removed.append(q.compact(KEY, tomb, depth=100, piece=2).removed)  # the one now at 97
    assert removed == [2, 1, 1]
    assert tombstone_depths(redis_client, tomb) == [496]  # 299 from the head: out of reach
    assert q.compact_whole(KEY, tomb).removed == 1  # the operator's opt-in takes the rest
    assert not [t for t in popped if t.startswith("task-maintenance-tombstone-")]
    live = [t for d, t in enumerate(ids) if d not in {5, 60, 400, 800, 1200}]
    assert popped == live[: len(popped)]  # workers got the live messages, in order
