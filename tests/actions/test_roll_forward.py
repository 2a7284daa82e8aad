"""Roll forward on real Redis and PostgreSQL: a cleanup killed with SIGKILL, or cut off by a
Redis stall, mid-quarantine is finished by the next run: tombstones removed, REVOKED states and
history actions written, the earlier run marked, nothing live touched."""

from __future__ import annotations

import base64
import json
import os
import signal
import subprocess
import sys
import uuid
from dataclasses import dataclass
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
from tests.conftest import ROOT, run_cli, short_lease_config, wait_for
from tests.servers import RedisServer

ORPHANS, LIVE = 40_000, 50
CLEANUP = ["cleanup", "--force", "--grace", "0", "--max-orphan-ratio", "1"]


@dataclass
class Planted:
    orphan_ids: list[str]
    live_order: list[str]  # the live messages' task ids, in queue order


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


def plant(producer: Celery, engine: sa.Engine, client: redis.Redis) -> Planted:
    """A queue of ORPHANS orphans with LIVE live messages spread among them."""
    producer.send_task("demo.process_video", args=["template"], queue=QUEUE)
    raw = client.lpop(QUEUE)
    assert isinstance(raw, bytes)
    template = orjson.loads(raw)
    live_rows = [new_id() for _ in range(LIVE)]
    insert_rows(engine, live_rows)
    messages = [forge(template, new_id()) for _ in range(ORPHANS)]
    live = [forge(template, row) for row in live_rows]
    for i, message in enumerate(live):
        messages.insert(i * (ORPHANS // LIVE), message)
    pipe = client.pipeline(transaction=False)
    for start in range(0, len(messages), 1000):
        pipe.lpush(QUEUE, *[raw for _, raw in messages[start : start + 1000]])
    pipe.execute()
    live_ids = {task_id for task_id, _ in live}
    return Planted(
        orphan_ids=[t for t, _ in messages if t not in live_ids],
        live_order=[t for t in queued_ids(client) if t in live_ids],
    )


@pytest.fixture
def config(tmp_path: Path, redis_url: str, database_url: str) -> Path:
    return short_lease_config(tmp_path / "maintenance.toml", redis_url, database_url)


def start_cleanup(config: Path) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "maintenance.cli.main", "--config", str(config), *CLEANUP],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


@pytest.mark.parametrize("phase", ["scan", "quarantine", "bookkeeping", "compaction"])
def test_a_cleanup_killed_mid_run_is_finished_by_the_next_run(
    config: Path,
    producer: Celery,
    engine: sa.Engine,
    redis_client: redis.Redis,
    phase: str,
) -> None:
    """kill -9 while scanning (the lock taken, nothing moved yet), while quarantining (the
    quarantine growing), once its bookkeeping wrote history rows, or once its compaction has
    shortened the list: the next run, within one lease, leaves everything as one clean run."""
    planted = plant(producer, engine, redis_client)
    proc = start_cleanup(config)
    total = redis_client.llen(QUEUE)
    began = {
        "scan": lambda: redis_client.exists("task-maintenance:lock"),
        "quarantine": lambda: redis_client.hlen(QUARANTINE) > 0,
        "bookkeeping": lambda: _actions_recorded(engine) > 0,
        "compaction": lambda: redis_client.llen(QUEUE) < total,
    }[phase]
    try:
        wait_for(began, timeout_s=120, interval_s=0.002, what=f"the {phase} to begin")
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.communicate()
    seen = json.loads(run_cli("--config", str(config), "check", "--json", "--no-results").stdout)
    assert seen["counts"]["unreadable"] == 0  # our tombstones are leftovers, not unreadable
    tombstones = seen["leftovers"]["tombstones"]
    if phase in ("scan", "quarantine"):  # before it moved anything, or before it compacted
        assert (tombstones > 0) == (phase == "quarantine")
    done = next_run_finishes(config, engine, redis_client, planted)
    assert done.get("tombstones_removed", 0) == tombstones
    earlier = [r for r in HistoryStore(engine).recent_runs() if r["outcome"] != "ok"]
    # Killed before its history row was written (the lock comes first), or marked interrupted
    assert [r["outcome"] for r in earlier] in ([], ["interrupted"])
    if phase in ("quarantine", "bookkeeping"):  # (after the compaction it may have ended)
        assert earlier and earlier[0]["counts"]["done"]["quarantined"] > 0


def test_a_redis_stall_mid_quarantine_fails_the_run_and_the_next_one_finishes_it(
    tmp_path: Path,
    redis_url: str,
    database_url: str,
    redis_server: RedisServer,
    producer: Celery,
    engine: sa.Engine,
    redis_client: redis.Redis,
) -> None:
    """Redis stops answering mid-quarantine (SIGSTOP): the run fails with Redis's error, not
    the lock's; a script call Redis completes after the client gave up is finished next run."""
    config = short_lease_config(
        tmp_path / "maintenance.toml", redis_url, database_url, redis_timeout_s=1.0
    )
    planted = plant(producer, engine, redis_client)
    assert redis_server.process is not None
    proc = start_cleanup(config)
    try:
        wait_for(
            lambda: redis_client.hlen(QUARANTINE) > 0,
            timeout_s=120,
            interval_s=0.002,
            what="the quarantine to begin",
        )
        os.kill(redis_server.process.pid, signal.SIGSTOP)
        _, err = proc.communicate(timeout=120)
    finally:
        os.kill(redis_server.process.pid, signal.SIGCONT)
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 3, err
    assert "Redis failed while" in err and "releasing the run lock" not in err
    done = next_run_finishes(config, engine, redis_client, planted)
    assert "interrupted_runs_finished" in done
    (failed,) = [r for r in HistoryStore(engine).recent_runs() if r["outcome"] == "failed"]
    assert failed["counts"]["finished_by"]


def next_run_finishes(
    config: Path, engine: sa.Engine, client: redis.Redis, planted: Planted
) -> dict[str, int]:
    """The next cleanup, once the dead run's lease ran out: afterwards every orphan is in the
    quarantine exactly once, REVOKED, with one history action; the live messages are queued
    in their order; no tombstone is left; `check` is clean. Returns what that run did."""
    second = wait_for(lambda: cleanup_unless_locked(config), timeout_s=15, what="the lease")
    done: dict[str, int] = json.loads(second.stdout)["done"]
    assert not [raw for raw in client.lrange(QUEUE, 0, -1) if b"tombstone" in raw]
    assert queued_ids(client) == planted.live_order
    assert client.hlen(QUARANTINE) == ORPHANS
    assert states(client, planted.orphan_ids) == {"REVOKED": ORPHANS}
    history = HistoryStore(engine)
    runs = history.recent_runs()
    quarantined = sum(history.action_counts(r["id"]).get("quarantined", 0) for r in runs)
    assert quarantined == ORPHANS
    clean = run_cli("--config", str(config), "check", "--no-results")
    assert clean.returncode == 0, clean.stdout
    return done


def _actions_recorded(engine: sa.Engine) -> int:
    with engine.connect() as conn:
        if not sa.inspect(conn).has_table("maintenance_actions"):
            return 0
        return int(conn.execute(sa.text("SELECT count(*) FROM maintenance_actions")).scalar_one())


def cleanup_unless_locked(config: Path) -> subprocess.CompletedProcess[str] | None:
    done = run_cli("--config", str(config), *CLEANUP, "--json")
    if done.returncode == 4:  # the dead run's lease has not run out yet
        return None
    assert done.returncode == 0, done.stderr
    return done


def queued_ids(client: redis.Redis) -> list[str]:
    ids = []
    for start in range(0, client.llen(QUEUE), 1000):
        for raw in client.lrange(QUEUE, start, start + 999):
            ids.append(orjson.loads(raw)["headers"]["id"])
    return ids


def states(client: redis.Redis, task_ids: list[str]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for start in range(0, len(task_ids), 1000):
        keys = [f"celery-task-meta-{t}" for t in task_ids[start : start + 1000]]
        for value in client.mget(keys):
            state = json.loads(value)["status"] if value else "PENDING"
            counts[state] = counts.get(state, 0) + 1
    return counts
