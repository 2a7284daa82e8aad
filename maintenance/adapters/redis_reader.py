"""Read Celery's state from Redis in bounded, pipelined chunks: never KEYS, never a whole list."""

from __future__ import annotations

import copy
import ssl
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, TypeVar, cast

import orjson
import redis
from kombu.exceptions import OperationalError as KombuOperationalError
from redis.commands.core import Script

from maintenance.adapters.redis_layout import BrokerLayout, ResultLayout
from maintenance.adapters.sentinel import follow_master
from maintenance.core.models import ResultMeta
from maintenance.errors import BrokerUnavailable

T = TypeVar("T")
SCRIPT_KEYS = 250  # result keys per script call
KeepResult = Callable[[float | None, int], bool]  # (date_done, ttl) -> build its ResultMeta?
_VALUES_AND_TTLS_LUA = """
local out = {}
for i, key in ipairs(KEYS) do
  out[2 * i - 1] = redis.call('GET', key)
  out[2 * i] = redis.call('TTL', key)
end
return out
"""
REDIS_ERRORS = (redis.RedisError, KombuOperationalError, OSError)

# Bytes one LRANGE of a queue list should copy (see RedisReader.iter_list), and the size of a
# list's first read, before the size of its messages is known.
LIST_CHUNK_BYTES = 1 << 20
FIRST_LIST_CHUNK = 50
LIST_CHUNK_MIN = 10


@contextmanager
def broker_errors(what: str) -> Iterator[None]:
    """Translate driver errors at the boundary: a failed read must never look like an empty one."""
    try:
        yield
    except REDIS_ERRORS as exc:
        raise BrokerUnavailable(f"Redis failed while {what}: {describe_error(exc)}") from None


def describe_error(exc: BaseException) -> str:
    """The driver's message; for a TLS failure, which certificate is the problem.

    redis-py reports every TLS failure as a ConnectionError whose text is the OpenSSL error
    ("Error 1 connecting to h:p. [SSL: CERTIFICATE_VERIFY_FAILED] certificate verify failed:
    ... (_ssl.c:1006)."), and a server that wants a client certificate often just as "EOF
    occurred in violation of protocol"; the ssl exception underneath says what happened.
    """
    tls = _ssl_error(exc)
    if tls is None:
        return str(exc)
    if isinstance(tls, ssl.SSLCertVerificationError):
        return (
            f"TLS certificate verify failed: {tls.verify_message} (the server's certificate, "
            "checked against ssl_ca_certs and the host name in the URL)"
        )
    reason = str(tls.reason or "")
    if "CERTIFICATE_REQUIRED" in reason:
        return "TLS handshake failed: the server requires a client certificate (ssl_certfile)"
    if "UNKNOWN_CA" in reason or "BAD_CERTIFICATE" in reason or "CERTIFICATE_UNKNOWN" in reason:
        return f"TLS handshake failed: the server rejected our client certificate ({reason})"
    if isinstance(tls, ssl.SSLEOFError):
        return (
            "TLS connection closed by the server during the handshake (does it require a client "
            f"certificate? ssl_certfile, ssl_keyfile): {exc}"
        )
    return f"TLS failed: {tls}"


def _ssl_error(exc: BaseException | None) -> ssl.SSLError | None:
    """The ssl exception in the chain of causes kombu and redis-py put on top of it."""
    for _ in range(10):
        if exc is None or isinstance(exc, ssl.SSLError):
            return exc
        exc = exc.__cause__ or exc.__context__
    return None


def call_redis(what: str, fn: Callable[[], T]) -> T:
    with broker_errors(what):
        return fn()


@dataclass(frozen=True)
class RawUnacked:
    delivery_tag: str
    raw: bytes
    taken_at: float | None


class RedisReader:
    """Chunked readers over the broker's lists and hash, and the result backend's keys."""

    def __init__(
        self,
        broker: redis.Redis,
        layout: BrokerLayout,
        results: redis.Redis,
        result_layout: ResultLayout,
        *,
        chunk_size: int = 1000,
        depth: int = 10,
    ):
        self.broker = broker
        self.layout = layout
        self.results = results
        self.result_layout = result_layout
        self.chunk_size = chunk_size
        self.depth = depth
        # SCAN MATCH patterns of the result keys this reader reads; () means all of them.
        self.result_match: tuple[str, ...] = ()
        self.result_scan_count = 0  # SCAN COUNT of the result keys; 0: chunk_size
        self._meta_script: Script | None = results.register_script(_VALUES_AND_TTLS_LUA)

    def with_result_match(self, patterns: Sequence[str], scan_count: int = 0) -> RedisReader:
        """The same reader (same connections), reading only the result keys `patterns` match.
        `scan_count`: SCAN's COUNT (default `chunk_size`); a shard that matches a small share
        of the keys asks more per call, else its round trips cost more than its reads."""
        shard = copy.copy(self)
        shard.result_match = tuple(patterns)
        shard.result_scan_count = scan_count
        return shard

    def begin_scan(self) -> None:
        """A scan is one unit of work: behind Sentinel, all of it reads the master the sentinels
        name now, and a failover during it fails it (adapters/sentinel.py)."""
        follow_master(self.broker)

    def list_lengths(self, keys: list[str]) -> dict[str, int]:
        def run() -> dict[str, int]:
            pipe = self.broker.pipeline(transaction=False)
            for key in keys:
                pipe.llen(key)
            return dict(zip(keys, pipe.execute(), strict=True))

        return call_redis("reading queue lengths", run)

    def iter_list(self, key: str) -> Iterator[tuple[int, list[bytes]]]:
        """Yield (start index, elements) chunks, head to tail.

        Producers LPUSH at the head and consumers pop the tail, so reading head-first can see a
        message twice (pushes shift it right) but never misses one that stays in the list.
        An LRANGE costs Redis time in proportion to the bytes it copies, so each covers about
        LIST_CHUNK_BYTES (at most `chunk_size` elements): the first read is small, and later
        ones are sized by the messages read so far. A thousand 10 KB messages in one LRANGE
        blocked Redis for 0.6 s on a loaded machine; a thousand 1 KB ones take about 1 ms.
        """
        start, size, read_bytes, read_count = 0, min(self.chunk_size, FIRST_LIST_CHUNK), 0, 0
        while True:

            def run(start: int = start, size: int = size) -> list[list[bytes]]:
                pipe = self.broker.pipeline(transaction=False)
                for i in range(self.depth):
                    offset = start + i * size
                    pipe.lrange(key, offset, offset + size - 1)
                return pipe.execute()

            chunks = call_redis(f"reading list {key!r}", run)
            for i, chunk in enumerate(chunks):
                if chunk:
                    read_bytes += sum(map(len, chunk))
                    read_count += len(chunk)
                    yield start + i * size, chunk
                if len(chunk) < size:
                    return
            start += self.depth * size
            size = list_chunk_size(read_bytes / max(read_count, 1), self.chunk_size)

    def iter_tail(self, key: str, count: int) -> Iterator[tuple[int, list[bytes]]]:
        """The last `count` elements (the next a worker takes), in `chunk_size` reads, head to
        tail: a bounded sample of a list however long it is."""
        length = call_redis(f"reading the length of {key!r}", lambda: int(self.broker.llen(key)))
        start = max(0, length - count)
        while start < length:
            stop = min(length, start + self.chunk_size) - 1

            def run(start: int = start, stop: int = stop) -> list[bytes]:
                # our broker client never decodes responses: list elements are bytes
                return cast("list[bytes]", self.broker.lrange(key, start, stop))

            chunk = call_redis(f"reading list {key!r}", run)
            if not chunk:
                return
            yield start, chunk
            start += len(chunk)

    def iter_unacked(self) -> Iterator[list[RawUnacked]]:
        """HSCAN the unacked hash, with each tag's unacked_index score (when a worker took it)."""
        cursor: int = 0
        while True:

            def scan(cursor: int = cursor) -> tuple[int, dict[Any, Any]]:
                return self.broker.hscan(
                    self.layout.unacked,
                    cursor,  # type: ignore[return-value]
                    count=self.chunk_size,
                )

            cursor, entries = call_redis("scanning the unacked hash", scan)
            if entries:
                tags = list(entries)

                def scores(tags: list[Any] = tags) -> list[float | None]:
                    return self.broker.zmscore(self.layout.unacked_index, tags)

                taken = call_redis("reading unacked_index", scores)
                yield [
                    RawUnacked(tag.decode(), entries[tag], score)
                    for tag, score in zip(tags, taken, strict=True)
                ]
            if cursor == 0:
                return

    def iter_results(self) -> Iterator[list[ResultMeta]]:
        """SCAN result keys in chunks, with their value's status, date_done and their TTL."""
        for _, metas in self.iter_result_chunks():
            yield metas

    def iter_result_chunks(
        self,
        keep: KeepResult | None = None,
        match: Sequence[str] | None = None,
    ) -> Iterator[tuple[int, list[ResultMeta]]]:
        """(result keys read, their metas) per SCAN batch. With `keep`, a meta is built only for
        the keys it accepts by (date_done, ttl): a million ResultMeta objects that are judged
        fine at once cost the scan about a second. `match`: SCAN MATCH patterns, one SCAN each
        (default `result_match`, else every result key): a fan-out part reads its shard only."""
        for pattern in match or self.result_match or (self.result_layout.match,):
            yield from self._result_chunks(pattern, keep)

    def _result_chunks(
        self, match: str, keep: KeepResult | None
    ) -> Iterator[tuple[int, list[ResultMeta]]]:
        literal = _literal(match)
        if literal is not None:  # one key: read it, rather than walk the keyspace for it
            exists = call_redis("reading a result key", lambda: self.results.exists(literal))
            if exists:
                yield call_redis("reading result keys", lambda: self._metas([literal], keep))
            return
        cursor: int = 0
        count = self.result_scan_count or self.chunk_size
        while True:

            def scan(cursor: int = cursor) -> tuple[int, list[Any]]:
                return self.results.scan(cursor, match=match, count=count)

            cursor, keys = call_redis("scanning result keys", scan)
            if keys:

                def metas(keys: list[Any] = keys) -> tuple[int, list[ResultMeta]]:
                    return self._metas(keys, keep)

                yield call_redis("reading result keys", metas)
            if cursor == 0:
                return

    def _metas(
        self,
        keys: list[bytes],
        keep: KeepResult | None,
    ) -> tuple[int, list[ResultMeta]]:
        replies = self._values_and_ttls(keys)
        task_id_of = self.result_layout.task_id_of
        metas = []
        read = 0
        for key, value, ttl in zip(keys, replies[::2], replies[1::2], strict=True):
            if value is None:  # expired between SCAN and GET
                continue
            read += 1
            doc = _result_doc(value)
            date_done = parse_timestamp(doc.get("date_done"))
            if keep is not None and not keep(date_done, int(ttl)):
                continue
            text_key = key.decode()
            metas.append(
                ResultMeta(
                    task_id=str(doc.get("task_id") or task_id_of(text_key)),
                    key=text_key,
                    status=str(doc.get("status") or "UNKNOWN"),
                    date_done=date_done,
                    ttl_s=int(ttl),
                )
            )
        return read, metas

    def _values_and_ttls(self, keys: list[bytes]) -> list[Any]:
        """[value, ttl, value, ttl, ...] for `keys`, by read-only script calls when Redis
        allows it.

        A GET and a TTL pipelined per key cost more in redis-py's command packing than Redis
        spends answering them; a script answers SCRIPT_KEYS of them per command. A script
        blocks Redis while it runs, about 2 µs a key, so it is kept to a few hundred keys: a
        thousand took up to 8 ms when Redis shared a busy CPU. Where scripting is refused
        (disabled or renamed EVALSHA), fall back to the pipeline.
        """
        if self._meta_script is not None:
            try:
                replies: list[Any] = []
                for start in range(0, len(keys), SCRIPT_KEYS):
                    replies.extend(self._meta_script(keys=keys[start : start + SCRIPT_KEYS]))
                return replies
            except redis.ResponseError as exc:
                if "WRONGTYPE" in str(exc):
                    raise
                self._meta_script = None
        pipe = self.results.pipeline(transaction=False)
        for key in keys:
            pipe.get(key)
            pipe.ttl(key)
        return pipe.execute()


def list_chunk_size(mean_bytes: float, most: int) -> int:
    """Elements per LRANGE for messages of `mean_bytes` on average: about LIST_CHUNK_BYTES,
    never more than `most`, never fewer than LIST_CHUNK_MIN."""
    return max(min(LIST_CHUNK_MIN, most), min(most, int(LIST_CHUNK_BYTES // max(mean_bytes, 1))))


def _literal(pattern: str) -> bytes | None:
    """The one key a glob pattern without wildcards matches (escapes removed); None for a
    pattern with any."""
    key, escaped = [], False
    for ch in pattern:
        if escaped:
            key.append(ch)
            escaped = False
        elif ch == "\\":
            escaped = True
        elif ch in "*?[":
            return None
        else:
            key.append(ch)
    return "".join(key).encode()


def _result_doc(value: bytes) -> dict[str, Any]:
    try:
        doc: Any = orjson.loads(value)
    except orjson.JSONDecodeError:
        return {}
    return doc if isinstance(doc, dict) else {}


def parse_timestamp(value: Any) -> float | None:
    """Celery writes `date_done` as ISO 8601, naive meaning UTC."""
    if not isinstance(value, str):
        return None
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.timestamp()
