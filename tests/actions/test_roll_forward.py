"""Roll forward on real Redis and PostgreSQL: a cleanup killed with SIGKILL mid-quarantine is
finished by the next run: tombstones removed, REVOKED states and history actions written, the
dead run marked interrupted, nothing live touched."""

from __future__ import annotations

import base64
import json
import os
import signal
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import orjson
import pytest
import redis
import sqlalchemy as sa
from celery import Celery

from examples.demo.schema import new_id
from maintenance.adapters.history import HistoryStore
from tests.actions.test_run import QUARANTINE, QUEUE, insert_rows
from tests.conftest import ROOT, run_cli, wait_for, write_config

ORPHANS, LIVE = 40_000, 50


def forge(template: dict[str, Any], row_id: str) -> tuple[str, bytes]:
    """A copy of a real Celery message for another row, with its own task id and tag."""
    task_id = str(uuid.uuid4())
    _, kwargs, embed = orjson.loads(base64.b64decode(template["body"]))
    message = {
        **template,
        "body": base64.b64encode(orjson.dumps([[row_id], kwargs, embed])).decode(),
        "headers": {
            **template["headers"],
            "id": task_id,
            "root_id": task_id,
            "argsrepr": repr((row_id,)),
        },
        "properties": {
            **template["properties"],
            "correlation_id": task_id,
            "delivery_tag": str(uuid.uuid4()),
        },
    }
    return task_id, orjson.dumps(message)


@pytest.fixture
def config(tmp_path: Path, redis_url: str, database_url: str) -> Path:
    return write_config(
        tmp_path / "maintenance.toml",
        redis_url,
        database_url,
        extra="[cleanup]\nlock_lease_s = 2.0\nlock_renew_s = 0.5\n",
    )


def test_a_cleanup_killed_mid_quarantine_is_finished_by_the_next_run(
    config: Path, producer: Celery, engine: sa.Engine, redis_client: redis.Redis
) -> None:
    # Given a queue of orphans with a few live messages among them
    producer.send_task("demo.process_video", args=["template"], queue=QUEUE)
    raw = redis_client.lpop(QUEUE)
    assert isinstance(raw, bytes)
    template = orjson.loads(raw)
    live_rows = [new_id() for _ in range(LIVE)]
    insert_rows(engine, live_rows)
    messages = [forge(template, new_id()) for _ in range(ORPHANS)]
    live = [forge(template, row) for row in live_rows]
    for i, message in enumerate(live):
        messages.insert(i * (ORPHANS // LIVE), message)
    pipe = redis_client.pipeline(transaction=False)
    for start in range(0, len(messages), 1000):
        pipe.lpush(QUEUE, *[raw for _, raw in messages[start : start + 1000]])
    pipe.execute()
    live_ids = {task_id for task_id, _ in live}
    order_before = [t for t in _queued_ids(redis_client) if t in live_ids]

    # When a cleanup is killed while it moves orphans into the quarantine
    command = ["cleanup", "--force", "--grace", "0", "--max-orphan-ratio", "1"]
    proc = subprocess.Popen(
        [sys.executable, "-m", "maintenance.cli.main", "--config", str(config), *command],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_for(
            lambda: redis_client.hlen(QUARANTINE) > 0,
            timeout_s=120,
            interval_s=0.002,
            what="the quarantine to begin",
        )
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait()
    # Then check sees our tombstones as leftovers, never as unreadable messages
    seen = json.loads(run_cli("--config", str(config), "check", "--json", "--no-results").stdout)
    assert seen["counts"]["unreadable"] == 0
    tombstones = seen["leftovers"]["tombstones"]
    assert tombstones > 0  # killed before it compacted its list

    # And the next run, within one lease, finishes what the dead one left, and its own work
    second = wait_for(lambda: _run(config, command), timeout_s=10, what="the lease to end")
    done = json.loads(second.stdout)["done"]
    assert done["interrupted_runs_finished"] == 1
    assert done.get("tombstones_removed", 0) == tombstones
    assert not [raw for raw in redis_client.lrange(QUEUE, 0, -1) if b"tombstone" in raw]
    assert [t for t in _queued_ids(redis_client)] == order_before  # live ones, in their order
    assert redis_client.hlen(QUARANTINE) == ORPHANS  # every orphan, exactly once
    orphan_ids = [t for t, _ in messages if t not in live_ids]
    states = _states(redis_client, orphan_ids)
    assert states == {"REVOKED": ORPHANS}
    history = HistoryStore(engine)
    (dead,) = [r for r in history.recent_runs() if r["outcome"] == "interrupted"]
    quarantined = sum(
        history.action_counts(r["id"]).get("quarantined", 0) for r in history.recent_runs()
    )
    assert quarantined == ORPHANS  # one history action per quarantined orphan
    assert dead["counts"]["done"]["quarantined"] > 0
    clean = run_cli("--config", str(config), "check", "--no-results")
    assert clean.returncode == 0, clean.stdout


def _run(config: Path, command: list[str]) -> subprocess.CompletedProcess[str] | None:
    done = run_cli("--config", str(config), *command, "--json")
    if done.returncode == 4:  # the dead run's lease has not run out yet
        return None
    assert done.returncode == 0, done.stderr
    return done


def _queued_ids(client: redis.Redis) -> list[str]:
    ids = []
    for start in range(0, client.llen(QUEUE), 1000):
        for raw in client.lrange(QUEUE, start, start + 999):
            ids.append(orjson.loads(raw)["headers"]["id"])
    return ids


def _states(client: redis.Redis, task_ids: list[str]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for start in range(0, len(task_ids), 1000):
        keys = [f"celery-task-meta-{t}" for t in task_ids[start : start + 1000]]
        for value in client.mget(keys):
            state = json.loads(value)["status"] if value else "PENDING"
            counts[state] = counts.get(state, 0) + 1
    return counts
