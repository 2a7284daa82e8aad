"""Envelope parsing: real kombu messages from a real Celery producer, hand-made broken ones, and
the quick reading (quick_read, quick_message) agreeing with the full one on every kind of message.
"""

from __future__ import annotations

import base64
import json
import pathlib
import pickle
from dataclasses import fields, replace
from pathlib import Path
from typing import Any

import orjson
import pytest
import redis

from maintenance.core.bindings import Binding, BindingTable
from maintenance.core.envelope import (
    Quick,
    parse_list_element,
    parse_unacked_entry,
    quick_message,
    quick_read,
    read_envelope,
)
from maintenance.core.models import Location, Reason, Where
from tests.conftest import producer_app

BINDINGS = BindingTable(
    (
        Binding("demo.process_video", "args[0]"),
        Binding("demo.process_segment", "args[0]", "sub_task"),
        Binding("demo.render", "kwargs.task_id"),
        Binding("demo.by_celery_id", "task_id"),
        Binding("demo.second_arg", "args[1]"),
    )
)
QUEUE = Location(Where.QUEUE, queue="video_processing", key="video_processing")
PLACES = [
    Location(Where.QUEUE, queue="q", key="q"),
    Location(Where.QUEUE, queue="q", priority=3, key="q\x06\x163", index=9, delivery_tag="own-tag"),
]


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
        raws = [raw for key in keys if isinstance(raw := client.rpop(key), bytes)]
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
        ("demo.render", {"kwargs": {"task_id": "row-2"}, "serializer": "pickle"}, "row-2", "task"),
        ("demo.render", {"kwargs": {"task_id": "row-2"}, "compression": "zlib"}, "row-2", "task"),
        ("demo.render", {"kwargs": {"task_id": "row-2"}, "priority": 7}, "row-2", "task"),
        ("demo.render", {"kwargs": {"task_id": "row-2"}, "countdown": 60}, "row-2", "task"),
    ],
)
def test_real_messages_yield_the_bound_id(
    redis_url: str, name: str, options: dict[str, Any], db_id: str, row_kind: str
) -> None:
    """Messages sent by Celery with any serializer give their task id, name and bound row id."""
    raw, task_id = captured(redis_url, name, **options)
    msg = parse_list_element(raw, QUEUE, BINDINGS)
    assert msg.problem is None, msg.detail
    assert (msg.task_id, msg.task_name, msg.db_id, msg.row_kind) == (task_id, name, db_id, row_kind)
    assert msg.location.delivery_tag  # taken from the message properties
    if "countdown" in options:
        assert msg.eta is not None


def test_task_id_binding(redis_url: str) -> None:
    """A `task_id` binding uses the Celery task id itself as the database id."""
    raw, task_id = captured(
        redis_url, "demo.by_celery_id", args=[{"nested": "x"}], serializer="pickle"
    )
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
    raw, _ = captured(
        redis_url, "demo.process_video", args=["row-1", Exploding(marker)], serializer="pickle"
    )
    msg = parse_list_element(raw, QUEUE, BINDINGS)
    assert msg.db_id == "row-1"
    assert not marker.exists()


def test_pickle_with_unliteral_repr_is_unreadable(redis_url: str) -> None:
    """When argsrepr is not a Python literal the message is unreadable, not guessed at."""
    raw, task_id = captured(redis_url, "demo.process_video", args=[object()], serializer="pickle")
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
def test_missing_bound_id_is_a_problem(redis_url: str, name: str, options: dict[str, Any]) -> None:
    """A managed message without a usable id is reported as such, keeping its id and name."""
    raw, task_id = captured(redis_url, name, **options)
    msg = parse_list_element(raw, QUEUE, BINDINGS)
    assert msg.problem is Reason.NO_BOUND_ID
    assert (msg.task_id, msg.task_name, msg.db_id, msg.row_kind) == (task_id, name, None, "task")


def _envelope(
    body: Any,
    *,
    content_type: str = "application/json",
    encode: bool = True,
    headers: dict[str, Any] | None = None,
) -> dict[str, Any]:
    text = json.dumps(body) if encode else body
    return {
        "body": base64.b64encode(text.encode()).decode() if isinstance(text, str) else text,
        "content-type": content_type,
        "headers": {
            "task": "demo.process_video",
            "id": "tid",
            "argsrepr": "('r',)",
            **(headers or {}),
        },
        "properties": {"body_encoding": "base64", "delivery_tag": "7"},
    }


@pytest.mark.parametrize(
    ("payload", "problem", "db_id"),
    [
        (_envelope([["row-9"], {}, {}]), None, "row-9"),
        (_envelope({"args": []}), Reason.BAD_ENVELOPE, None),  # JSON but not [args, kwargs]
        (_envelope("not json", encode=False), None, "r"),  # undecodable: argsrepr fallback
        (_envelope("x", encode=False, headers={"argsrepr": "('r',"}), Reason.BAD_ENVELOPE, None),
        (
            _envelope("x", encode=False, headers={"argsrepr": "__import__('os')"}),
            Reason.BAD_ENVELOPE,
            None,
        ),
        (_envelope("x", encode=False, headers={"argsrepr": ["r"]}), Reason.BAD_ENVELOPE, None),
        (
            _envelope("x", encode=False, headers={"argsrepr": "[" * 10000}),
            Reason.BAD_ENVELOPE,
            None,
        ),
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


# -- the quick reading agrees with the full one ------------------------------------------------


def list_element(
    task: Any = "demo.process_video",
    body: Any = (["row-1"], {}, {}),
    *,
    encoding: str | None = "base64",
    content_type: str = "application/json",
    headers: Any = None,
    properties: Any = None,
    **extra: Any,
) -> bytes:
    """A kombu protocol-2 list element, as Celery's JSON serializer writes it."""
    text = json.dumps(list(body)) if isinstance(body, tuple) else body
    if encoding == "base64" and isinstance(text, str):
        text = base64.b64encode(text.encode()).decode()
    doc = {
        "body": text,
        "content-encoding": "utf-8",
        "content-type": content_type,
        "headers": {
            "lang": "py",
            "task": task,
            "id": "c-1",
            "argsrepr": "('row-1',)",
            "kwargsrepr": "{}",
            **(headers or {}),
        },
        "properties": properties
        if properties is not None
        else {"delivery_tag": "t-1", **({"body_encoding": encoding} if encoding else {})},
        **extra,
    }
    return json.dumps(doc).encode()


ORDINARY = [
    list_element(),
    list_element(body=([42, "x"], {}, {})),
    list_element("demo.process_segment", (["seg-1"], {}, {})),
    list_element("demo.render", ([], {"task_id": "row-2"}, {})),
    list_element("demo.by_celery_id", ([], {}, {})),
    list_element("demo.send_email", (["a@b"], {}, {})),  # unmanaged
    list_element(encoding=None),  # a plain JSON body
    list_element(
        content_type="application/x-python-serialize",
        body="gAR9lC4=",
        headers={"argsrepr": "('row-3',)"},
    ),  # pickle: the reprs are read instead
]
UNUSUAL = [
    b"not json",
    b"[1, 2]",
    b'"text"',
    list_element(headers={"task": ""}),
    list_element(headers={"task": 3}),
    list_element(headers={"id": None}),
    list_element(properties=[]),
    list_element(body=([], {}, {})),
    list_element(body=([None], {}, {})),
    list_element(body=([1.5], {}, {})),
    list_element(body=([["x"]], {}, {})),
    list_element(body=([True], {}, {})),
    list_element("demo.render", ([], {"other": 1}, {})),
    list_element(body='{"not": "a list"}'),
    list_element(body="!!!not base64"),
    list_element(headers={"compression": "zlib"}),
    list_element(
        content_type="application/x-python-serialize", body="x", headers={"argsrepr": "("}
    ),
    json.dumps({"body": "e30=", "headers": {}, "properties": {}}).encode(),  # protocol 1 shape
]


def _raw(doc: dict[str, Any]) -> bytes:
    return json.dumps(doc).encode()


def _b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


_V2 = orjson.loads(list_element())
EDGES = [
    list_element(body=(["row-1", "extra"], {}, {})),
    list_element(body=([7], {}, {})),
    list_element(body=([2**70], {}, {})),
    list_element(body=([-3], {}, {})),
    list_element(body=([0], {}, {})),
    list_element(body=([""], {}, {})),  # empty: read, not looked up
    list_element(body=([False], {}, {})),
    list_element(body=([{"a": 1}], {}, {})),
    list_element(body=(["row-1"],)),
    list_element(body=(["row-1"], {})),
    list_element(body=()),
    list_element(body="[]"),
    list_element(body='"text"'),
    list_element(body="42"),
    list_element(body="null"),
    list_element(body=({"0": "row-1"}, {}, {})),
    list_element(body=("row-1", {}, {})),
    list_element(encoding=None, body="not json"),
    list_element(encoding=None, body='[["r"], {}, {}]'),
    list_element(body=_b64("[1"), headers={"argsrepr": "('from-repr',)"}),
    list_element(body="w6k="),  # base64 of a non-JSON byte string
    list_element(encoding=None, body="ünï", properties={"body_encoding": "base64"}),
    list_element(
        encoding=None, body=_b64('[["r"], {}, {}]'), properties={"body_encoding": "BASE64"}
    ),  # not base64 to kombu: reprs instead
    list_element(body=5),
    list_element(body=None),
    list_element(body=[["row-1"], {}, {}]),
    list_element(content_type="application/x-json"),
    list_element(content_type="application/JSON"),
    list_element(headers={"compression": ""}),
    list_element(headers={"compression": "gzip"}),
    list_element(headers={"compression": "gzip", "argsrepr": "[5]"}),
    list_element(
        content_type="application/x-python-serialize",
        body="gAR9lC4=",
        headers={"argsrepr": "(12,)"},
    ),
    list_element(content_type="application/x-yaml", body="x", headers={"argsrepr": None}),
    list_element("demo.render", ([], {"task_id": 9}, {})),
    list_element("demo.render", ([], {"task_id": None}, {})),
    list_element("demo.render", ([], {"task_id": ["x"]}, {})),
    list_element("demo.render", ([], {"task_id": 1.0}, {})),
    list_element("demo.render", ([], ["row-1"], {})),
    list_element("demo.render", (["row-1"], {}, {}), headers={"kwargsrepr": "{'task_id': 'r'}"}),
    list_element("demo.process_segment", ([3], {}, {})),
    list_element("demo.process_segment", ([], {}, {})),
    list_element("demo.second_arg", (["a", "row-2"], {}, {})),
    list_element("demo.second_arg", (["a"], {}, {})),
    list_element("demo.by_celery_id", body="garbage"),
    list_element("demo.send_email", body="garbage"),  # unmanaged: its body is never read
    list_element(headers={"eta": "2030-01-01T00:00:00"}),
    list_element(properties={"delivery_tag": 5, "body_encoding": "base64"}),
    list_element(properties={"delivery_tag": 0, "body_encoding": "base64"}),
    list_element(properties={"delivery_tag": "", "body_encoding": "base64"}),
    list_element(properties={"body_encoding": "base64"}),
    list_element(properties={}),
    _raw({k: v for k, v in _V2.items() if k != "content-type"}),
    _raw({k: v for k, v in _V2.items() if k != "body"}),
    _raw({k: v for k, v in _V2.items() if k != "properties"}),
    _raw({**_V2, "headers": None}),
    _raw(
        {
            "body": _b64(
                json.dumps(
                    {"task": "demo.process_video", "id": "c-1", "args": ["row-1"], "kwargs": {}}
                )
            ),
            "content-type": "application/json",
            "headers": {},
            "properties": {"body_encoding": "base64"},
        }
    ),  # protocol 1: read the full way
]


@pytest.mark.parametrize("raw", ORDINARY + UNUSUAL)
def test_quick_read_agrees_with_the_full_reading(raw: bytes) -> None:
    """Where quick_read answers, quick_message gives exactly the Message parse_list_element
    gives; elsewhere quick_read declines."""
    full = parse_list_element(raw, PLACES[0], BINDINGS)
    quick = quick_read(raw, BINDINGS)
    if quick is not None:
        assert full.problem is None
        assert quick_message(quick, PLACES[0]) == full
    if raw in ORDINARY:
        assert quick is not None, "an ordinary message must take the fast path"


def _answerable(raw: bytes) -> bool:
    """What quick_read has always answered: protocol 2 with header and property objects."""
    try:
        doc = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return False
    return (
        isinstance(doc, dict)
        and isinstance(doc.get("headers"), dict)
        and isinstance(doc.get("properties"), dict)
        and bool(doc["headers"].get("task"))
    )


@pytest.mark.parametrize("place", PLACES, ids=["plain", "priority-with-tag"])
@pytest.mark.parametrize("raw", ORDINARY + UNUSUAL + EDGES)
def test_quick_read_agrees_on_unusual_messages(raw: bytes, place: Location) -> None:
    """quick_read answers exactly where the full reading finds the message judgeable (and
    the message is protocol 2), and quick_message then gives the same Message at any index."""
    full = parse_list_element(raw, place, BINDINGS)
    quick = quick_read(raw, BINDINGS)
    assert (quick is not None) == (full.problem is None and _answerable(raw))
    if quick is not None:
        assert quick_message(quick, place) == full
        assert quick_message(quick, place, 41) == parse_list_element(
            raw, replace(place, index=41), BINDINGS
        )


def test_quick_message_builds_the_location_replace_would() -> None:
    """quick_message names every Location field: one added later must be added there too."""
    values: dict[str, Any] = {}
    for f in fields(Location):
        values[f.name] = {"Where": Where.UNACKED, "str": f"v-{f.name}", "int": 7}[str(f.type)]
    place = Location(**values)
    read: Quick = ("c-1", "task", "row-1", "demo.process_video", "tag", None, None)
    assert quick_message(read, place, 3).location == replace(place, index=3)
    bare = replace(place, delivery_tag="")
    assert quick_message(read, bare, 3).location == replace(bare, index=3, delivery_tag="tag")
