"""The bare floor of `check`: the same reads and look-ups, with no product code, in one process.

    .venv/bin/python -m bench.floor --redis-url URL --dsn DSN --queue video_processing ...

What `check` must do at the least, written plainly: every priority band of every queue in
LRANGE chunks of the product's `redis.chunk_size` (1000), two per round trip (its
`pipeline_depth`); the `unacked` hash by HSCAN with its `unacked_index` scores; the result keys
by SCAN with each key's value and TTL per SCAN batch (by the same read-only GET+TTL script the
product's reader uses, `--results-via pipeline` for pipelined GET+TTL). Each message is parsed
with orjson for its task id and its bound row id (base64 body: `[args, kwargs, embed]`), the
ids are COPYed into temp tables, and two anti-joins answer: the ids whose row is missing or not
live (orphans), and the rows still to run, older than the stuck age, that no message names (lost).

One process, one thread, sequential: the honest floor. `check` overlaps the result-key scan
in a forked child and the look-ups on a thread, so it can beat this on two cores. It imports
nothing from `maintenance`; the bindings are the benchmark's (tests/conftest.py DEFAULT_BINDINGS).
Prints one JSON line: its times per phase, its peak memory, what it found.
"""

from __future__ import annotations

import argparse
import binascii
import gc
import io
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, cast

import orjson
import psycopg2
import redis

CHUNK = 1000  # the product's redis.chunk_size default
DEPTH = 2  # the product's redis.pipeline_depth default
SCRIPT_KEYS = 250  # result keys per script call, as the product's reader
COPY_IDS = 50_000  # ids buffered before a COPY: memory stays bounded
SEP = "\x06\x16"
BANDS = (0, 3, 6, 9)  # kombu's default priority steps
ACTIVE = ("pending", "queued", "processing")
RETENTION_S = 24 * 3600
STUCK_S = 24 * 3600
# task name -> (row kind, positional index or keyword name of the bound id)
BINDINGS: dict[str, tuple[str, int | str]] = {
    "demo.process_video": ("task", 0),
    "demo.process_segment": ("sub_task", 0),
    "demo.render": ("task", "task_id"),
}
VALUES_AND_TTLS = """
local out = {}
for i, key in ipairs(KEYS) do
  out[2 * i - 1] = redis.call('GET', key)
  out[2 * i] = redis.call('TTL', key)
end
return out
"""


class IdSink:
    """Ids written to a temp table by COPY, `COPY_IDS` at a time."""

    def __init__(self, cur: Any, table: str):
        self.cur, self.table = cur, table
        self.buf = io.StringIO()
        self.pending = 0
        self.total = 0
        cur.execute(f"CREATE TEMP TABLE {table} (id text)")

    def add(self, value: str) -> None:
        self.buf.write(value)
        self.buf.write("\n")
        self.pending += 1
        if self.pending >= COPY_IDS:
            self.flush()

    def flush(self) -> None:
        if self.pending:
            self.buf.seek(0)
            self.cur.copy_expert(f"COPY {self.table} (id) FROM STDIN", self.buf)
            self.buf.seek(0)
            self.buf.truncate()
            self.total += self.pending
            self.pending = 0


class Floor:
    def __init__(self, client: redis.Redis, cur: Any):
        self.client, self.cur = client, cur
        self.tasks = IdSink(cur, "seen_task")
        self.subs = IdSink(cur, "seen_sub")
        self.celery = IdSink(cur, "seen_celery")
        self.messages = 0
        self.unmanaged = 0

    def message(self, payload: dict[str, Any]) -> None:
        """Task id and bound row id of one protocol-2 message."""
        headers = payload["headers"]
        self.messages += 1
        self.celery.add(headers["id"])
        binding = BINDINGS.get(headers["task"])
        if binding is None:
            self.unmanaged += 1
            return
        kind, where = binding
        args, kwargs, _ = orjson.loads(binascii.a2b_base64(payload["body"]))
        row_id = args[where] if isinstance(where, int) else kwargs[where]
        (self.tasks if kind == "task" else self.subs).add(row_id)

    def queues(self, queues: list[str]) -> None:
        for queue in queues:
            for band in BANDS:
                key = f"{queue}{SEP}{band}" if band else queue
                self._list(key)

    def _list(self, key: str) -> None:
        start = 0
        while True:
            pipe = self.client.pipeline(transaction=False)
            for i in range(DEPTH):
                pipe.lrange(key, start + i * CHUNK, start + (i + 1) * CHUNK - 1)
            for chunk in pipe.execute():
                for raw in chunk:
                    self.message(orjson.loads(raw))
                if len(chunk) < CHUNK:
                    return
            start += DEPTH * CHUNK

    def unacked(self) -> None:
        cursor = 0
        while True:
            cursor, found = self.client.hscan("unacked", cursor, count=CHUNK)
            entries = cast("dict[bytes, bytes]", found)  # a client that does not decode
            if entries:
                tags: list[Any] = list(entries)
                self.client.zmscore("unacked_index", tags)  # when each was taken: read, as check
                for tag in tags:
                    self.message(orjson.loads(entries[tag])[0])
            if cursor == 0:
                return

    def lookups(self) -> dict[str, int]:
        """Orphans (row missing or not live) and lost rows (old, to run, named by no message)."""
        for sink in (self.tasks, self.subs, self.celery):
            sink.flush()
        cur = self.cur
        cur.execute("ANALYZE seen_task; ANALYZE seen_sub; ANALYZE seen_celery")
        cur.execute(
            "SELECT w.id, t.status FROM seen_task w LEFT JOIN tasks t ON t.id = w.id "
            "WHERE t.id IS NULL OR t.status <> ALL(%s)",
            (list(ACTIVE),),
        )
        task_rows = cur.fetchall()
        cur.execute(
            "SELECT w.id, s.id IS NULL FROM seen_sub w LEFT JOIN sub_tasks s ON s.id = w.id "
            "LEFT JOIN tasks p ON p.id = s.task_id WHERE s.id IS NULL "
            "OR s.status <> ALL(%s) OR p.id IS NULL OR p.status <> ALL(%s)",
            (list(ACTIVE), list(ACTIVE)),
        )
        sub_rows = cur.fetchall()
        cutoff = datetime.now(UTC).replace(tzinfo=None) - timedelta(seconds=STUCK_S)
        # After the first anti-join the planner expects one row and loops the second over a
        # sequential scan of a million seen ids per row (31 s at 200k, 500 s at 1M): hash both.
        cur.execute("SET enable_nestloop = off")
        cur.execute(
            "SELECT t.id, t.status, t.updated_at, t.celery_task_id FROM tasks t "
            "WHERE t.status = ANY(%s) AND t.updated_at < %s "
            "AND NOT EXISTS (SELECT 1 FROM seen_task w WHERE w.id = t.id) "
            "AND NOT EXISTS (SELECT 1 FROM seen_celery c WHERE c.id = t.celery_task_id)",
            (list(ACTIVE), cutoff),
        )
        lost = cur.fetchall()
        cur.execute("RESET enable_nestloop")
        missing_tasks = sum(1 for _, status in task_rows if status is None)
        missing_subs = sum(1 for _, missing in sub_rows if missing)
        return {
            "orphan": len(task_rows) + len(sub_rows),
            "orphan:row_missing": missing_tasks + missing_subs,
            "orphan:row_finished": len(task_rows) - missing_tasks,
            "orphan:parent_finished": len(sub_rows) - missing_subs,
            "lost": len(lost),
        }

    def results(self, via: str) -> dict[str, int]:
        """SCAN result keys; value and TTL per batch; stale by date_done or by no TTL."""
        script = self.client.register_script(VALUES_AND_TTLS)
        now, stale, scanned, cursor = time.time(), [], 0, 0
        while True:
            cursor, keys = self.client.scan(cursor, match="celery-task-meta-*", count=CHUNK)
            if keys:
                if via == "script":
                    replies: list[Any] = []
                    for start in range(0, len(keys), SCRIPT_KEYS):
                        replies.extend(script(keys=keys[start : start + SCRIPT_KEYS]))
                else:
                    pipe = self.client.pipeline(transaction=False)
                    for key in keys:
                        pipe.get(key)
                        pipe.ttl(key)
                    replies = pipe.execute()
                for key, value, ttl in zip(keys, replies[::2], replies[1::2], strict=True):
                    if value is None:
                        continue
                    scanned += 1
                    done = datetime.fromisoformat(orjson.loads(value)["date_done"]).timestamp()
                    if now - done > RETENTION_S or ttl == -1:
                        stale.append(key)
            if cursor == 0:
                return {"stale_result": len(stale), "results_scanned": scanned}


def _hwm_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


def run(redis_url: str, dsn: str, queues: list[str], via: str) -> dict[str, Any]:
    enabled = gc.isenabled()
    gc.disable()  # as the product's scan: no cyclic GC over millions of short-lived objects
    try:
        return _run(redis_url, dsn, queues, via)
    finally:
        if enabled:
            gc.enable()


def _run(redis_url: str, dsn: str, queues: list[str], via: str) -> dict[str, Any]:
    started = time.perf_counter()
    client = redis.Redis.from_url(redis_url)
    conn = psycopg2.connect(dsn)
    cur = conn.cursor()
    floor = Floor(client, cur)
    phases = {}
    floor.queues(queues)
    phases["queues_s"] = time.perf_counter() - started
    mark = time.perf_counter()
    floor.unacked()
    phases["unacked_s"] = time.perf_counter() - mark
    mark = time.perf_counter()
    counts = floor.lookups()
    phases["lookups_s"] = time.perf_counter() - mark
    mark = time.perf_counter()
    counts |= floor.results(via)
    phases["results_s"] = time.perf_counter() - mark
    conn.rollback()
    conn.close()
    client.close()
    counts |= {"messages": floor.messages, "unmanaged": floor.unmanaged}
    return {
        "wall_s": time.perf_counter() - started,
        "phases": phases,
        "peak_rss_mib": _hwm_mib(),
        "counts": counts,
        "shape": "one process, one thread, sequential",
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--redis-url", required=True)
    parser.add_argument("--dsn", required=True, help="libpq DSN or postgresql:// URL")
    parser.add_argument("--queue", action="append", required=True, help="a queue name; repeat")
    parser.add_argument("--results-via", choices=("script", "pipeline"), default="script")
    args = parser.parse_args()
    out = run(args.redis_url, args.dsn, args.queue, args.results_via)
    sys.stdout.write(orjson.dumps(out).decode() + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
