"""The fan-out scan (issue 12): parts on real `celery worker` processes, real Redis and PostgreSQL.

The split and the shard patterns are pure; that shards never read a key twice, nor miss one, is
proven against real Redis; the merged report is compared with the single-process scan's.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import redis
import sqlalchemy as sa
from celery import Celery

from examples.demo.schema import new_id, tasks, utcnow
from maintenance.actions.fanout import SCAN_PART, FanOutFailed, LeaseLost
from maintenance.adapters.history import HistoryStore
from maintenance.config import Settings, load_settings
from maintenance.core.models import FindingKind
from maintenance.core.report import ScanReport
from maintenance.scan.fanout import CATCH_ALL, Part, result_shards, split
from maintenance.schedule import SCAN_ORPHANS
from maintenance.service import Maintenance
from tests.conftest import wait_for, write_config
from tests.service_procs import maintenance_worker

LOCK, HOLDER = "task-maintenance:lock", "task-maintenance:lock:holder"
PREFIX = "celery-task-meta-"


# -- pure -------------------------------------------------------------------------------------
def test_split_names_one_part_per_queue_unacked_and_each_result_shard() -> None:
    parts = split(("a", "b"), unacked=True, results=True, task_keyprefix=PREFIX, shards=4)
    assert [p.name for p in parts] == [
        "queue:a",
        "queue:b",
        "unacked",
        "results:048c",
        "results:159d",
        "results:26ae",
        "results:37bf",
        CATCH_ALL,
    ]
    assert parts[0].queues == ("a",) and parts[0].results_shard is None
    assert Part.from_dict(json.loads(json.dumps(parts[-1].as_dict()))) == parts[-1]
    assert split(("a",), unacked=False, results=False, task_keyprefix=PREFIX, shards=16) == [
        Part("queue:a", queues=("a",))
    ]


def test_result_shards_escape_the_prefix_and_cover_each_hex_digit_once() -> None:
    shards = result_shards("app[1]-meta-", 16)
    assert shards[0] == ("results:0", ("app\\[1\\]-meta-[0]*",))
    assert shards[-1] == (CATCH_ALL, ("app\\[1\\]-meta-[^0-9a-f]*", "app\\[1\\]-meta-"))
    digits = "".join(name.split(":")[1] for name, _ in shards[:-1])
    assert sorted(digits) == sorted("0123456789abcdef")


# -- shards on real Redis -----------------------------------------------------------------------
def test_result_shards_read_every_result_key_exactly_once(
    settings: Settings, redis_client: redis.Redis
) -> None:
    """Ids that are no lowercase uuid (uppercase, text, unicode, glob characters, none at all)
    fall in the catch-all shard, and only there."""
    ids = [str(uuid.uuid4()) for _ in range(300)]
    ids += ["ABCDEF-upper", "Zombie", "é-unicode", "[glob*?", "-dash", "", "0", "f" * 40]
    for task_id in ids:
        redis_client.set(PREFIX + task_id, json.dumps({"status": "SUCCESS", "task_id": task_id}))
    redis_client.set("unrelated-key", "x")
    with Maintenance.open(settings) as maintenance:
        reader = maintenance.adapters.reader
        reader.chunk_size = 37  # many SCAN batches
        whole = [m.key for _, chunk in reader.iter_result_chunks() for m in chunk]
        by_shard = {
            name: [
                m.key
                for _, chunk in reader.with_result_match(p).iter_result_chunks()
                for m in chunk
            ]
            for name, p in result_shards(PREFIX, 5)
        }
    read = [key for keys in by_shard.values() for key in keys]
    assert sorted(read) == sorted(whole) == sorted(PREFIX + i for i in ids)
    assert len(read) == len(set(read))  # no key read by two shards
    odd = {"ABCDEF-upper", "Zombie", "é-unicode", "[glob*?", "-dash", ""}
    assert sorted(by_shard[CATCH_ALL]) == sorted(PREFIX + i for i in odd)


# -- with real maintenance workers ------------------------------------------------------------
def fan_out_config(
    tmp_path: Path, redis_url: str, database_url: str, queues: tuple[str, ...]
) -> Path:
    path = write_config(
        tmp_path / "maintenance.toml",
        redis_url,
        database_url,
        extra="\n[cleanup]\ngrace_s = 0\n",
        queues=queues,
    )
    text = path.read_text().replace(
        "[scan]\n",
        "[scan]\nfan_out = true\nfan_out_result_shards = 3\nfan_out_start_timeout_s = 20\n",
    )
    path.write_text(text)
    return path


def hold_lock(client: redis.Redis, run_id: str) -> None:
    """The run lock as a run holding it names itself: the holder every part verifies."""
    now = time.time()
    client.set(LOCK, "token-" + run_id, ex=300)
    holder = dict(what="test", host="h", pid=1, run_id=run_id, started_at=now, renewed_at=now)
    client.set(HOLDER, json.dumps({**holder, "token": "token-" + run_id}), ex=300)


def app_data(engine: sa.Engine, producer: Celery, client: redis.Redis) -> set[str]:
    """Live and deleted rows with messages in two queues, an orphan a worker took (unacked),
    stale and fresh result keys, some with ids that are not uuids; returns the orphans' ids."""
    rows = [new_id() for _ in range(40)]
    with engine.begin() as conn:
        conn.execute(
            sa.insert(tasks), [dict(id=i, status="pending", updated_at=utcnow()) for i in rows]
        )
    sent = {}
    for n, row in enumerate(rows):
        queue = "video_processing" if n % 2 else "celery"
        sent[row] = producer.send_task("demo.process_video", args=[row], queue=queue).id
    gone = rows[:9]
    with engine.begin() as conn:
        conn.execute(sa.delete(tasks).where(tasks.c.id.in_(gone)))
    # one deleted row's message sits in unacked, as a worker that took it leaves it
    raw = client.rpop("celery")
    assert isinstance(raw, bytes)
    doc = json.loads(raw)
    tag = doc["properties"]["delivery_tag"]
    client.hset("unacked", tag, json.dumps([doc, "", "celery"]))
    client.zadd("unacked_index", {tag: time.time()})
    old = (datetime.now(UTC) - timedelta(days=3)).replace(tzinfo=None).isoformat()
    for task_id in [str(uuid.uuid4()) for _ in range(30)] + ["Legacy-1", "zz-2"]:
        meta = {"status": "SUCCESS", "task_id": task_id, "date_done": old}
        client.set(PREFIX + task_id, json.dumps(meta))  # stale: old, and no TTL
    for task_id in [str(uuid.uuid4()) for _ in range(20)] + ["Fresh-1"]:
        meta = {"status": "SUCCESS", "task_id": task_id, "date_done": datetime.now(UTC).isoformat()}
        client.set(PREFIX + task_id, json.dumps(meta), ex=3600)
    return {sent[row] for row in gone}


def findings_set(report: ScanReport) -> set[tuple[Any, ...]]:
    return {
        (
            f.kind,
            f.reason,
            f.task_id,
            f.db_id,
            f.location.where,
            f.location.key,
            f.location.delivery_tag,
        )
        for f in report.findings
    }


@pytest.mark.slow
def test_fanned_out_scan_equals_the_single_process_scan(
    tmp_path: Path,
    redis_url: str,
    database_url: str,
    engine: sa.Engine,
    producer: Celery,
    redis_client: redis.Redis,
) -> None:
    config = fan_out_config(tmp_path, redis_url, database_url, ("video_processing", "celery"))
    settings = load_settings(config, env={})
    orphans = app_data(engine, producer, redis_client)
    hold_lock(redis_client, "run-fan-out")
    with (
        maintenance_worker(config, tmp_path / "w1.out", name="f1"),
        maintenance_worker(config, tmp_path / "w2.out", name="f2"),
        Maintenance.open(settings) as maintenance,
    ):
        fanned = maintenance.fan_out_scan(record_as="check")
        single = maintenance.scan()
        latest, _ = maintenance.adapters.summaries.load()
    assert {f.task_id for f in fanned.of_kind(FindingKind.ORPHAN)} >= orphans
    assert fanned.counts() == single.counts() and fanned.counts()["orphan"] == 9
    assert fanned.counts()["stale_result"] == 32
    assert findings_set(fanned) == findings_set(single)
    assert fanned.places == single.places
    assert fanned.managed_messages == single.managed_messages == 40
    assert sorted(fanned.workers) == sorted(single.workers) and len(single.workers) == 2
    # The maintenance tasks' own result keys come and go meanwhile: at least the app's were read.
    assert min(fanned.results_scanned, single.results_scanned) >= 53
    assert not fanned.lost_checked and any("lost rows not checked" in n for n in fanned.notes)
    assert latest is not None and latest.source == "check" and latest.counts == fanned.counts()
    assert not list(redis_client.scan_iter("task-maintenance:fanout:*"))  # findings lists dropped


@pytest.mark.slow
def test_a_failing_part_fails_the_scan_orphans_run_and_names_the_part(
    tmp_path: Path,
    redis_url: str,
    database_url: str,
    engine: sa.Engine,
    producer: Celery,
    redis_client: redis.Redis,
) -> None:
    """The run on one worker, its parts on both; a queue key of the wrong type fails its part."""
    config = fan_out_config(tmp_path, redis_url, database_url, ("video_processing", "broken"))
    orphans = app_data(engine, producer, redis_client)
    redis_client.set("broken", "not a list")
    with (
        maintenance_worker(config, tmp_path / "w1.out", name="f1"),
        maintenance_worker(config, tmp_path / "w2.out", name="f2"),
    ):
        sent = producer.send_task(SCAN_ORPHANS, kwargs={"started_by": "test"}, queue="maintenance")
        with pytest.raises(Exception, match="queue:broken"):  # the class Celery rebuilds
            sent.get(timeout=90)
    (run,) = [r for r in HistoryStore(engine).recent_runs(limit=5) if r["finished_at"]]
    assert run["outcome"] == "failed" and "queue:broken" in run["error"]
    assert "WRONGTYPE" in run["error"] or "BrokerUnavailable" in run["error"]
    assert run["counts"]["done"] == {}  # nothing planned, nothing applied
    assert not redis_client.exists(LOCK)
    vp_orphans = {
        json.loads(r)["headers"]["id"] for r in redis_client.lrange("video_processing", 0, -1)
    }
    assert orphans & vp_orphans  # the orphans are all still queued


@pytest.mark.slow
def test_a_fan_out_scan_stops_when_the_lease_changes_hands(
    tmp_path: Path,
    redis_url: str,
    database_url: str,
    engine: sa.Engine,
    producer: Celery,
    redis_client: redis.Redis,
) -> None:
    config = fan_out_config(tmp_path, redis_url, database_url, ("video_processing", "celery"))
    settings = load_settings(config, env={})
    app_data(engine, producer, redis_client)
    hold_lock(redis_client, "run-A")
    errors: list[BaseException] = []

    def scan() -> None:
        with Maintenance.open(settings) as maintenance:
            try:
                maintenance.fan_out_scan(record_as="check")
            except BaseException as exc:
                errors.append(exc)

    # Given: a run's scan waiting for its first part, which no worker has taken yet
    scanning = threading.Thread(target=scan)
    scanning.start()
    wait_for(lambda: redis_client.llen("maintenance") == 1, what="the workers part queued")
    # When: the lock is taken over by another run, and workers come up to take the parts
    hold_lock(redis_client, "run-B")
    with (
        maintenance_worker(config, tmp_path / "w1.out", name="f1"),
        maintenance_worker(config, tmp_path / "w2.out", name="f2"),
    ):
        scanning.join(60)
        # A part handed a run id that no longer holds the lock refuses to scan.
        app = Celery("probe", set_as_current=False, broker=redis_url, backend=redis_url)
        part = Part("queue:celery", queues=("celery",)).as_dict()
        answer = app.signature(SCAN_PART, args=("run-A", part, [], 60.0), queue="maintenance")
        refused = answer.apply_async().get(timeout=60)
    # Then: the scan stopped with the lease named, and saved no summary
    assert not scanning.is_alive()
    (error,) = errors
    assert isinstance(error, LeaseLost | FanOutFailed) and "run-A" in str(error)
    assert refused["ok"] is False and "no longer held by run run-A" in refused["error"]
    assert not redis_client.exists("task-maintenance:scan:latest")
