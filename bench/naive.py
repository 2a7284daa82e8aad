"""The typical hand-written checker, run on the same data for comparison.

`KEYS celery-task-meta-*`, a whole-list `LRANGE 0 -1` per queue list, then one `SELECT` per
message and one `GET` + `SELECT` per result key. The two Redis calls always run in full (they are
what blocks Redis); the per-item loops run on an evenly spaced sample when the data set is larger
than the sample, and their time is extrapolated linearly to every item, which the report says.
"""

from __future__ import annotations

import base64
import json
import time
from dataclasses import dataclass
from typing import cast

import psycopg2
import redis
import sqlalchemy as sa

from bench.probe import Probe, ProbeStats


@dataclass(frozen=True)
class Loop:
    items: int  # all items the naive checker would visit
    sampled: int  # items actually visited
    seconds: float  # measured on the sample

    @property
    def estimated_s(self) -> float:
        return self.seconds * self.items / max(self.sampled, 1)

    @property
    def how(self) -> str:
        if self.sampled >= self.items:
            return "measured in full"
        return f"sample of {self.sampled:,} extrapolated to {self.items:,}"


@dataclass(frozen=True)
class NaiveRun:
    keys_s: float
    lrange_s: float
    messages: Loop
    results: Loop
    probe: ProbeStats

    @property
    def total_s(self) -> float:
        return self.keys_s + self.lrange_s + self.messages.estimated_s + self.results.estimated_s

    @property
    def extrapolated(self) -> bool:
        return (
            self.messages.sampled < self.messages.items or self.results.sampled < self.results.items
        )


def _every(items: list[bytes], count: int) -> list[bytes]:
    if count >= len(items):
        return items
    step = len(items) / count
    return [items[int(i * step)] for i in range(count)]


def _bound_id(raw: bytes) -> object:
    doc = json.loads(raw)
    args, kwargs, _ = json.loads(base64.b64decode(doc["body"]))
    return args[0] if args else kwargs.get("task_id")


def run_naive(
    redis_url: str, db_url: str, queue_keys: tuple[str, ...], sample: int, nice: int = 0
) -> NaiveRun:
    # Its whole-list LRANGE of a big queue takes longer than redis-py 8's 5 s default wait.
    client = redis.Redis.from_url(redis_url, socket_timeout=3600)
    dsn = sa.engine.make_url(db_url).set(drivername="postgresql").render_as_string(False)
    conn = psycopg2.connect(dsn)
    conn.autocommit = True
    cur = conn.cursor()
    with Probe(redis_url, nice=nice) as probe:
        started = time.perf_counter()
        # a client that does not decode: bytes
        result_keys = cast("list[bytes]", client.keys("celery-task-meta-*"))
        keys_s = time.perf_counter() - started
        started = time.perf_counter()
        messages = [
            raw for key in queue_keys for raw in cast("list[bytes]", client.lrange(key, 0, -1))
        ]
        lrange_s = time.perf_counter() - started
        picked = _every(messages, sample)
        started = time.perf_counter()
        for raw in picked:
            cur.execute("SELECT status FROM tasks WHERE id = %s", (str(_bound_id(raw)),))
            cur.fetchone()
        msg_loop = Loop(len(messages), len(picked), time.perf_counter() - started)
        del messages
        picked = _every(result_keys, sample)
        started = time.perf_counter()
        for key in picked:
            value = client.get(key)
            if value is not None:
                cur.execute(
                    "SELECT status FROM tasks WHERE id = %s", (json.loads(value)["task_id"],)
                )
                cur.fetchone()
        result_loop = Loop(len(result_keys), len(picked), time.perf_counter() - started)
    conn.close()
    client.close()
    assert probe.stats is not None
    return NaiveRun(keys_s, lrange_s, msg_loop, result_loop, probe.stats)
