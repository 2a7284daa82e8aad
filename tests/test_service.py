"""`Maintenance`, the one front door, on real Redis and PostgreSQL: what each operation reads,
writes and records."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import redis
import sqlalchemy as sa
from celery import Celery

from examples.demo.schema import tasks, utcnow
from maintenance.config import Settings
from maintenance.service import Maintenance, RunMode, RunOptions

LATEST = "task-maintenance:scan:latest"


@pytest.fixture
def maintenance(settings: Settings) -> Iterator[Maintenance]:
    with Maintenance.open(settings) as service:
        yield service


def test_only_a_whole_recorded_scan_saves_the_summary(
    maintenance: Maintenance, redis_client: redis.Redis
) -> None:
    """`check` of everything saves what `monitor` shows; a plain scan, a `--task-id` scan and
    a scan without result keys leave it alone."""
    maintenance.scan()
    maintenance.check("some-task-id")
    maintenance.check(results=False)
    assert not redis_client.exists(LATEST)
    maintenance.check()
    assert b'"source": "check"' in (redis_client.get(LATEST) or b"")


def test_a_dry_run_records_and_saves_nothing(
    maintenance: Maintenance, redis_client: redis.Redis, producer: Celery, engine: sa.Engine
) -> None:
    """The dry run shows the plan only: no history row, no lock, no summary."""
    with engine.begin() as conn:  # a finished row: certain, so the plan acts without a re-check
        conn.execute(sa.insert(tasks).values(id="r1", status="done", updated_at=utcnow()))
    producer.send_task("demo.process_video", args=["r1"])
    result = maintenance.cleanup(RunOptions(dry_run=True, max_orphan_ratio=1.0))
    assert (result.outcome, result.run_id) == ("dry_run", "")
    assert result.plan.counts() == {"quarantine": 1}
    assert maintenance.adapters.history.recent_runs() == []
    assert not redis_client.exists(LATEST)
    assert redis_client.llen("video_processing") == 1


def test_cleanup_records_its_mode_and_caller(
    maintenance: Maintenance, producer: Celery, redis_client: redis.Redis
) -> None:
    """A real run quarantines the orphan and records who started it, in what mode."""
    producer.send_task("demo.process_video", args=["no-such-row"])
    result = maintenance.cleanup(
        RunOptions(mode=RunMode.QUICK_FIX, started_by="ops", grace_s=0, max_orphan_ratio=1.0)
    )
    assert (result.outcome, result.done) == ("ok", {"quarantined": 1})
    (run,) = maintenance.adapters.history.recent_runs()
    assert (run["id"], run["mode"], run["started_by"]) == (result.run_id, "quick-fix", "ops")
    assert redis_client.llen("video_processing") == 0
    assert b'"source": "quick-fix"' in (redis_client.get(LATEST) or b"")


def test_revoke_and_restore_record_their_caller(maintenance: Maintenance, producer: Celery) -> None:
    """Operator actions name whoever called them in the history (not always `cli`)."""
    task_id = producer.send_task("demo.process_video", args=["no-such-row"]).id
    revoked = maintenance.revoke([task_id], started_by="notebook")
    restored = maintenance.restore([task_id], started_by="notebook")
    assert (revoked.done, restored.done) == ({"quarantined": 1}, {"restored": 1})
    runs = {r["id"]: r for r in maintenance.adapters.history.recent_runs()}
    assert [
        (runs[r.run_id]["mode"], runs[r.run_id]["started_by"], runs[r.run_id]["outcome"])
        for r in (revoked, restored)
    ] == [("revoke", "notebook", "ok"), ("restore", "notebook", "ok")]
