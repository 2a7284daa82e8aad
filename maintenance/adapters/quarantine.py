"""Move messages out of Celery's Redis structures into a quarantine, atomically, and back.

Queue lists: one `LREM` per orphan costs O(list length) each (hours at a million messages). We
instead replace each orphan in place with a tombstone, by a Lua script that finds the message
near the index where the scan saw it, checks it is that very message (delivery tag and task id),
copies it to the quarantine and `LSET`s the tombstone, all in one atomic step. One `LREM` of the
tombstone per list then compacts the list. Producers push at the head and consumers pop the tail,
so a message only drifts toward the tail by the number of pushes since the scan: the script
tracks that drift and searches a small window around it, seeking from the nearer end.

The tombstone is a valid Celery message for a task the queue's workers know, with an `expires`
in the past, so a worker that pops one before the compaction discards it as expired, no error.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import orjson
import redis

from maintenance.adapters.redis_layout import BrokerLayout, OwnKeys
from maintenance.adapters.redis_reader import broker_errors
from maintenance.core.models import Finding

_LIST_SCRIPT = """
local key, qhash, qindex = KEYS[1], KEYS[2], KEYS[3]
local tomb, now = ARGV[1], tonumber(ARGV[2])
local window, max_windows, drift = tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5])
local len = redis.call('LLEN', key)
local function at(pos) if pos > len / 2 then return pos - len end return pos end
local function hit(v, tag, tid)
  return string.find(v, tag, 1, true) ~= nil and string.find(v, tid, 1, true) ~= nil
end
local function locate(idx, tag, tid)
  local guess = idx + drift
  if guess >= 0 and guess < len then
    local v = redis.call('LINDEX', key, at(guess))
    if v and hit(v, tag, tid) then return guess, v end
  end
  local lo = math.max(0, guess - math.floor(window / 4))
  for _ = 1, max_windows do
    if lo >= len then break end
    local hi = math.min(len - 1, lo + window - 1)
    local items
    if lo > len / 2 then items = redis.call('LRANGE', key, lo - len, hi - len)
    else items = redis.call('LRANGE', key, lo, hi) end
    for i, v in ipairs(items) do
      if hit(v, tag, tid) then return lo + i - 1, v end
    end
    lo = hi + 1
  end
  return nil, nil
end
local out = {}
for i = 6, #ARGV, 5 do
  local idx, tag, tid, field, meta = tonumber(ARGV[i]), ARGV[i+1], ARGV[i+2], ARGV[i+3], ARGV[i+4]
  local pos, raw = locate(idx, tag, tid)
  if pos then
    redis.call('LSET', key, at(pos), tomb)
    redis.call('HSET', qhash, field, '{"meta":' .. meta .. ',"raw":' .. cjson.encode(raw) .. '}')
    redis.call('ZADD', qindex, now, field)
    drift = pos - idx
    out[#out + 1] = 1
  else
    out[#out + 1] = 0
  end
end
table.insert(out, 1, drift)
return out
"""

_UNACKED_SCRIPT = """
local unacked, index, qhash, qindex = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local now = tonumber(ARGV[1])
local out = {}
for i = 2, #ARGV, 3 do
  local tag, field, meta = ARGV[i], ARGV[i+1], ARGV[i+2]
  local raw = redis.call('HGET', unacked, tag)
  if raw then
    redis.call('HSET', qhash, field, '{"meta":' .. meta .. ',"raw":' .. cjson.encode(raw) .. '}')
    redis.call('ZADD', qindex, now, field)
    redis.call('HDEL', unacked, tag)
    redis.call('ZREM', index, tag)
    out[#out + 1] = 1
  else
    out[#out + 1] = 0
  end
end
return out
"""

TARGET_CALL_S = 0.004  # keep each script call well under the 10 ms budget for other clients


@dataclass(frozen=True)
class QuarantineEntry:
    field: str
    task_id: str
    meta: dict[str, Any]
    raw: bytes


def quarantine_field(finding: Finding) -> str:
    return f"{finding.task_id}:{finding.location.delivery_tag}"


def tombstone_for(task_name: str, queue: str, run_id: str) -> bytes:
    """A Celery protocol-2 message that any worker of the queue discards as already expired."""
    tomb_id = f"task-maintenance-tombstone-{run_id}"
    body = orjson.dumps([[], {}, {"callbacks": None, "errbacks": None, "chain": None,
                                  "chord": None}])
    import base64

    message = {
        "body": base64.b64encode(body).decode(),
        "content-encoding": "utf-8",
        "content-type": "application/json",
        "headers": {"lang": "py", "task": task_name, "id": tomb_id, "shadow": None,
                    "eta": None, "expires": "2000-01-01T00:00:00+00:00", "group": None,
                    "group_index": None, "retries": 0, "timelimit": [None, None],
                    "root_id": tomb_id, "parent_id": None, "argsrepr": "()",
                    "kwargsrepr": "{}", "origin": "task-maintenance", "ignore_result": True},
        "properties": {"correlation_id": tomb_id, "reply_to": "", "delivery_mode": 2,
                       "delivery_info": {"exchange": "", "routing_key": queue}, "priority": 0,
                       "body_encoding": "base64", "delivery_tag": tomb_id},
    }
    return orjson.dumps(message)


class Quarantine:
    def __init__(self, client: redis.Redis, layout: BrokerLayout, keys: OwnKeys):
        self.client = client
        self.layout = layout
        self.keys = keys
        self._list_script = client.register_script(_LIST_SCRIPT)
        self._unacked_script = client.register_script(_UNACKED_SCRIPT)

    # -- queue lists ------------------------------------------------------------------------
    def take_from_list(self, key: str, findings: Sequence[Finding], tombstone: bytes,
                       meta_of: Any) -> Iterator[tuple[list[Finding], list[Finding]]]:
        """Tombstone and quarantine `findings` of one list, in index order, in short script calls.

        Yields (taken, missing) per call, so the caller can record each step as it happens.
        """
        if any(not f.location.delivery_tag for f in findings):
            raise ValueError("every message to quarantine needs its delivery tag")
        ordered = sorted(findings, key=lambda f: f.location.index)
        drift, batch, start = 0, 16, 0
        while start < len(ordered):
            chunk = ordered[start:start + batch]
            argv: list[Any] = [tombstone, time.time(), 256, 64, drift]
            for f in chunk:
                argv += [f.location.index, f.location.delivery_tag, f.task_id,
                         quarantine_field(f), orjson.dumps(meta_of(f))]
            began = time.perf_counter()
            with broker_errors(f"quarantining messages of {key!r}"):
                reply = self._list_script(keys=[key, self.keys.quarantine,
                                                self.keys.quarantine_index], args=argv)
            elapsed = time.perf_counter() - began
            drift = int(reply[0])
            taken = [f for f, ok in zip(chunk, reply[1:], strict=True) if ok]
            missing = [f for f, ok in zip(chunk, reply[1:], strict=True) if not ok]
            yield taken, missing
            start += len(chunk)
            batch = _next_batch(batch, elapsed)

    def compact(self, key: str, tombstone: bytes) -> int:
        """The one O(n) command per list per run: drop every tombstone at once."""
        with broker_errors(f"compacting {key!r}"):
            return int(self.client.lrem(key, 0, tombstone))

    # -- unacked --------------------------------------------------------------------------------
    def take_unacked(self, findings: Sequence[Finding], meta_of: Any,
                     mutex_wait_s: float = 10.0) -> tuple[list[Finding], list[Finding]]:
        """Under kombu's own `unacked_mutex`, so its restore of visible messages cannot race us."""
        taken: list[Finding] = []
        missing: list[Finding] = []
        with broker_errors("quarantining unacked messages"):
            lock = self.client.lock(self.layout.unacked_mutex, timeout=300,
                                    blocking_timeout=mutex_wait_s)
            if not lock.acquire():
                return [], list(findings)
            try:
                for start in range(0, len(findings), 100):
                    chunk = findings[start:start + 100]
                    argv: list[Any] = [time.time()]
                    for f in chunk:
                        argv += [f.location.delivery_tag, quarantine_field(f),
                                 orjson.dumps(meta_of(f))]
                    reply = self._unacked_script(
                        keys=[self.layout.unacked, self.layout.unacked_index,
                              self.keys.quarantine, self.keys.quarantine_index], args=argv)
                    for f, ok in zip(chunk, reply, strict=True):
                        (taken if ok else missing).append(f)
            finally:
                lock.release()
        return taken, missing

    # -- restore and retention ------------------------------------------------------------------
    def entries(self, task_ids: Iterable[str] | None = None) -> Iterator[QuarantineEntry]:
        """Every entry (HSCAN in chunks), or those of the given task ids."""
        wanted = None if task_ids is None else set(task_ids)
        with broker_errors("reading the quarantine"):
            for field, value in self.client.hscan_iter(self.keys.quarantine, count=500):
                name = field.decode()
                task_id = name.rsplit(":", 1)[0]
                if wanted is not None and task_id not in wanted:
                    continue
                doc = orjson.loads(value)
                yield QuarantineEntry(name, task_id, doc["meta"], doc["raw"].encode())

    def put_back(self, entry: QuarantineEntry) -> str:
        """Return the message, intact, to the tail of its list (next in line), then forget it."""
        meta = entry.meta
        raw = entry.raw
        if meta.get("origin") == "unacked":
            payload, _exchange, routing_key = orjson.loads(raw)[:3]
            priority = int((payload.get("properties") or {}).get("priority") or 0)
            key = self.layout.queue_key(routing_key or meta.get("queue") or "celery",
                                        self.layout.band(priority))
            raw = orjson.dumps(payload)
        else:
            key = meta["key"]
        with broker_errors("restoring a message"):
            pipe = self.client.pipeline(transaction=True)
            pipe.rpush(key, raw)
            pipe.hdel(self.keys.quarantine, entry.field)
            pipe.zrem(self.keys.quarantine_index, entry.field)
            pipe.execute()
        return key

    def purge_expired(self, retention_s: float, now: float | None = None) -> int:
        cutoff = (now or time.time()) - retention_s
        removed = 0
        with broker_errors("purging the quarantine"):
            while True:
                fields = self.client.zrangebyscore(self.keys.quarantine_index, "-inf", cutoff,
                                                   start=0, num=500)
                if not fields:
                    return removed
                pipe = self.client.pipeline(transaction=True)
                pipe.hdel(self.keys.quarantine, *fields)
                pipe.zrem(self.keys.quarantine_index, *fields)
                pipe.execute()
                removed += len(fields)

    def size(self) -> int:
        with broker_errors("reading the quarantine"):
            return int(self.client.hlen(self.keys.quarantine))


def _next_batch(batch: int, elapsed_s: float) -> int:
    """Grow or shrink the next script call so it stays near TARGET_CALL_S."""
    if elapsed_s <= 0:
        return min(batch * 2, 512)
    scaled = int(batch * TARGET_CALL_S / elapsed_s)
    return max(1, min(512, scaled, batch * 2))


def new_run_id() -> str:
    return str(uuid.uuid4())
