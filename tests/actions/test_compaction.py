"""Bounded compaction through `cleanup`, against real Redis and PostgreSQL: tombstones deeper
than `cleanup.compact_depth` at both ends are left and counted, the next run removes them once
workers drained the tail to them, and `--compact` removes them all at once."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import orjson
import pytest
import redis
import sqlalchemy as sa
from celery import Celery

from examples.demo.schema import new_id, tasks, utcnow
from tests.conftest import run_cli, write_config

QUEUE = "video_processing"
TOMBSTONE = b"task-maintenance-tombstone-"


def send(producer: Celery, engine: sa.Engine, count: int, *, row: bool) -> list[str]:
    """`count` real messages, oldest first; with a pending row each, or none (orphans)."""
    ids = [new_id() for _ in range(count)]
    if row:
        with engine.begin() as conn:
            conn.execute(
                sa.insert(tasks), [dict(id=i, status="pending", updated_at=utcnow()) for i in ids]
            )
    return [producer.send_task("demo.process_video", args=[i], queue=QUEUE).id for i in ids]


def cleanup(config: Path, *extra: str) -> dict[str, Any]:
    result = run_cli(
        "--config", str(config), "cleanup", "--force", "--json", "--grace", "0", *extra
    )
    assert result.returncode == 0, result.stderr
    summary: dict[str, Any] = json.loads(result.stdout)
    return summary


def tombstone_depths(client: redis.Redis) -> list[int]:
    """Depths from the tail (0: the next a worker pops) of our tombstones."""
    return [d for d, raw in enumerate(reversed(client.lrange(QUEUE, 0, -1))) if TOMBSTONE in raw]


@pytest.fixture
def middle_orphans(producer: Celery, engine: sa.Engine) -> list[str]:
    """Tail: 60 live, then 10 orphans, then 60 live: every orphan 60 or more from either end."""
    send(producer, engine, 60, row=True)
    orphans = send(producer, engine, 10, row=False)
    send(producer, engine, 60, row=True)
    return orphans


def test_deep_tombstones_are_left_counted_and_removed_by_the_next_run(
    tmp_path: Path,
    redis_url: str,
    database_url: str,
    redis_client: redis.Redis,
    middle_orphans: list[str],
) -> None:
    config = write_config(
        tmp_path / "maintenance.toml", redis_url, database_url, "[cleanup]\ncompact_depth = 40\n"
    )
    first = cleanup(config)
    assert first["done"]["quarantined"] == 10
    assert first["done"]["tombstones_left"] == 10  # none within 40 of an end: all stay
    assert tombstone_depths(redis_client) == list(range(60, 70))
    # Workers take 55 live messages from the tail: no tombstone among them.
    popped = [redis_client.rpop(QUEUE) for _ in range(55)]
    assert not [raw for raw in popped if raw is None or TOMBSTONE in raw]
    assert tombstone_depths(redis_client) == list(range(5, 15))

    second = cleanup(config)

    assert second["found"].get("orphan", 0) == 0
    assert second["done"]["tombstones_removed"] == 10  # what LREM said it removed
    assert "tombstones_left" not in second["done"]
    assert tombstone_depths(redis_client) == []
    ids = [orjson.loads(raw)["headers"]["id"] for raw in redis_client.lrange(QUEUE, 0, -1)]
    assert len(ids) == 65 and not set(ids) & set(middle_orphans)


def test_compact_removes_every_tombstone_with_one_whole_list_lrem(
    tmp_path: Path,
    redis_url: str,
    database_url: str,
    redis_client: redis.Redis,
    middle_orphans: list[str],
) -> None:
    config = write_config(
        tmp_path / "maintenance.toml", redis_url, database_url, "[cleanup]\ncompact_depth = 40\n"
    )
    summary = cleanup(config, "--compact")
    assert summary["done"]["quarantined"] == 10
    assert "tombstones_left" not in summary["done"]
    assert tombstone_depths(redis_client) == []
    assert redis_client.llen(QUEUE) == 120
