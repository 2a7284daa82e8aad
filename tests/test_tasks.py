"""The maintenance tasks end to end: real worker and Beat processes, real Redis and PostgreSQL."""

from __future__ import annotations

import itertools
import json
import uuid
from pathlib import Path
from typing import Any

import pytest
import redis
import sqlalchemy as sa
from celery import Celery
from celery.exceptions import SoftTimeLimitExceeded
from celery.result import AsyncResult

from examples.demo.schema import new_id, tasks, utcnow
from maintenance.adapters.history import HistoryStore
from maintenance.config import Settings
from maintenance.schedule import CLEANUP_EXPIRED_TASKS, SCAN_ORPHANS
from maintenance.service import Maintenance, RunMode, RunOptions
from tests.conftest import wait_for, write_config
from tests.service_procs import maintenance_beat, maintenance_worker

pytestmark = pytest.mark.slow
QUEUE = "video_processing"
LOCK = "task-maintenance:lock"


def configure(tmp_path: Path, redis_url: str, database_url: str, schedule: str) -> Path:
    extra = f"\n[cleanup]\ngrace_s = 1\n\n[schedule]\n{schedule}\n"
    return write_config(tmp_path / "maintenance.toml", redis_url, database_url, extra=extra)


def story(
    engine: sa.Engine, producer: Celery, live: int, deleted: int
) -> tuple[set[str], set[str]]:
    """The seed's story: rows with real messages, then some rows deleted by hand."""
    ids = [new_id() for _ in range(live + deleted)]
    with engine.begin() as conn:
        conn.execute(
            sa.insert(tasks), [dict(id=i, status="pending", updated_at=utcnow()) for i in ids]
        )
    sent = {i: producer.send_task("demo.process_video", args=[i], queue=QUEUE).id for i in ids}
    gone = ids[live:]
    with engine.begin() as conn:
        conn.execute(sa.delete(tasks).where(tasks.c.id.in_(gone)))
    return {sent[i] for i in ids[:live]}, {sent[i] for i in gone}


def queued_ids(client: redis.Redis) -> set[str]:
    return {json.loads(raw)["headers"]["id"] for raw in client.lrange(QUEUE, 0, -1)}


def finished_runs(engine: sa.Engine, mode: str | None = None) -> list[dict[str, Any]]:
    runs = HistoryStore(engine).recent_runs(limit=200)
    return [r for r in runs if r["finished_at"] and (mode is None or r["mode"] == mode)]


def test_worker_and_beat_clean_real_orphans_and_record_the_run(
    tmp_path: Path,
    redis_url: str,
    database_url: str,
    engine: sa.Engine,
    producer: Celery,
    redis_client: redis.Redis,
) -> None:
    """Beat fires both tasks: orphans quarantined, live work kept, logs written, runs recorded."""
    # Given: 4 live rows and 2 deleted by hand, and a control reply list nobody will ever read
    config = configure(tmp_path, redis_url, database_url, "interval_s = 3")
    live, orphans = story(engine, producer, live=4, deleted=2)
    leftover = f"{uuid.uuid4()}.reply.celery.pidbox"
    redis_client.lpush(leftover, b'{"late": "reply"}')
    # When: the maintenance worker and Beat run
    with (
        maintenance_worker(config, tmp_path / "worker.out"),
        maintenance_beat(config, tmp_path / "beat.out", tmp_path / "beat-schedule"),
    ):
        runs = wait_for(
            lambda: [
                r
                for r in finished_runs(engine, "scan_orphans")
                if r["counts"]["done"].get("quarantined")
            ],
            timeout_s=60,
            what="a scan_orphans run that quarantined the orphans",
        )
        wait_for(
            lambda: not redis_client.exists(leftover),
            timeout_s=60,
            what="cleanup_expired_tasks removing the unread reply list",
        )
    # Then: only live messages are left, the orphans are REVOKED, the history tells who did it
    assert queued_ids(redis_client) == live
    assert {AsyncResult(t, app=producer).state for t in orphans} == {"REVOKED"}
    run = runs[0]
    assert run["outcome"] == "ok" and run["counts"]["done"]["quarantined"] == 2
    assert run["started_by"].startswith("beat via maintenance")
    assert finished_runs(engine, "cleanup_expired_tasks")
    logs = tmp_path / "logs"
    core = [json.loads(line) for line in (logs / "task_cleanup.log").read_text().splitlines()]
    assert any(e["event"] == "🧹 maintenance run finished" for e in core)
    assert all(e["logger"].startswith("maintenance") for e in core)
    assert "maintenance.scan_orphans" in (logs / "celery_worker.log").read_text()
    assert (logs / "app.log").exists()


def test_two_workers_and_beat_never_overlap_runs(
    tmp_path: Path,
    redis_url: str,
    database_url: str,
    engine: sa.Engine,
    producer: Celery,
    redis_client: redis.Redis,
) -> None:
    """Beat fires repeatedly at two workers: the lock lets one run at a time, others skip."""
    config = configure(tmp_path, redis_url, database_url, "interval_s = 2")
    story(engine, producer, live=3, deleted=1)
    with (
        maintenance_worker(config, tmp_path / "w1.out", name="m1"),
        maintenance_worker(config, tmp_path / "w2.out", name="m2"),
        maintenance_beat(config, tmp_path / "beat.out", tmp_path / "beat-schedule"),
    ):
        runs = wait_for(
            lambda: (r := finished_runs(engine)) and len(r) >= 4 and r,
            timeout_s=90,
            what="four finished runs",
        )
    spans = sorted((r["started_at"], r["finished_at"]) for r in runs)
    for (_, end), (start, _) in itertools.pairwise(spans):
        assert start >= end, f"overlapping runs: {spans}"
    # Which task wins the lock at each firing is a race: only the absence of overlap is certain.
    assert {r["mode"] for r in runs} <= {"scan_orphans", "cleanup_expired_tasks"}
    assert {r["started_by"].split(" via ")[1].split("-")[0] for r in runs} <= {"m1", "m2"}
    assert not redis_client.exists(LOCK)


def test_soft_time_limit_records_partial_and_a_run_meeting_the_lock_retries(
    tmp_path: Path,
    redis_url: str,
    database_url: str,
    engine: sa.Engine,
    producer: Celery,
    redis_client: redis.Redis,
) -> None:
    """Soft limit in the grace wait: partial, nothing acted on, lock freed; a held lock: RETRY."""
    # Given: the nightly crontab, and a soft limit shorter than the grace period to wait out
    config = write_config(
        tmp_path / "maintenance.toml",
        redis_url,
        database_url,
        extra="\n[cleanup]\ngrace_s = 30\n\n[schedule]\nsoft_time_limit_s = 3\ntime_limit_s = 6\n",
    )
    _, orphans = story(engine, producer, live=2, deleted=1)
    with maintenance_worker(config, tmp_path / "worker.out"):
        # When: the task is sent the way any app would send it, by name
        summary = producer.send_task(
            SCAN_ORPHANS, kwargs={"started_by": "test"}, queue="maintenance"
        ).get(timeout=60)
        # Then: a summary, not a failure; nothing acted on; the lock is free for the next run
        assert summary["outcome"] == "partial"
        assert not redis_client.exists(LOCK)
        # When: another run holds the lock, a nightly run waits its turn instead of failing
        redis_client.set(LOCK, "held-by-test", ex=60)
        waiting = producer.send_task(CLEANUP_EXPIRED_TASKS, queue="maintenance")
        wait_for(lambda: waiting.state == "RETRY", timeout_s=30, what="the task to retry")
        redis_client.delete(LOCK)
    (run,) = finished_runs(engine, "scan_orphans")
    assert run["outcome"] == "partial" and run["counts"]["done"] == {}
    assert run["counts"]["found"]["orphan"] == 1 and "time limit near" in run["error"]
    assert run["started_by"].startswith("test via ")
    assert orphans <= queued_ids(redis_client)


def test_soft_time_limit_exception_mid_run_records_partial_and_releases_the_lock(
    settings: Settings, engine: sa.Engine, producer: Celery, redis_client: redis.Redis
) -> None:
    """The backstop: SoftTimeLimitExceeded raised inside a run still leaves a partial record."""
    story(engine, producer, live=2, deleted=1)

    def interrupt(_wait_s: float, _findings: int) -> None:  # Celery raises it from a signal
        raise SoftTimeLimitExceeded()

    options = RunOptions(
        mode=RunMode.SCAN_ORPHANS,
        started_by="test",
        on_wait=interrupt,
        interrupted_by=(SoftTimeLimitExceeded,),
    )
    with Maintenance.open(settings) as maintenance, pytest.raises(SoftTimeLimitExceeded):
        maintenance.cleanup(options)
    (run,) = finished_runs(engine)
    assert run["outcome"] == "partial" and run["error"] == "interrupted: SoftTimeLimitExceeded"
    assert not redis_client.exists(LOCK)
