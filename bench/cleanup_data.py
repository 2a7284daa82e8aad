"""Data and traffic for the cleanup benchmark: one queue list, its rows, a producer, a consumer.

The queue is `video_processing` (priority 0), filled with N replicas of one real Celery message
(bench/templates.py captures it from `send_task`), a share of them orphans: half without a row,
half with a finished row. Rows go in with COPY. The push order is remembered, so the benchmark
can check afterwards that every message is where it should be, once, in the same order.

While the cleanup runs, a producer commits rows then LPUSHes new live messages at a steady rate,
and a consumer BRPOPs from the tail at another, like a worker. Both run in their own processes
and hand back, in order, the task ids they pushed or took.
"""

from __future__ import annotations

import contextlib
import io
import multiprocessing as mp
import random
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from multiprocessing.connection import Connection
from typing import Any

import orjson
import psycopg2
import psycopg2.extras
import redis

from bench.templates import MessageTemplate, capture_messages, uuids
from tests.conftest import producer_app

QUEUE = "video_processing"
CHUNK = 20_000  # messages generated, pushed and copied per step
PUSH_SLICE = 1000  # elements per LPUSH
TOMBSTONE_PREFIX = "task-maintenance-tombstone-"


@dataclass
class Queued:
    """What was put in the queue, oldest (tail) first."""

    order: list[str] = field(default_factory=list)  # task ids, push order = tail to head
    orphans: set[str] = field(default_factory=set)
    rows: int = 0


def video_template(redis_url: str) -> MessageTemplate:
    """One real `demo.process_video` message, priority 0, as kombu wrote it (~1 KB)."""
    client = redis.Redis.from_url(redis_url)
    app = producer_app(redis_url)
    try:
        templates = capture_messages(client, app)
    finally:
        app.close()
        client.close()
    return next(t for t in templates if t.kind.name == "video")


def task_id_of(raw: bytes | str) -> str:
    return str(orjson.loads(raw)["headers"]["id"])


def _now_text() -> str:
    return datetime.now(UTC).replace(tzinfo=None).isoformat(sep=" ")


def fill(
    redis_url: str, dsn: str, template: MessageTemplate, n: int, orphans: int, seed: int = 1
) -> Queued:
    """LPUSH n messages (exactly `orphans` of them orphans) and COPY their rows."""
    rng = random.Random(seed)
    orphan_at = set(rng.sample(range(n), orphans))
    client = redis.Redis.from_url(redis_url)
    queued = Queued()
    now = _now_text()
    with psycopg2.connect(dsn) as conn, conn.cursor() as cur:
        for start in range(0, n, CHUNK):
            count = min(CHUNK, n - start)
            ids = uuids(3 * count)
            raws, rows = [], io.StringIO()
            for i in range(count):
                task_id, row_id, tag = ids[3 * i], ids[3 * i + 1], ids[3 * i + 2]
                raws.append(template.render(task_id, row_id, tag).encode())
                queued.order.append(task_id)
                status = "queued"
                if start + i in orphan_at:
                    queued.orphans.add(task_id)
                    if rng.random() < 0.5:
                        continue  # row missing
                    status = "done"  # row finished
                rows.write(f"{row_id}\t{status}\t{now}\t{task_id}\tupload {row_id[:8]}\n")
                queued.rows += 1
            pipe = client.pipeline(transaction=False)
            for s in range(0, count, PUSH_SLICE):
                pipe.lpush(QUEUE, *raws[s : s + PUSH_SLICE])
            pipe.execute()
            rows.seek(0)
            cur.copy_expert(
                "COPY tasks (id, status, updated_at, celery_task_id, title) FROM STDIN", rows
            )
    conn.close()
    conn = psycopg2.connect(dsn)
    conn.autocommit = True
    conn.cursor().execute("VACUUM ANALYZE tasks")
    conn.close()
    client.close()
    return queued


# -- live traffic -----------------------------------------------------------------------------
def _produce(
    redis_url: str,
    dsn: str,
    template: MessageTemplate,
    rate: float,
    tick_s: float,
    stop: Any,
    out: Connection,
) -> None:
    """Every tick: commit the rows of a few new live messages, then LPUSH them (in that order)."""
    client = redis.Redis.from_url(redis_url)
    conn = psycopg2.connect(dsn)
    cur = conn.cursor()
    per_tick = max(1, round(rate * tick_s))
    pushed: list[str] = []
    out.send("ready")
    next_at = time.perf_counter()
    while not stop.is_set():
        ids = uuids(3 * per_tick)
        batch = [(ids[3 * i], ids[3 * i + 1], ids[3 * i + 2]) for i in range(per_tick)]
        now = _now_text()
        psycopg2.extras.execute_values(
            cur,
            "INSERT INTO tasks (id, status, updated_at, celery_task_id, title) VALUES %s",
            [(row, "queued", now, task, "live upload") for task, row, _ in batch],
        )
        conn.commit()
        client.lpush(QUEUE, *[template.render(task, row, tag).encode() for task, row, tag in batch])
        pushed.extend(task for task, _, _ in batch)
        next_at += tick_s
        delay = next_at - time.perf_counter()
        if delay > 0:
            time.sleep(delay)
    out.send(pushed)
    conn.close()
    client.close()


def _consume(redis_url: str, rate: float, stop: Any, out: Connection) -> None:
    """Take one message at a time from the tail, like a worker's BRPOP, at a steady rate."""
    client = redis.Redis.from_url(redis_url)
    taken: list[bytes | str] = []
    out.send("ready")
    next_at = time.perf_counter()
    while not stop.is_set():
        reply = client.brpop([QUEUE], timeout=0.1)
        if reply is not None:
            taken.append(reply[1])
        next_at += 1 / rate
        delay = next_at - time.perf_counter()
        if delay > 0:
            time.sleep(delay)
    out.send([task_id_of(raw) for raw in taken])
    client.close()


class Traffic:
    """`with Traffic(...) as traffic:` runs the producer and the consumer; afterwards
    `traffic.produced` and `traffic.consumed` hold the task ids, in order."""

    def __init__(
        self,
        redis_url: str,
        dsn: str,
        template: MessageTemplate,
        produce_rate: float,
        consume_rate: float,
    ):
        self.args = (redis_url, dsn, template, produce_rate, consume_rate)
        self.produced: list[str] = []
        self.consumed: list[str] = []
        self.seconds = 0.0
        self._ctx = mp.get_context("fork")

    def __enter__(self) -> Traffic:
        redis_url, dsn, template, produce_rate, consume_rate = self.args
        self._stop = self._ctx.Event()
        self._pipes, self._procs = [], []
        jobs: list[tuple[Any, tuple[Any, ...]]] = []
        if produce_rate > 0:
            jobs.append((_produce, (redis_url, dsn, template, produce_rate, 0.01)))
        if consume_rate > 0:
            jobs.append((_consume, (redis_url, consume_rate)))
        for target, args in jobs:
            recv, send = self._ctx.Pipe(duplex=False)
            proc = self._ctx.Process(target=target, args=(*args, self._stop, send), daemon=True)
            proc.start()
            self._pipes.append(recv)
            self._procs.append(proc)
        for recv in self._pipes:
            if recv.recv() != "ready":
                raise RuntimeError("traffic process did not start")
        self._started = time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        results = [recv.recv() for recv in self._pipes]
        self.seconds = time.perf_counter() - self._started
        for proc in self._procs:
            proc.join(10)
            with contextlib.suppress(Exception):
                proc.kill()
        _, _, _, produce_rate, consume_rate = self.args
        if produce_rate > 0:
            self.produced = results.pop(0)
        if consume_rate > 0:
            self.consumed = results.pop(0)
