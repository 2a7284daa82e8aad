"""The chunked Redis reader: every element exactly once, real unacked and result entries, errors."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta

import pytest
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from maintenance.adapters.redis_layout import BrokerLayout, ResultLayout
from maintenance.adapters.redis_reader import (
    FIRST_LIST_CHUNK,
    LIST_CHUNK_BYTES,
    LIST_CHUNK_MIN,
    RedisReader,
    list_chunk_size,
    parse_timestamp,
)
from maintenance.errors import BrokerUnavailable
from tests.conftest import producer_app
from tests.servers import free_port


def reader_for(
    client: redis.Redis, chunk_size: int = 100, depth: int = 3, prefix: str = ""
) -> RedisReader:
    return RedisReader(
        client,
        BrokerLayout(global_keyprefix=prefix),
        client,
        ResultLayout(f"{prefix}celery-task-meta-"),
        chunk_size=chunk_size,
        depth=depth,
    )


@pytest.mark.parametrize("count", [0, 1, 99, 100, 101, 299, 300, 301, 1000])
def test_iter_list_reads_each_element_once(redis_client: redis.Redis, count: int) -> None:
    """Chunks and pipelines cover the list head to tail, with exact start indexes."""
    if count:
        redis_client.rpush("q", *(str(i).encode() for i in range(count)))
    seen: list[bytes] = []
    for start, chunk in reader_for(redis_client).iter_list("q"):
        assert start == len(seen)
        assert 0 < len(chunk) <= 100
        seen.extend(chunk)
    assert seen == [str(i).encode() for i in range(count)]


def test_iter_list_sizes_reads_by_bytes(redis_client: redis.Redis) -> None:
    """Big messages are read a few at a time (each LRANGE copies about LIST_CHUNK_BYTES, so
    none holds Redis long), still every element once, in order, with exact start indexes."""
    body = b"x" * 20_000
    count = 450
    redis_client.rpush("big", *(b"%d:" % i + body for i in range(count)))
    seen: list[bytes] = []
    sizes = []
    for start, chunk in reader_for(redis_client, chunk_size=1000, depth=2).iter_list("big"):
        assert start == len(seen)
        sizes.append(len(chunk))
        seen.extend(chunk)
    assert seen == [b"%d:" % i + body for i in range(count)]
    assert sizes[0] == FIRST_LIST_CHUNK  # before their size is known
    per_read = LIST_CHUNK_BYTES // (len(body) + 3)
    assert set(sizes[2:-1]) == {per_read}  # sized by the messages read
    assert sizes[-1] <= per_read


def test_list_chunk_size_bounds() -> None:
    assert list_chunk_size(1_200, 1000) == min(1000, LIST_CHUNK_BYTES // 1_200)
    assert list_chunk_size(100, 1000) == 1000  # small messages: the configured chunk
    assert list_chunk_size(50_000_000, 1000) == LIST_CHUNK_MIN  # never fewer
    assert list_chunk_size(50_000_000, 10) == 10  # nor more than configured


def test_list_lengths(redis_client: redis.Redis) -> None:
    """Lengths of several lists in one round trip; a missing list has length 0."""
    redis_client.rpush("a", b"1", b"2")
    assert reader_for(redis_client).list_lengths(["a", "missing"]) == {"a": 2, "missing": 0}


@pytest.fixture
def held_messages(redis_url: str) -> Iterator[list[str]]:
    """Five real messages taken, not acknowledged, by a real kombu consumer: they sit in unacked."""
    app = producer_app(redis_url)
    ids = [app.send_task("demo.process_video", args=[str(i)]).id for i in range(5)]
    with app.connection_for_read() as conn:
        queue = conn.SimpleQueue("video_processing")
        taken = [queue.get(timeout=5) for _ in ids]
        yield [message.headers["id"] for message in taken]
        queue.close()
    app.close()


def test_iter_unacked_gives_entries_and_when_they_were_taken(
    redis_client: redis.Redis, held_messages: list[str]
) -> None:
    """Every unacked entry is read once, with its unacked_index score (when it was taken)."""
    now = datetime.now(UTC).timestamp()
    entries = [
        entry for chunk in reader_for(redis_client, chunk_size=2).iter_unacked() for entry in chunk
    ]
    assert len(entries) == 5
    assert len({e.delivery_tag for e in entries}) == 5
    ids = {json.loads(e.raw)[0]["headers"]["id"] for e in entries}
    assert ids == set(held_messages)
    for entry in entries:
        assert entry.taken_at is not None and abs(now - entry.taken_at) < 60


@pytest.mark.filterwarnings("ignore:Call to deprecated setex:DeprecationWarning")
def test_iter_results(redis_url: str, redis_client: redis.Redis) -> None:
    """Result keys are scanned in chunks with status, date_done and TTL; other keys are not."""
    app = producer_app(redis_url, result_expires=3600)
    for i in range(60):
        app.backend.store_result(f"id-{i}", i, "SUCCESS")
    app.backend.store_result("failed", ValueError("x"), "FAILURE")
    app.close()
    redis_client.persist("celery-task-meta-id-7")
    redis_client.set("celery-task-meta-garbage", b"not json")
    redis_client.set("unrelated", b"{}")
    metas = {
        m.task_id: m
        for chunk in reader_for(redis_client, chunk_size=7).iter_results()
        for m in chunk
    }
    assert len(metas) == 62
    assert metas["id-3"].status == "SUCCESS" and 3500 < metas["id-3"].ttl_s <= 3600
    assert metas["id-7"].ttl_s == -1
    assert metas["failed"].status == "FAILURE"
    assert metas["id-3"].date_done is not None
    assert abs(metas["id-3"].date_done - datetime.now(UTC).timestamp()) < 60
    assert metas["garbage"].status == "UNKNOWN" and metas["garbage"].date_done is None


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (
            "2026-01-02T03:04:05.000006+00:00",
            datetime(2026, 1, 2, 3, 4, 5, 6, tzinfo=UTC).timestamp(),
        ),
        ("2026-01-02T03:04:05", datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC).timestamp()),
        ("2026-01-02T05:04:05+02:00", datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC).timestamp()),
        ("yesterday", None),
        (None, None),
        (1700000000, None),
    ],
)
def test_parse_timestamp(value: object, expected: float | None) -> None:
    """Celery's date_done is ISO 8601; naive means UTC; anything else is unknown."""
    assert parse_timestamp(value) == expected


def test_old_results_parse_to_their_age(redis_client: redis.Redis) -> None:
    """A date_done rewritten into the past reads back as that moment."""
    moment = datetime.now(UTC) - timedelta(days=3)
    redis_client.set(
        "celery-task-meta-x",
        json.dumps({"status": "SUCCESS", "task_id": "x", "date_done": moment.isoformat()}),
    )
    [meta] = [m for chunk in reader_for(redis_client).iter_results() for m in chunk]
    assert meta.date_done == pytest.approx(moment.timestamp())


@pytest.mark.parametrize("read", ["list", "unacked", "results", "lengths"])
def test_a_failed_read_is_never_an_empty_read(read: str) -> None:
    """With Redis gone every read raises BrokerUnavailable instead of returning nothing."""
    client = redis.Redis(port=free_port(), socket_connect_timeout=1, retry=Retry(NoBackoff(), 0))
    reader = reader_for(client)
    calls: dict[str, Callable[[], object]] = {
        "list": lambda: list(reader.iter_list("q")),
        "unacked": lambda: list(reader.iter_unacked()),
        "results": lambda: list(reader.iter_results()),
        "lengths": lambda: reader.list_lengths(["q"]),
    }
    with pytest.raises(BrokerUnavailable, match="Redis failed while"):
        calls[read]()
