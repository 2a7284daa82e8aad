"""Key names: derived from kombu's and Celery's settings, and matching where they really write."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest
import redis
from kombu.connection import Connection

from maintenance.adapters.redis_layout import (
    BrokerLayout,
    OwnKeys,
    ResultLayout,
    split_queue_key,
)
from tests.conftest import producer_app

SEP = "\x06\x16"
ChannelFor = Callable[..., Any]  # transport options -> a real kombu channel


@pytest.mark.parametrize(
    ("steps", "priority", "band"),
    [
        ((0, 3, 6, 9), 0, 0),
        ((0, 3, 6, 9), 2, 0),
        ((0, 3, 6, 9), 3, 3),
        ((0, 3, 6, 9), 5, 3),
        ((0, 3, 6, 9), 6, 6),
        ((0, 3, 6, 9), 9, 9),
        ((0, 5), 4, 0),
        ((0, 5), 9, 5),
        (tuple(range(10)), 7, 7),
        ((), 7, 0),
    ],
)
def test_band(steps: tuple[int, ...], priority: int, band: int) -> None:
    """A priority lands in the highest step not above it, as kombu's Redis transport does."""
    assert BrokerLayout(priority_steps=steps).band(priority) == band


@pytest.mark.parametrize(
    ("prefix", "band", "key"),
    [
        ("", 0, "video"),
        ("", 3, f"video{SEP}3"),
        ("app:", 0, "app:video"),
        ("app:", 9, f"app:video{SEP}9"),
    ],
)
def test_queue_key(prefix: str, band: int, key: str) -> None:
    """Band 0 is the plain list; other bands append kombu's separator; the prefix goes first."""
    assert BrokerLayout(global_keyprefix=prefix).queue_key("video", band) == key


def test_queue_keys_cover_every_band_plain_first() -> None:
    """Every step has a list, and band 0 exists even when the steps omit it."""
    layout = BrokerLayout(priority_steps=(9, 4), sep=":")
    assert layout.queue_keys("q") == [(0, "q"), (4, "q:4"), (9, "q:9")]


def test_unacked_keys_carry_the_prefix() -> None:
    """The unacked hash, its index and its mutex are prefixed like every kombu key."""
    layout = BrokerLayout(global_keyprefix="p_")
    assert (layout.unacked, layout.unacked_index, layout.unacked_mutex) == (
        "p_unacked",
        "p_unacked_index",
        "p_unacked_mutex",
    )


@pytest.mark.parametrize(
    ("key", "expected"),
    [
        ("app:video", ("video", 0)),
        (f"app:video{SEP}6", ("video", 6)),
        (f"app:celery{SEP}3", ("celery", 3)),
        ("video", ("video", 0)),  # unprefixed: not ours, maps to itself
        ("app:other", ("app:other", 0)),
    ],
)
def test_split_queue_key(key: str, expected: tuple[str, int]) -> None:
    """Keys of configured queues map back to (queue, band); others map to themselves."""
    layout = BrokerLayout(global_keyprefix="app:")
    assert split_queue_key(key, layout, ["video", "celery"]) == expected


@pytest.mark.parametrize(
    ("prefix", "match"),
    [
        ("celery-task-meta-", "celery-task-meta-*"),
        ("app_celery-task-meta-", "app_celery-task-meta-*"),
        ("a*b?[c]\\-", "a\\*b\\?\\[c\\]\\\\-*"),
    ],
)
def test_result_match_escapes_glob_characters(prefix: str, match: str) -> None:
    """The SCAN pattern matches the prefix literally, whatever characters it contains."""
    layout = ResultLayout(prefix)
    assert layout.match == match
    assert layout.task_id_of(layout.key_for("abc")) == "abc"


def test_own_keys() -> None:
    """Our own keys live under our own prefix, apart from Celery's."""
    keys = OwnKeys("tm")
    assert (
        keys.lock,
        keys.lock_holder,
        keys.quarantine,
        keys.quarantine_index,
        keys.guard_skips,
    ) == ("tm:lock", "tm:lock:holder", "tm:quarantine", "tm:quarantine:index", "tm:guard:skips")


@pytest.fixture
def channel_for(redis_url: str) -> Iterator[ChannelFor]:
    connections: list[Connection] = []

    def make(**options: Any) -> Any:
        conn = Connection(redis_url, transport_options=options)  # type: ignore[no-untyped-call]  # kombu's Connection has no annotations
        connections.append(conn)
        return conn.default_channel

    yield make
    for conn in connections:
        conn.release()  # type: ignore[no-untyped-call]  # kombu's Connection has no annotations


def test_from_channel_reads_the_transport_options(channel_for: ChannelFor) -> None:
    """The layout is read off a real kombu channel, with the options the app configured."""
    layout = BrokerLayout.from_channel(
        channel_for(
            global_keyprefix="pfx:",
            sep=":",
            priority_steps=[0, 5],
            unacked_key="ua",
            visibility_timeout=120,
        )
    )
    assert layout == BrokerLayout(
        global_keyprefix="pfx:",
        sep=":",
        priority_steps=(0, 5),
        unacked_key="ua",
        unacked_index_key="unacked_index",
        unacked_mutex_key="unacked_mutex",
        visibility_timeout_s=120.0,
    )


def test_from_channel_defaults(channel_for: ChannelFor) -> None:
    """Without options the layout is kombu's default one."""
    assert BrokerLayout.from_channel(channel_for()) == BrokerLayout()


@pytest.mark.parametrize(
    ("options", "priority"),
    [
        ({}, 0),
        ({}, 5),
        ({}, 9),
        ({"global_keyprefix": "app:"}, 0),
        ({"global_keyprefix": "app:"}, 6),
        ({"global_keyprefix": "app:", "sep": ":", "priority_steps": [0, 2, 4, 6, 8]}, 5),
    ],
)
def test_layout_names_the_key_celery_writes(
    redis_url: str,
    redis_client: redis.Redis,
    channel_for: ChannelFor,
    options: dict[str, Any],
    priority: int,
) -> None:
    """A message sent by Celery is in exactly the list the layout names for its priority."""
    layout = BrokerLayout.from_channel(channel_for(**options))
    app = producer_app(redis_url, broker_transport_options=options)
    try:
        app.send_task("demo.process_video", args=["x"], queue="video", priority=priority)
    finally:
        app.close()
    expected = layout.queue_key("video", layout.band(priority))
    lists = [key.decode() for key in redis_client.scan_iter() if redis_client.type(key) == b"list"]
    assert lists == [expected]


@pytest.mark.filterwarnings("ignore:Call to deprecated setex:DeprecationWarning")
@pytest.mark.parametrize("prefix", ["", "app", "app:"])
def test_result_layout_names_the_key_celery_writes(
    redis_url: str, redis_client: redis.Redis, prefix: str
) -> None:
    """Celery's task_keyprefix, global prefix included, names the result keys it writes."""
    options = {"global_keyprefix": prefix} if prefix else {}
    app = producer_app(redis_url, result_backend_transport_options=options)
    try:
        app.backend.store_result("tid-1", 42, "SUCCESS")
        layout = ResultLayout(
            app.backend.task_keyprefix.decode()
            if isinstance(app.backend.task_keyprefix, bytes)
            else app.backend.task_keyprefix
        )
    finally:
        app.close()
    keys = [key.decode() for key in redis_client.scan_iter(match=layout.match)]
    assert keys == [layout.key_for("tid-1")]
    assert keys[0].startswith(prefix)
