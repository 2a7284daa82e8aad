"""Envelope parsing: real kombu messages from a real Celery producer, and hand-made broken ones."""

from __future__ import annotations

import base64
import json
import pathlib
import pickle
from pathlib import Path
from typing import Any

import orjson
import pytest
import redis

from maintenance.core.bindings import Binding, BindingTable
from maintenance.core.envelope import parse_list_element, parse_unacked_entry, read_envelope
from maintenance.core.models import Location, Reason, Where
from tests.conftest import producer_app

BINDINGS = BindingTable((
    Binding("demo.process_video", "args[0]"),
    Binding("demo.process_segment", "args[0]", "sub_task"),
    Binding("demo.render", "kwargs.task_id"),
    Binding("demo.by_celery_id", "task_id"),
))
QUEUE = Location(Where.QUEUE, queue="video_processing", key="video_processing")


def captured(redis_url: str, name: str, **options: Any) -> tuple[bytes, str]:
    """Send one message with a real Celery app and return its raw list element and task id."""
    protocol = options.pop("task_protocol", 2)
    app = producer_app(redis_url, task_protocol=protocol)
    try:
        result = app.send_task(name, queue="video_processing", **options)
    finally:
        app.close()
    client = redis.Redis.from_url(redis_url)
    try:
        keys = ["video_processing", *(f"video_processing\x06\x16{band}" for band in (3, 6, 9))]
        raws = [raw for key in keys if (raw := client.rpop(key)) is not None]
    finally:
        client.close()
    assert len(raws) == 1, "expected exactly one message in the queue's lists"
    return raws[0], result.id


class Exploding:
    """Unpickling this object creates a marker file: proof that somebody unpickled the body."""

    marker: Path

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (pathlib.Path.touch, (self.marker,))

    def __repr__(self) -> str:
        return "'harmless'"


@pytest.mark.parametrize(
    ("name", "options", "db_id", "row_kind"),
    [
        ("demo.process_video", {"args": ["row-1"]}, "row-1", "task"),
        ("demo.process_video", {"args": ["row-1"], "serializer": "pickle"}, "row-1", "task"),
        ("demo.process_video", {"args": ["row-1"], "serializer": "yaml"}, "row-1", "task"),
        ("demo.process_video", {"args": [42, "x"]}, "42", "task"),
        ("demo.process_video", {"args": [42], "serializer": "pickle"}, "42", "task"),
        ("demo.process_video", {"args": ["row-1"], "task_protocol": 1}, "row-1", "task"),
        ("demo.process_segment", {"args": ["seg-1"]}, "seg-1", "sub_task"),
        ("demo.render", {"kwargs": {"task_id": "row-2", "quality": "hd"}}, "row-2", "task"),
        ("demo.render", {"kwargs": {"task_id": "row-2"}, "serializer": "pickle"}, "row-2",
         "task"),
        ("demo.render", {"kwargs": {"task_id": "row-2"}, "compression": "zlib"}, "row-2",
         "task"),
        ("demo.render", {"kwargs": {"task_id": "row-2"}, "priority": 7}, "row-2", "task"),
        ("demo.render", {"kwargs": {"task_id": "row-2"}, "countdown": 60}, "row-2", "task"),
    ],
)
def test_real_messages_yield_the_bound_id(redis_url: str, name: str, options: dict[str, Any],
                                          db_id: str, row_kind: str) -> None:
    """Messages sent by Celery with any serializer give their task id, name and bound row id."""
    raw, task_id = captured(redis_url, name, **options)
    msg = parse_list_element(raw, QUEUE, BINDINGS)
    assert msg.problem is None, msg.detail
    assert (msg.task_id, msg.task_name, msg.db_id, msg.row_kind) == (task_id, name, db_id,
                                                                     row_kind)
    assert msg.location.delivery_tag  # taken from the message properties
    if "countdown" in options:
        assert msg.eta is not None


def test_task_id_binding(redis_url: str) -> None:
    """A `task_id` binding uses the Celery task id itself as the database id."""
    raw, task_id = captured(redis_url, "demo.by_celery_id", args=[{"nested": "x"}],
                            serializer="pickle")
    msg = parse_list_element(raw, QUEUE, BINDINGS)
    assert msg.problem is None
    assert msg.db_id == task_id


@pytest.mark.parametrize("serializer", ["json", "pickle"])
def test_unmanaged_messages_are_not_bound(redis_url: str, serializer: str) -> None:
    """A task name without binding is unmanaged: no id, no kind, no problem, even if unparsable."""
    args = [object()] if serializer == "pickle" else ["a@b"]
    raw, task_id = captured(redis_url, "demo.send_email", args=args, serializer=serializer)
    msg = parse_list_element(raw, QUEUE, BINDINGS)
    assert (msg.task_id, msg.task_name) == (task_id, "demo.send_email")
    assert msg.db_id is None and msg.row_kind == "" and msg.problem is None


def test_pickle_bodies_are_never_unpickled(redis_url: str, tmp_path: Path) -> None:
    """A pickled body is read through argsrepr only: code inside the pickle never runs."""
    marker = tmp_path / "unpickled"
    probe = tmp_path / "probe"
    pickle.loads(pickle.dumps(Exploding(probe)))  # the payload is live: unpickling runs it
    assert probe.exists()
    raw, _ = captured(redis_url, "demo.process_video", args=["row-1", Exploding(marker)],
                      serializer="pickle")
    msg = parse_list_element(raw, QUEUE, BINDINGS)
    assert msg.db_id == "row-1"
    assert not marker.exists()


def test_pickle_with_unliteral_repr_is_unreadable(redis_url: str) -> None:
    """When argsrepr is not a Python literal the message is unreadable, not guessed at."""
    raw, task_id = captured(redis_url, "demo.process_video", args=[object()],
                            serializer="pickle")
    msg = parse_list_element(raw, QUEUE, BINDINGS)
    assert msg.task_id == task_id
    assert msg.problem is Reason.BAD_ENVELOPE
    assert "argsrepr" in msg.detail


@pytest.mark.parametrize(
    ("name", "options"),
    [
        ("demo.process_video", {"args": []}),
        ("demo.process_video", {"args": [None]}),
        ("demo.process_video", {"args": [["row-1"]]}),
        ("demo.process_video", {"args": [1.5]}),
        ("demo.process_video", {"args": [True]}),
        ("demo.render", {"kwargs": {"id": "row-1"}}),
        ("demo.render", {"kwargs": {}, "serializer": "pickle"}),
    ],
)
def test_missing_bound_id_is_a_problem(redis_url: str, name: str,
                                       options: dict[str, Any]) -> None:
    """A managed message without a usable id is reported as such, keeping its id and name."""
    raw, task_id = captured(redis_url, name, **options)
    msg = parse_list_element(raw, QUEUE, BINDINGS)
    assert msg.problem is Reason.NO_BOUND_ID
    assert (msg.task_id, msg.task_name, msg.db_id, msg.row_kind) == (task_id, name, None,
                                                                     "task")


def _envelope(body: Any, *, content_type: str = "application/json", encode: bool = True,
              headers: dict[str, Any] | None = None) -> dict[str, Any]:
    text = json.dumps(body) if encode else body
    return {
        "body": base64.b64encode(text.encode()).decode() if isinstance(text, str) else text,
        "content-type": content_type,
        "headers": {"task": "demo.process_video", "id": "tid", "argsrepr": "('r',)",
                    **(headers or {})},
        "properties": {"body_encoding": "base64", "delivery_tag": "7"},
    }


@pytest.mark.parametrize(
    ("payload", "problem", "db_id"),
    [
        (_envelope([["row-9"], {}, {}]), None, "row-9"),
        (_envelope({"args": []}), Reason.BAD_ENVELOPE, None),  # JSON but not [args, kwargs]
        (_envelope("not json", encode=False), None, "r"),  # undecodable: argsrepr fallback
        (_envelope("x", encode=False, headers={"argsrepr": "('r',"}), Reason.BAD_ENVELOPE,
         None),
        (_envelope("x", encode=False, headers={"argsrepr": "__import__('os')"}),
         Reason.BAD_ENVELOPE, None),
        (_envelope("x", encode=False, headers={"argsrepr": ["r"]}), Reason.BAD_ENVELOPE, None),
        (_envelope("x", encode=False, headers={"argsrepr": "[" * 10000}), Reason.BAD_ENVELOPE,
         None),
        (_envelope(7, encode=False, content_type="application/data"), None, "r"),
        (_envelope([[], {}, {}], headers={"argsrepr": None}), Reason.NO_BOUND_ID, None),
        ({**_envelope([["a"], {}]), "headers": None}, Reason.BAD_ENVELOPE, None),
        ({**_envelope([["a"], {}]), "headers": []}, Reason.BAD_ENVELOPE, None),
        ({**_envelope([["a"], {}]), "properties": "x"}, Reason.BAD_ENVELOPE, None),
        (_envelope([["a"], {}], headers={"id": 5}), Reason.BAD_ENVELOPE, None),
        (_envelope([["a"], {}], headers={"task": None}), Reason.BAD_ENVELOPE, None),
        ([1, 2], Reason.BAD_ENVELOPE, None),
        ("text", Reason.BAD_ENVELOPE, None),
    ],
)
def test_hand_made_envelopes(payload: Any, problem: Reason | None, db_id: str | None) -> None:
    """Odd or hostile envelopes become a problem on the message, never an exception."""
    msg = read_envelope(payload, QUEUE, BINDINGS)
    assert msg.problem is problem
    assert msg.db_id == db_id


@pytest.mark.parametrize("raw", [b"", b"not json{", b"\xff\xfe", b"[1, 2", b"null"])
def test_garbage_list_elements_are_unreadable(raw: bytes) -> None:
    """Bytes that are not a JSON message give an unreadable message at the same location."""
    msg = parse_list_element(raw, QUEUE, BINDINGS)
    assert msg.problem is Reason.BAD_ENVELOPE
    assert msg.location == QUEUE
    assert msg.task_id == ""


def test_unacked_entry_takes_the_routing_key(redis_url: str) -> None:
    """An unacked entry is [message, exchange, routing_key]; the routing key names the queue."""
    raw, task_id = captured(redis_url, "demo.process_video", args=["row-1"])
    entry = orjson.dumps([orjson.loads(raw), "", "video_processing"])
    location = Location(Where.UNACKED, key="unacked", delivery_tag="tag-1")
    msg = parse_unacked_entry(entry, location, BINDINGS)
    assert (msg.task_id, msg.db_id) == (task_id, "row-1")
    assert msg.location.queue == "video_processing"
    assert msg.location.delivery_tag == "tag-1"
    assert msg.location.where is Where.UNACKED


@pytest.mark.parametrize("raw", [b"garbage", b"{}", b"[]", b'["x", "", "q"]', b'{"a": 1}'])
def test_malformed_unacked_entries_are_unreadable(raw: bytes) -> None:
    """An unacked value that is not [message, exchange, routing_key] is unreadable."""
    msg = parse_unacked_entry(raw, Location(Where.UNACKED), BINDINGS)
    assert msg.problem is Reason.BAD_ENVELOPE
