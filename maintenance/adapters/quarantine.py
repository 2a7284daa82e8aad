"""Move messages out of Celery's Redis structures into a quarantine, atomically, and back.

Queue lists: one `LREM` per orphan costs O(list length) each (hours at a million messages). We
instead replace each orphan in place with a tombstone, by a Lua script that finds the message
near the index where the scan saw it, checks it is that very message (delivery tag and task id),
copies it to the quarantine and `LSET`s the tombstone, all in one atomic step. A compaction in
bounded pieces then removes the tombstones near either end of the list (see below).

Finding a message again, while producers and workers use the list: producers LPUSH at the head,
workers pop the tail and kombu restores to the tail, so a message's index only grows, by the
pushes since the scan read it, and the list's order never changes. The scan reads head first, so
of two findings the one with the smaller index was read no later and has drifted at least as
far. Orphans are therefore taken tail first: the drift measured on the last one found is a lower
bound for the next, which is searched forward from there, and never past the last tombstone
placed (it is newer, so nearer the head); reaching that tombstone means it is gone, reaching the
end of the list means a worker took it. Each script call stops at a time budget; a search cut
short resumes where it stopped (positions only grow, so nothing behind it needs a second look).
Reads are shared: one `LRANGE` covers the next few orphans, so the only other seek is the `LSET`.
A search that runs past the span read extends it (the span stays valid for the orphans after),
and a call's first read reaches as far past its lower bound as the previous call's first orphan
was found (the pushes between two calls): re-reads, each a seek, were half the script's time.

The tombstone is a valid Celery message for a task the queue's workers know, with an `expires`
in the past, so a worker that pops one before the compaction discards it as expired, no error.

Compaction in bounded pieces: no whole-list command. `LREM` scans from an end, and scanning
costs ~130-200 ns per 1 KB element at a million (a cache miss each; measured with LPOS and LREM
that match nothing), removing ~2.5 us per tombstone: one `LREM key 0` blocks Redis 0.3 s quiet
and 1.1-1.4 s on a busy machine at 1M, ten times that at 10M. So each piece is a script that
counts this run's tombstones within `depth` elements of one end (`LPOS ... COUNT k MAXLEN depth`)
and removes exactly those (`LREM key -c` from the tail, `c` from the head): both commands stop
within `depth`, whatever the list's length, and the script is atomic, so a worker's pop between
them cannot send `LREM` deeper. Pieces repeat at each end until one finds none. Tombstones
deeper than that at both ends stay for workers (a worker discards one as expired, no error) and
drift toward the tail, where the next run's compaction takes them; they are counted as left.
`compact_whole` (`cleanup --compact`) is the one `LREM key 0` instead, for an operator who
accepts its stall to leave no tombstone.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import orjson
import redis

from maintenance.adapters.redis_layout import BrokerLayout, OwnKeys
from maintenance.adapters.redis_reader import broker_errors
from maintenance.core.envelope import TOMBSTONE_ID_PREFIX
from maintenance.core.models import Finding

_LIST_SCRIPT = """
local key, qhash, qindex = KEYS[1], KEYS[2], KEYS[3]
local tomb, now, budget = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])
local drift, resume, slack = tonumber(ARGV[4]), tonumber(ARGV[5]), tonumber(ARGV[6])
if redis.replicate_commands then redis.replicate_commands() end  -- TIME before writes, Redis < 5
local function clock() local t = redis.call('TIME') return t[1] * 1000000 + t[2] end
local deadline = clock() + budget
local len = redis.call('LLEN', key)
local limit = len  -- the message sought is before this position (the last one taken is newer)
local lo, hi, items = 0, -1, {}  -- the elements read last: positions lo..hi
local function at(pos) if pos > len / 2 then return pos - len end return pos end
local function read(a, b)
  items = redis.call('LRANGE', key, at(a), at(b))
  lo, hi = a, a + #items - 1
end
local function read_on(b)
  -- the search went past the read span: extend it, keeping what is read for the next orphans
  local more = redis.call('LRANGE', key, at(hi + 1), at(b))
  for k = 1, #more do items[#items + 1] = more[k] end
  hi = hi + #more
end
local function hit(v, tag, tid)
  if string.find(v, tag, 1, true) == nil then return false end
  if string.find(v, tid, 1, true) ~= nil then return true end
  -- Rare: an id that JSON escapes (quotes, backslashes, non-ASCII) is not in the raw text as
  -- the scan decoded it. Decode this one candidate and compare the fields themselves.
  local ok, msg = pcall(cjson.decode, v)
  if not ok or type(msg) ~= 'table' or type(msg.properties) ~= 'table' then return false end
  if msg.properties.delivery_tag ~= tag then return false end
  local headers = msg.headers
  if type(headers) == 'table' and headers.task ~= nil then return headers.id == tid end
  return true  -- protocol 1 (the id is in the body): the delivery tag alone names the message
end
local function prefetch_from(i, pos)
  -- one read also covers the next orphans' lower bounds: copying an element costs about as
  -- much as seeking past a thousand, and a read of 256 stays far below the call's budget
  local reach = math.min(256, math.max(8, math.floor(math.min(pos, len - pos) / 1000)))
  local a = pos
  for j = i + 5, math.min(#ARGV, i + 5 * 64), 5 do
    local lb = tonumber(ARGV[j]) + drift
    if lb < pos - reach then break end
    a = math.min(a, math.max(0, lb))
  end
  return a
end
local out = {0, -1, 0}
local i, reads = 7, 0
while i <= #ARGV do
  local idx, tag, tid = tonumber(ARGV[i]), ARGV[i+1], ARGV[i+2]
  local pos = math.max(0, idx + drift)
  local first = (i == 7)
  if first and resume > pos then pos = resume end
  local start = pos
  -- the first orphan of a call drifted further by the pushes since the last call: read past
  -- its lower bound by as far as the last call's first orphan was found past its own
  local window, outcome = first and math.max(8, slack) or 8, nil
  while outcome == nil do
    if pos >= limit then
      outcome = (limit == len) and 'worker' or 'gone'
    elseif pos < lo or pos > hi then
      if reads > 0 and clock() > deadline then
        outcome = 'later'
      elseif pos < lo or pos > hi + 1 then
        read(prefetch_from(i, pos), math.min(limit - 1, pos + window))
      else
        window = math.min(window * 2, 256)
        read_on(math.min(limit - 1, pos + window))
      end
      reads = reads + 1
    else
      local v = items[pos - lo + 1]
      if v == tomb then outcome = 'gone'
      elseif hit(v, tag, tid) then outcome = v
      else pos = pos + 1 end
    end
  end
  if outcome == 'later' then
    out[2] = pos
    break
  elseif outcome == 'gone' then
    out[#out + 1] = 0
  elseif outcome == 'worker' then
    -- taken from the tail: every older message has left, so the rest drifted this far at least
    drift = math.max(drift, len - 1 - idx)
    out[#out + 1] = 0
  else
    redis.call('LSET', key, at(pos), tomb)
    redis.call('HSET', qhash, ARGV[i+3], ARGV[i+4] .. '\\n' .. outcome)
    redis.call('ZADD', qindex, now, ARGV[i+3])
    drift, limit = pos - idx, pos
    if first then out[3] = pos - start end
    out[#out + 1] = 1
  end
  i = i + 5
  if i <= #ARGV and clock() > deadline then break end
end
out[1] = drift
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
    redis.call('HSET', qhash, field, meta .. '\\n' .. raw)
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

# Each script call stops after this (then at most one more read and LSET: ~1-5 ms at 1M). A
# call's fixed costs (LLEN, its first read, the reply, a round trip, the bookkeeping handed to
# the helper thread) were most of the time at 4 ms: ~7 orphans a call on a busy machine.
CALL_BUDGET_S = 0.02
MAX_BATCH = 1024

_COMPACT_SCRIPT = """
local key, tomb = KEYS[1], ARGV[1]
local count, depth, rank = tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
local found = redis.call('LPOS', key, tomb, 'RANK', rank, 'COUNT', count, 'MAXLEN', depth)
if #found == 0 then return 0 end
return redis.call('LREM', key, rank * #found, tomb)
"""
# Elements of a list one compaction piece may scan from an end, and tombstones it may remove:
# LPOS and LREM each scan up to COMPACT_DEPTH (~130-200 ns a 1 KB element at 1M, more on a busy
# machine), LREM removes up to COMPACT_PIECE (~2.5 us each): ~15-25 ms a piece, at any length.
COMPACT_DEPTH = 50_000
COMPACT_PIECE = 2_000


@dataclass(frozen=True)
class Compaction:
    """Tombstones `LREM` said it removed, and the pieces (script calls) it took."""

    removed: int = 0
    pieces: int = 0


@dataclass(frozen=True)
class QuarantineEntry:
    field: str
    task_id: str
    meta: dict[str, Any]
    raw: bytes


def quarantine_field(finding: Finding) -> str:
    return f"{finding.task_id}:{finding.location.delivery_tag}"


def tombstone_for(task_name: str, queue: str, run_id: str) -> bytes:
    """A Celery protocol-2 message that any worker of the queue discards as already expired.

    As small as a worker accepts: the one compaction `LREM` costs a memmove and a smaller
    allocation per tombstone, so its time grows with the tombstone's size (0.26 s at 457 bytes,
    0.31 s at 1.2 KB, 0.11 s for an 8-byte string no worker could read; 100,000 tombstones in
    a million messages, quiet machine).
    """
    tomb_id = f"{TOMBSTONE_ID_PREFIX}{run_id}"
    message = {
        "body": "W1tdLCB7fSwge31d",  # base64 of [[], {}, {}]: no args, no kwargs, no embed
        "content-encoding": "utf-8",
        "content-type": "application/json",
        "headers": {
            "task": task_name,
            "id": tomb_id,
            "expires": "2000-01-01T00:00:00+00:00",
            "ignore_result": True,
        },
        "properties": {
            "delivery_tag": tomb_id,
            "body_encoding": "base64",
            "priority": 0,
            "delivery_info": {"exchange": "", "routing_key": queue},
        },
    }
    return orjson.dumps(message)


class Quarantine:
    def __init__(
        self,
        client: redis.Redis,
        layout: BrokerLayout,
        keys: OwnKeys,
        clock: Callable[[], float] = time.time,
    ):
        self.client = client
        self.clock = clock
        self.layout = layout
        self.keys = keys
        self._list_script = client.register_script(_LIST_SCRIPT)
        self._unacked_script = client.register_script(_UNACKED_SCRIPT)
        self._compact_script = client.register_script(_COMPACT_SCRIPT)

    # -- queue lists ------------------------------------------------------------------------
    def take_from_list(
        self, key: str, findings: Sequence[Finding], tombstone: bytes, meta_of: Any
    ) -> Iterator[tuple[list[Finding], list[Finding]]]:
        """Tombstone and quarantine `findings` of one list, tail first, in short script calls.

        A message the scan read twice (pushes moved it into the next chunk) is taken once.
        Yields (taken, missing) per call, so the caller can record each step as it happens.
        """
        ordered = _tail_first(findings)
        drift, resume, slack, batch, start = 0, -1, 0, 64, 0
        while start < len(ordered):
            chunk = ordered[start : start + batch]
            budget_us = int(CALL_BUDGET_S * 1e6)
            argv: list[Any] = [tombstone, self.clock(), budget_us, drift, resume, slack]
            for f in chunk:
                argv += [
                    max(f.location.index, 0),
                    f.location.delivery_tag,
                    f.task_id,
                    quarantine_field(f),
                    orjson.dumps(meta_of(f)),
                ]
            with broker_errors(f"quarantining messages of {key!r}"):
                reply = self._list_script(
                    keys=[key, self.keys.quarantine, self.keys.quarantine_index], args=argv
                )
            drift, resume, done = int(reply[0]), int(reply[1]), reply[3:]
            slack = min(256, 2 * int(reply[2]))  # pushes since grow with the time between calls
            taken = [f for f, ok in zip(chunk, done, strict=False) if ok]
            missing = [f for f, ok in zip(chunk, done, strict=False) if not ok]
            yield taken, missing
            start += len(done)
            batch = min(
                MAX_BATCH,
                batch * 2 if len(done) == len(chunk) else max(16, len(done) + len(done) // 4),
            )

    def compact(
        self, key: str, tombstone: bytes, depth: int | None = None, piece: int | None = None
    ) -> Compaction:
        """Remove the tombstones within `depth` elements of either end, `piece` at a time.

        Each piece is one short atomic script; what lies deeper at both ends stays (the caller
        counts it as left). Returns what `LREM` said it removed.
        """
        depth = COMPACT_DEPTH if depth is None else depth
        piece = COMPACT_PIECE if piece is None else piece
        removed = pieces = 0
        with broker_errors(f"compacting {key!r}"):
            for rank in (-1, 1):  # the tail first: workers pop there next
                while True:
                    got = int(
                        self._compact_script(keys=[key], args=[tombstone, piece, depth, rank])
                    )
                    removed, pieces = removed + got, pieces + 1
                    if got == 0:
                        break
        return Compaction(removed, pieces)

    def compact_whole(self, key: str, tombstone: bytes) -> Compaction:
        """Opt-in: the one whole-list `LREM key 0`, every tombstone at once. It blocks Redis
        for the whole scan: 0.3 s quiet, 1.1-1.4 s on a busy machine at 1M messages."""
        with broker_errors(f"compacting {key!r}"):
            return Compaction(int(self.client.lrem(key, 0, tombstone.decode())), 1)

    # -- unacked --------------------------------------------------------------------------------
    def take_unacked(
        self, findings: Sequence[Finding], meta_of: Any, mutex_wait_s: float = 10.0
    ) -> tuple[list[Finding], list[Finding]]:
        """Under kombu's own `unacked_mutex`, so its restore of visible messages cannot race us."""
        taken: list[Finding] = []
        missing: list[Finding] = []
        with broker_errors("quarantining unacked messages"):
            lock = self.client.lock(
                self.layout.unacked_mutex, timeout=300, blocking_timeout=mutex_wait_s
            )
            if not lock.acquire():
                return [], list(findings)
            try:
                for start in range(0, len(findings), 100):
                    chunk = findings[start : start + 100]
                    argv: list[Any] = [self.clock()]
                    for f in chunk:
                        argv += [
                            f.location.delivery_tag,
                            quarantine_field(f),
                            orjson.dumps(meta_of(f)),
                        ]
                    reply = self._unacked_script(
                        keys=[
                            self.layout.unacked,
                            self.layout.unacked_index,
                            self.keys.quarantine,
                            self.keys.quarantine_index,
                        ],
                        args=argv,
                    )
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
                meta, raw = split_entry(value)
                yield QuarantineEntry(name, task_id, meta, raw)

    def entries_of_runs(self, run_ids: set[str]) -> Iterator[QuarantineEntry]:
        """The entries the given runs took (HSCAN of the whole quarantine, in chunks)."""
        return (e for e in self.entries() if e.meta.get("run_id") in run_ids)

    def put_back(self, entry: QuarantineEntry) -> str:
        """Return the message, intact, to the tail of its list (next in line), then forget it."""
        meta = entry.meta
        raw = entry.raw
        if meta.get("origin") == "unacked":
            payload, _exchange, routing_key = orjson.loads(raw)[:3]
            priority = int((payload.get("properties") or {}).get("priority") or 0)
            key = self.layout.queue_key(
                routing_key or meta.get("queue") or "celery", self.layout.band(priority)
            )
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
        cutoff = (self.clock() if now is None else now) - retention_s
        removed = 0
        with broker_errors("purging the quarantine"):
            while True:
                fields = self.client.zrangebyscore(
                    self.keys.quarantine_index, "-inf", cutoff, start=0, num=500
                )
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


def split_entry(value: bytes) -> tuple[dict[str, Any], bytes]:
    """A stored entry is the meta as JSON, a newline, then the message exactly as it was taken
    (JSON never holds a raw newline, so the first one is the separator). Escaping the message
    into one JSON document instead cost a tenth of the script's time at 100,000 orphans."""
    if value.startswith(b'{"meta":'):  # the first format: {"meta": ..., "raw": "<message>"}
        doc = orjson.loads(value)
        return doc["meta"], doc["raw"].encode()
    meta, _, raw = value.partition(b"\n")
    return orjson.loads(meta), raw


def _tail_first(findings: Sequence[Finding]) -> list[Finding]:
    """By list index, highest first; of a message read twice, the later (higher) reading."""
    out: list[Finding] = []
    seen: set[tuple[str, str | None]] = set()
    for f in sorted(findings, key=lambda f: f.location.index, reverse=True):
        ident = (f.location.delivery_tag, f.task_id)
        if ident not in seen:
            seen.add(ident)
            out.append(f)
    return out
