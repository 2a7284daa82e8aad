"""Fill Redis and PostgreSQL with N realistic messages, N result keys and the task rows.

Messages are replicated from real Celery messages (see templates.py) and pushed with pipelined
variadic LPUSH; rows go in with COPY, a chunk at a time, so a fill of 10M holds one chunk in
memory. What was planted (orphans, stale results, lost rows) is counted here so the benchmark can
check the report against it. A `Shape` sets the proportions; `PRESETS` names the ones the
benchmark runs (`ours` is the historical default).
"""

from __future__ import annotations

import io
import random
import time
from collections import Counter
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta

import psycopg2
import redis
import sqlalchemy as sa

from bench.templates import (
    KINDS,
    Kind,
    MessageTemplate,
    ResultTemplates,
    capture_messages,
    capture_results,
    uuids,
)
from examples.demo.schema import create_schema
from tests.conftest import producer_app

CHUNK = 20_000  # messages generated, pushed and copied per step
PUSH_SLICE = 1000  # elements per LPUSH
SET_SLICE = 1000  # result keys per script call: a SET per key through redis-py is 5x slower
# SET each key to its value, with EX when its TTL is > 0 (0: a key without TTL)
_SET_MANY_LUA = """
for i, key in ipairs(KEYS) do
  local ttl = tonumber(ARGV[2 * i])
  if ttl > 0 then
    redis.call('SET', key, ARGV[2 * i - 1], 'EX', ttl)
  else
    redis.call('SET', key, ARGV[2 * i - 1])
  end
end
return #KEYS
"""
RESULT_EXPIRES_S = 3 * 86400  # the app keeps results 3 days; retention is 24 h
ACTIVE = ("pending", "queued")


@dataclass(frozen=True)
class Shape:
    """The proportions of a data set: what the scan is proven on besides its size."""

    name: str = "ours"
    orphan_share: float = 0.10  # of all queued messages
    stale_results: float = 0.12  # of result keys: 5/6 of them finished days ago, 1/6 no TTL
    old_backlog: float = 0.01  # of live task rows with a message: untouched past the stuck age
    pad_bytes: int = 0  # extra kwarg per message body (base64 grows it by 4/3); 0: ~1 KB
    queues: int = 0  # 0: video_processing + celery; else this many queues, every kind in each

    def chunk(self) -> int:
        """Messages per fill step: about 20 MB of them, whatever their size."""
        return max(1000, CHUNK * 1000 // (1000 + 2 * self.pad_bytes))

    def kinds(self) -> tuple[Kind, ...]:
        """The message kinds, spread over `queues` queues (each with its priority bands)."""
        if not self.queues:
            return KINDS
        return tuple(
            replace(
                kind, name=f"{kind.name}_q{i}", queue=f"q{i:02d}", weight=kind.weight / self.queues
            )
            for i in range(self.queues)
            for kind in KINDS
        )


PRESETS = {
    shape.name: shape
    for shape in (
        Shape(),
        # An app without result_expires: nearly every result key outlives retention; and a
        # backlog of days: most rows still to run are old, each a lost-row candidate to cross off.
        Shape("stale-backlog", stale_results=0.93, old_backlog=0.76),
        Shape("orphans50", orphan_share=0.5),
        Shape("big10k", pad_bytes=6100),  # ~10 KB: the kwargs are in the body and kwargsrepr
        Shape("queues50", queues=50),
    )
}
DEFAULT_SHAPE = PRESETS["ours"]


@dataclass
class Planted:
    """What the data set holds, to compare with the report."""

    messages: int = 0
    unacked: int = 0
    unmanaged: int = 0
    orphans: Counter[str] = field(default_factory=Counter)  # reason -> count
    stale_results: int = 0
    results: int = 0
    lost_rows: int = 0
    old_live_rows: int = 0  # live task rows with a message, untouched past the stuck age
    live_rows: int = 0  # ... of all live task rows with a message
    task_rows: int = 0
    sub_task_rows: int = 0
    keys: tuple[str, ...] = ()  # the queue lists filled
    queues: tuple[str, ...] = ()  # the queue names (for the scan's config)
    shape: Shape = DEFAULT_SHAPE


def _stamps(start_s: float, stop_s: float, count: int = 2000) -> list[tuple[str, float]]:
    """(naive UTC timestamp text, age in seconds) spread over [start_s, stop_s) ago."""
    now = datetime.now(UTC).replace(tzinfo=None)
    out = []
    for i in range(count):
        age = start_s + (stop_s - start_s) * i / count
        out.append(((now - timedelta(seconds=age)).isoformat(sep=" "), age))
    return out


class _Rows:
    """Text-format COPY buffers for the two tables."""

    def __init__(self) -> None:
        self.tasks = io.StringIO()
        self.sub_tasks = io.StringIO()
        self.task_count = 0
        self.sub_count = 0

    def task(self, row_id: str, status: str, updated: str, celery_id: str) -> None:
        self.tasks.write(f"{row_id}\t{status}\t{updated}\t{celery_id}\tupload {row_id[:8]}\n")
        self.task_count += 1

    def sub_task(self, row_id: str, parent: str, status: str) -> None:
        self.sub_tasks.write(f"{row_id}\t{parent}\t{status}\n")
        self.sub_count += 1

    def copy(self, cur: psycopg2.extensions.cursor) -> None:
        for table, buf, cols in (
            ("tasks", self.tasks, "id, status, updated_at, celery_task_id, title"),
            ("sub_tasks", self.sub_tasks, "id, task_id, status"),
        ):
            buf.seek(0)
            cur.copy_expert(f"COPY {table} ({cols}) FROM STDIN", buf)
            buf.seek(0)
            buf.truncate()


class _Generator:
    """Decides, message by message, which rows exist: live, missing or finished."""

    def __init__(self, rows: _Rows, planted: Planted, rng: random.Random, shape: Shape):
        self.rows, self.planted, self.rng = rows, planted, rng
        self.recent = _stamps(0, 3600)
        self.old = _stamps(2 * 86400, 4 * 86400)
        managed = sum(k.weight for k in KINDS if k.row)
        self.orphan_p = shape.orphan_share / managed
        self.old_p = shape.old_backlog
        self.parent = ""
        self.parent_left = 0

    def _updated(self, live: bool) -> str:
        # Live rows older than the stuck age (1% by default): the scan must cross them off as seen.
        old = self.rng.random() < self.old_p
        self.planted.live_rows += live
        self.planted.old_live_rows += old and live
        return self.rng.choice(self.old if old else self.recent)[0]

    def rows_for(self, row: str, row_id: str, task_id: str) -> None:
        """Write the rows of one message; plant an orphan with probability `orphan_p`."""
        if not row:
            self.planted.unmanaged += 1
            return
        orphan = self.rng.random() < self.orphan_p
        gone = orphan and self.rng.random() < 0.5
        if row == "task":
            if orphan:
                self.planted.orphans["row_missing" if gone else "row_finished"] += 1
            if not gone:
                status = (
                    self.rng.choice(("done", "cancelled")) if orphan else self.rng.choice(ACTIVE)
                )
                self.rows.task(row_id, status, self._updated(not orphan), task_id)
            return
        if orphan:
            self.planted.orphans["row_missing" if gone else "parent_finished"] += 1
        if gone:
            return
        parent = self._parent(finished=orphan)
        self.rows.sub_task(row_id, parent, self.rng.choice(ACTIVE))

    def _parent(self, finished: bool) -> str:
        """Live sub-tasks share a live parent, ten each; an orphan gets a finished parent."""
        if finished or self.parent_left == 0:
            parent = uuids(1)[0]
            self.rows.task(
                parent, "done" if finished else "processing", self.rng.choice(self.recent)[0], ""
            )
            if finished:
                return parent
            self.parent, self.parent_left = parent, 10
        self.parent_left -= 1
        return self.parent


def _push_messages(
    client: redis.Redis, templates: list[MessageTemplate], gen: _Generator, count: int
) -> None:
    weights = [t.kind.weight for t in templates]
    picks = gen.rng.choices(range(len(templates)), weights=weights, k=count)
    ids = uuids(3 * count)
    by_key: dict[str, list[bytes]] = {}
    for i, pick in enumerate(picks):
        tpl = templates[pick]
        task_id, row_id, tag = ids[3 * i], ids[3 * i + 1], ids[3 * i + 2]
        by_key.setdefault(tpl.key, []).append(tpl.render(task_id, row_id, tag).encode())
        gen.rows_for(tpl.kind.row, row_id, task_id)
    pipe = client.pipeline(transaction=False)
    for key, raws in by_key.items():
        for start in range(0, len(raws), PUSH_SLICE):
            pipe.lpush(key, *raws[start : start + PUSH_SLICE])
    pipe.execute()
    gen.planted.messages += count


def _push_unacked(
    client: redis.Redis, template: MessageTemplate, gen: _Generator, count: int
) -> None:
    """Messages a worker holds: kombu's `[message, exchange, routing_key]` in `unacked`."""
    now = time.time()
    pipe = client.pipeline(transaction=False)
    for task_id, row_id, tag in zip(*[iter(uuids(3 * count))] * 3, strict=True):
        raw = template.render(task_id, row_id, tag)
        pipe.hset("unacked", tag, f'[{raw}, "", "{template.kind.queue}"]')
        pipe.zadd("unacked_index", {tag: now - gen.rng.uniform(0, 600)})
        gen.rows_for(template.kind.row, row_id, task_id)
    pipe.execute()
    gen.planted.unacked += count


def _push_results(
    client: redis.Redis,
    templates: ResultTemplates,
    count: int,
    rng: random.Random,
    planted: Planted,
    stale: float,
) -> None:
    """A share `stale` is stale: 5/6 of it finished 26-70 h ago (past retention), 1/6 without
    TTL (by default 10% and 2%); the rest finished recently."""
    old_share = stale * 5 / 6
    recent, old = _stamps(0, 23 * 3600), _stamps(26 * 3600, 70 * 3600)
    iso = [(text.replace(" ", "T") + "+00:00", age) for text, age in recent + old]
    n_recent = len(recent)
    set_many = client.register_script(_SET_MANY_LUA)
    for start in range(0, count, CHUNK):
        size = min(CHUNK, count - start)
        keys: list[str] = []
        argv: list[str | int] = []
        for task_id, result in zip(*[iter(uuids(2 * size))] * 2, strict=True):
            draw = rng.random()
            is_stale = draw < stale
            date, age = iso[
                rng.randrange(n_recent, len(iso)) if draw < old_share else rng.randrange(n_recent)
            ]
            tpl = templates.failure if rng.random() < 0.05 else templates.success
            value = tpl % {"t": task_id, "r": result, "d": date}
            keys.append(f"celery-task-meta-{task_id}")
            argv += (value, 0 if old_share <= draw < stale else int(RESULT_EXPIRES_S - age))
            planted.stale_results += is_stale
        pipe = client.pipeline(transaction=False)
        for part in range(0, size, SET_SLICE):
            set_many(keys[part : part + SET_SLICE], argv[2 * part : 2 * (part + SET_SLICE)], pipe)
        pipe.execute()
    planted.results += count


def _fresh_database(admin_url: str, name: str) -> str:
    admin = sa.create_engine(admin_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    admin.dispose()
    url = admin_url.rsplit("/", 1)[0] + f"/{name}"
    engine = sa.create_engine(url)
    create_schema(engine)
    engine.dispose()
    return url


def fill(
    n: int, redis_url: str, admin_db_url: str, seed: int = 1, shape: Shape = DEFAULT_SHAPE
) -> tuple[str, Planted]:
    """Flush Redis, recreate the database, fill both. Returns the database URL and the plan."""
    # redis-py 8 waits 5 s for a reply by default: FLUSHALL of a 5 GiB Redis takes longer.
    client = redis.Redis.from_url(redis_url, socket_timeout=600)
    client.flushall()
    app = producer_app(redis_url, result_expires=RESULT_EXPIRES_S)
    kinds = shape.kinds()
    templates = capture_messages(client, app, kinds, pad=shape.pad_bytes)
    results = capture_results(client, app)
    app.close()
    db_url = _fresh_database(admin_db_url, "bench")
    rng, rows, planted = random.Random(seed), _Rows(), Planted(shape=shape)
    gen = _Generator(rows, planted, rng, shape)
    dsn = sa.engine.make_url(db_url).set(drivername="postgresql").render_as_string(False)
    with psycopg2.connect(dsn) as conn, conn.cursor() as cur:
        step = shape.chunk()
        for start in range(0, n, step):
            _push_messages(client, templates, gen, min(step, n - start))
            rows.copy(cur)
        _push_unacked(client, templates[0], gen, max(1, n // 1000))
        rows.copy(cur)
        _plant_lost_and_history(rows, gen, n, cur)
        rows.copy(cur)
    planted.task_rows, planted.sub_task_rows = rows.task_count, rows.sub_count
    _push_results(client, results, n, rng, planted, shape.stale_results)
    conn = psycopg2.connect(dsn)
    conn.autocommit = True
    conn.cursor().execute("VACUUM ANALYZE")
    conn.close()
    planted.keys = tuple(sorted({t.key for t in templates}))
    planted.queues = tuple(dict.fromkeys(kind.queue for kind in kinds))
    client.close()
    return db_url, planted


def _plant_lost_and_history(
    rows: _Rows, gen: _Generator, n: int, cur: psycopg2.extensions.cursor
) -> None:
    """Rows still to run but untouched for days with no message ("lost"), then finished history
    rows until the task table holds N rows, copied a chunk at a time."""
    lost = max(1, n // 1000)
    for row_id, celery_id in zip(*[iter(uuids(2 * lost))] * 2, strict=True):
        rows.task(row_id, "pending", gen.rng.choice(gen.old)[0], celery_id)
    gen.planted.lost_rows = lost
    history = max(0, n - rows.task_count)
    for start in range(0, history, CHUNK):
        size = min(CHUNK, history - start)
        for row_id, celery_id in zip(*[iter(uuids(2 * size))] * 2, strict=True):
            rows.task(row_id, "done", gen.rng.choice(gen.old)[0], celery_id)
        rows.copy(cur)
