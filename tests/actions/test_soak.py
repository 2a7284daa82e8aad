"""Soak: cleanups over and over while a producer pushes and a consumer pops the same queue,
with faults at random moments (kill -9 of the run, Redis stalls), then an exact account.

Bounded in time: about `SOAK_S` seconds (default 150; `TM_SOAK_S=900 make test` for longer).
Every live message must be consumed or still queued, exactly once; every orphan consumed, still
queued or in the quarantine, exactly once; nothing else is ever in the quarantine.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import orjson
import redis
import sqlalchemy as sa
from celery import Celery

from examples.demo.schema import new_id
from maintenance.adapters.quarantine import split_entry
from tests.actions.test_roll_forward import CLEANUP, forge
from tests.actions.test_run import QUARANTINE, QUEUE, insert_rows
from tests.conftest import ROOT, run_cli, short_lease_config, wait_for
from tests.servers import RedisServer

SOAK_S = float(os.environ.get("TM_SOAK_S", "150"))
SEED = int(os.environ.get("TM_SOAK_SEED", str(int(time.time()))))


class Traffic:
    """A producer (live and orphaned messages) and a consumer on the queue, on threads."""

    def __init__(self, url: str, engine: sa.Engine, template: dict[str, Any], rng: random.Random):
        self.client = redis.Redis.from_url(url, socket_timeout=30)
        self.engine, self.template, self.rng = engine, template, rng
        self.live: set[str] = set()
        self.orphans: set[str] = set()
        self.consumed: list[str] = []
        self.stop = threading.Event()
        self.threads = [
            threading.Thread(target=f, daemon=True) for f in (self._produce, self._consume)
        ]

    def push(self, count: int) -> None:
        rows = [new_id() for _ in range(count)]
        live_rows = [r for r in rows if self.rng.random() < 0.7]
        insert_rows(self.engine, live_rows)  # committed before the message: a real producer
        batch = []
        for row in rows:
            task_id, raw = forge(self.template, row)
            (self.live if row in live_rows else self.orphans).add(task_id)
            batch.append(raw)
        self.client.lpush(QUEUE, *batch)

    def _produce(self) -> None:
        while not self.stop.wait(0.05):
            try:
                self.push(20)
            except redis.RedisError:  # a stall injected by the test: try again
                continue

    def _consume(self) -> None:
        while not self.stop.is_set():
            try:
                got = self.client.brpop([QUEUE], timeout=1)
            except redis.RedisError:
                continue
            if got is not None:
                message = orjson.loads(got[1])
                if not message["headers"]["id"].startswith("task-maintenance-tombstone-"):
                    self.consumed.append(message["headers"]["id"])
                time.sleep(0.004)

    def __enter__(self) -> Traffic:
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join()
        self.client.close()


def test_repeated_cleanups_with_faults_lose_and_duplicate_nothing(
    tmp_path: Path,
    redis_url: str,
    database_url: str,
    redis_server: RedisServer,
    producer: Celery,
    engine: sa.Engine,
    redis_client: redis.Redis,
) -> None:
    rng = random.Random(SEED)
    config = short_lease_config(
        tmp_path / "maintenance.toml", redis_url, database_url, lease_s=1.5, redis_timeout_s=1.0
    )
    producer.send_task("demo.process_video", args=["template"], queue=QUEUE)
    raw = redis_client.lpop(QUEUE)
    assert isinstance(raw, bytes) and redis_server.process is not None
    runs: Counter[str] = Counter()
    with Traffic(redis_url, engine, orjson.loads(raw), rng) as traffic:
        traffic.push(5000)
        deadline = time.monotonic() + SOAK_S
        while time.monotonic() < deadline:
            fault = rng.choice(["none", "none", "kill", "stall"])
            runs[fault] += 1
            proc = subprocess.Popen(
                [sys.executable, "-m", "maintenance.cli.main", "--config", str(config), *CLEANUP],
                cwd=ROOT,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            if fault != "none":
                time.sleep(rng.uniform(0.2, 2.0))  # scan, re-check, quarantine or bookkeeping
            if fault == "kill":
                proc.send_signal(signal.SIGKILL)
            elif fault == "stall":
                os.kill(redis_server.process.pid, signal.SIGSTOP)
                time.sleep(rng.uniform(1.0, 2.5))
                os.kill(redis_server.process.pid, signal.SIGCONT)
            assert proc.wait(timeout=300) in (0, 1, 3, 4, -signal.SIGKILL)
            if fault == "kill":
                time.sleep(1.6)  # its lease runs out
        traffic.push(500)
    # The last run, with the traffic stopped, finishes everything
    final = wait_for(lambda: _cleanup(config), timeout_s=30, what="a last run to get the lock")
    assert final is not None
    queued = _queued(redis_client)
    quarantined = _quarantined(redis_client)
    consumed = Counter(traffic.consumed)
    everything = Counter(queued) + Counter(quarantined) + consumed
    summary = (
        f"seed {SEED}, runs by fault {dict(runs)}, pushed {len(traffic.live)} live and "
        f"{len(traffic.orphans)} orphans, consumed {len(consumed)}, quarantined "
        f"{len(quarantined)}, still queued {len(queued)}"
    )
    print(summary)  # shown with -s: what the soak went through
    assert [t for t, n in everything.items() if n > 1] == [], summary  # nothing twice
    assert set(quarantined) <= traffic.orphans, summary  # nothing live ever taken
    assert traffic.live <= set(queued) | set(consumed), summary  # nothing live lost
    assert traffic.orphans <= set(quarantined) | set(consumed), summary  # no orphan left
    assert not [t for t in queued if t.startswith("task-maintenance-tombstone-")], summary
    clean = run_cli("--config", str(config), "check", "--no-results", "--json")
    assert json.loads(clean.stdout)["counts"]["orphan"] == 0, summary


def _cleanup(config: Path) -> subprocess.CompletedProcess[str] | None:
    done = run_cli("--config", str(config), *CLEANUP, "--json")
    return None if done.returncode == 4 else done


def _queued(client: redis.Redis) -> list[str]:
    ids = []
    for start in range(0, client.llen(QUEUE), 1000):
        for raw in client.lrange(QUEUE, start, start + 999):
            ids.append(orjson.loads(raw)["headers"]["id"])
    return ids


def _quarantined(client: redis.Redis) -> list[str]:
    return [str(split_entry(value)[0]["task_id"]) for _, value in client.hscan_iter(QUARANTINE)]
