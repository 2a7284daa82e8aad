"""The scan's fast path gives the same answers as the full one: quick_read against
parse_list_element, and the PostgreSQL anti-join (`verdicts`) against the full `lookup`."""

from __future__ import annotations

import base64
import json
import random
from typing import Any

import pytest
import sqlalchemy as sa

from examples.demo.schema import sub_tasks, tasks, utcnow
from maintenance.adapters.database import TaskDatabase
from maintenance.adapters.id_coercion import pg_array_literal
from maintenance.config import Settings, settings_from_mapping
from maintenance.core.bindings import Binding, BindingTable
from maintenance.core.diff import LostTracker, Verdicts, judge_message
from maintenance.core.envelope import parse_list_element, quick_message, quick_read
from maintenance.core.models import Location, Message, StuckRow, Where

BINDINGS = BindingTable((
    Binding("demo.process_video", "args[0]"),
    Binding("demo.process_segment", "args[0]", "sub_task"),
    Binding("demo.render", "kwargs.task_id"),
    Binding("demo.by_celery_id", "task_id"),
))
QUEUE = Location(Where.QUEUE, queue="q", key="q")


def envelope(task: Any = "demo.process_video", body: Any = (["row-1"], {}, {}), *,
             encoding: str | None = "base64", content_type: str = "application/json",
             headers: Any = None, properties: Any = None, **extra: Any) -> bytes:
    """A kombu protocol-2 list element, as Celery's JSON serializer writes it."""
    text = json.dumps(list(body)) if isinstance(body, tuple) else body
    if encoding == "base64" and isinstance(text, str):
        text = base64.b64encode(text.encode()).decode()
    doc = {"body": text, "content-encoding": "utf-8", "content-type": content_type,
           "headers": {"lang": "py", "task": task, "id": "c-1", "argsrepr": "('row-1',)",
                       "kwargsrepr": "{}", **(headers or {})},
           "properties": properties if properties is not None else
           {"delivery_tag": "t-1", **({"body_encoding": encoding} if encoding else {})},
           **extra}
    return json.dumps(doc).encode()


ORDINARY = [
    envelope(),
    envelope(body=([42, "x"], {}, {})),
    envelope("demo.process_segment", (["seg-1"], {}, {})),
    envelope("demo.render", ([], {"task_id": "row-2"}, {})),
    envelope("demo.by_celery_id", ([], {}, {})),
    envelope("demo.send_email", (["a@b"], {}, {})),  # unmanaged
    envelope(encoding=None),  # a plain JSON body
    envelope(content_type="application/x-python-serialize", body="gAR9lC4=",
             headers={"argsrepr": "('row-3',)"}),  # pickle: the reprs are read instead
]
UNUSUAL = [
    b"not json", b"[1, 2]", b'"text"',
    envelope(headers={"task": ""}), envelope(headers={"task": 3}), envelope(headers={"id": None}),
    envelope(properties=[]), envelope(body=([], {}, {})), envelope(body=([None], {}, {})),
    envelope(body=([1.5], {}, {})), envelope(body=([["x"]], {}, {})),
    envelope(body=([True], {}, {})),
    envelope("demo.render", ([], {"other": 1}, {})), envelope(body='{"not": "a list"}'),
    envelope(body="!!!not base64"), envelope(headers={"compression": "zlib"}),
    envelope(content_type="application/x-python-serialize", body="x", headers={"argsrepr": "("}),
    json.dumps({"body": "e30=", "headers": {}, "properties": {}}).encode(),  # protocol 1 shape
]


@pytest.mark.parametrize("raw", ORDINARY + UNUSUAL)
def test_quick_read_agrees_with_the_full_reading(raw: bytes) -> None:
    """Where quick_read answers, quick_message gives exactly the Message parse_list_element
    gives; elsewhere quick_read declines."""
    full = parse_list_element(raw, QUEUE, BINDINGS)
    quick = quick_read(raw, BINDINGS)
    if quick is not None:
        assert full.problem is None
        assert quick_message(quick, QUEUE) == full
    if raw in ORDINARY:
        assert quick is not None, "an ordinary message must take the fast path"


def _settings(database_url: str) -> Settings:
    return settings_from_mapping({
        "database": {"url": database_url, "batch_size": 7},
        "tasks": {"table": "tasks", "active_statuses": ["pending", "queued"]},
        "sub_tasks": {"table": "sub_tasks", "status_column": "status"},
        "bindings": [{"task": "t", "id_from": "args[0]"},
                     {"task": "s", "id_from": "args[0]", "kind": "sub_task"}],
    })


def test_verdicts_judge_exactly_like_the_full_lookup(database_url: str) -> None:
    """Every id the anti-join calls fine is one judge_message lets pass with the full look-up,
    and every other id is judged the same with the partial rows it returns."""
    engine = sa.create_engine(database_url)
    now = utcnow()
    with engine.begin() as conn:
        conn.execute(sa.insert(tasks), [
            {"id": f"live-{i}", "status": "pending", "updated_at": now} for i in range(20)] + [
            {"id": f"done-{i}", "status": "done", "updated_at": now} for i in range(10)])
        conn.execute(sa.insert(sub_tasks), [
            {"id": "s-live", "task_id": "live-1", "status": "queued"},
            {"id": "s-done", "task_id": "live-1", "status": "done"},
            {"id": "s-parent-done", "task_id": "done-1", "status": "queued"},
            {"id": "s-parent-gone", "task_id": "gone-9", "status": "queued"}])
    db = TaskDatabase(engine, _settings(database_url))
    task_ids = {f"live-{i}" for i in range(20)} | {f"done-{i}" for i in range(10)} | {
        f"gone-{i}" for i in range(10)} | {"x" * 40}  # longer than the column: cannot exist
    sub_ids = {"s-live", "s-done", "s-parent-done", "s-parent-gone", "s-gone"}
    verdicts = db.verdicts(task_ids, sub_ids)
    full = db.lookup(task_ids, sub_ids)
    assert Verdicts.build(task_ids, sub_ids, full).problems == verdicts.problems
    for kind, ids in (("task", task_ids), ("sub_task", sub_ids)):
        for db_id in ids:
            msg = Message("c", "n", QUEUE, db_id=db_id, row_kind=kind)
            expected = judge_message(msg, full)
            assert verdicts.fine(kind, db_id) == (expected is None), (kind, db_id)
            if expected is not None:
                assert judge_message(msg, verdicts.lookup) == expected, (kind, db_id)
    assert not verdicts.fine("task", "never-looked-up")
    engine.dispose()


@pytest.mark.parametrize("values", [
    ["a", "b-1", "c_2"], [1, -2, 30], [], ["with space", 'quo"te', "back\\slash", "{brace}",
                                         "com,ma", "", "NULL", "null", "nullx", "ünï"],
])
def test_pg_array_literal_round_trips(database_url: str, values: list[object]) -> None:
    """The one-string array parameter the look-ups send means exactly the ids given."""
    engine = sa.create_engine(database_url)
    array_type = "integer[]" if values and isinstance(values[0], int) else "text[]"
    with engine.connect() as conn:
        got = conn.execute(sa.text(f"SELECT CAST(:v AS {array_type})"),
                           {"v": pg_array_literal(values)}).scalar_one()
    engine.dispose()
    assert got == values


def test_lost_tracker_saw_many_crosses_off_what_saw_ids_does() -> None:
    """A chunk seen at once crosses off exactly the rows its messages cross off one by one."""
    rng = random.Random(7)
    rows = [StuckRow(f"r{i}", rng.choice(["task", "sub_task"]), "pending", 0.0,
                     celery_id=f"c{i}" if i % 3 else None) for i in range(200)]
    seen = [(f"c{rng.randrange(400)}", rng.choice(["task", "sub_task", ""]),
             rng.choice([f"r{rng.randrange(400)}", None])) for _ in range(300)]
    one_by_one, at_once = LostTracker(rows), LostTracker(rows)
    for task_id, row_kind, db_id in seen:
        one_by_one.saw_ids(row_kind, db_id, task_id)
    at_once.saw_many(seen)
    assert len(at_once) < len(rows)
    assert [f.db_id for f in at_once.findings(1.0)] == [f.db_id for f in one_by_one.findings(1.0)]
