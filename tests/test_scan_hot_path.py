"""The scan's hot path gives the answers of the full one on unusual messages too: quick_read's
inline id reading, quick_message's direct Location, Verdicts.not_fine, and LookupBatcher
judging only the reads its look-up did not find fine."""

from __future__ import annotations

import base64
import json
import random
from concurrent.futures import ThreadPoolExecutor
from dataclasses import fields, replace
from typing import Any

import orjson
import pytest

from maintenance.core.bindings import Binding, BindingTable
from maintenance.core.diff import Lookup, LostTracker, Verdicts
from maintenance.core.envelope import parse_list_element, quick_message, quick_read
from maintenance.core.models import Location, RowState, Where
from maintenance.core.report import ScanReport
from maintenance.scan.batches import LookUp, LookupBatcher
from tests.test_scan_fast_path import ORDINARY, UNUSUAL, envelope

BINDINGS = BindingTable((
    Binding("demo.process_video", "args[0]"),
    Binding("demo.process_segment", "args[0]", "sub_task"),
    Binding("demo.render", "kwargs.task_id"),
    Binding("demo.by_celery_id", "task_id"),
    Binding("demo.second_arg", "args[1]"),
))
PLACES = [Location(Where.QUEUE, queue="q", key="q"),
          Location(Where.QUEUE, queue="q", priority=3, key="q\x06\x163", index=9,
                   delivery_tag="own-tag")]


def _raw(doc: dict[str, Any]) -> bytes:
    return json.dumps(doc).encode()


def _b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


_V2 = orjson.loads(envelope())
EDGES = [
    envelope(body=(["row-1", "extra"], {}, {})), envelope(body=([7], {}, {})),
    envelope(body=([2**70], {}, {})), envelope(body=([-3], {}, {})),
    envelope(body=([0], {}, {})), envelope(body=([""], {}, {})),  # empty: read, not looked up
    envelope(body=([False], {}, {})), envelope(body=([{"a": 1}], {}, {})),
    envelope(body=(["row-1"],)), envelope(body=(["row-1"], {})), envelope(body=()),
    envelope(body="[]"), envelope(body='"text"'), envelope(body="42"), envelope(body="null"),
    envelope(body=({"0": "row-1"}, {}, {})), envelope(body=("row-1", {}, {})),
    envelope(encoding=None, body="not json"), envelope(encoding=None, body='[["r"], {}, {}]'),
    envelope(body=_b64("[1"), headers={"argsrepr": "('from-repr',)"}),
    envelope(body="w6k="),  # base64 of a non-JSON byte string
    envelope(encoding=None, body="ünï", properties={"body_encoding": "base64"}),
    envelope(encoding=None, body=_b64('[["r"], {}, {}]'),
             properties={"body_encoding": "BASE64"}),  # not base64 to kombu: reprs instead
    envelope(body=5), envelope(body=None), envelope(body=[["row-1"], {}, {}]),
    envelope(content_type="application/x-json"), envelope(content_type="application/JSON"),
    envelope(headers={"compression": ""}), envelope(headers={"compression": "gzip"}),
    envelope(headers={"compression": "gzip", "argsrepr": "[5]"}),
    envelope(content_type="application/x-python-serialize", body="gAR9lC4=",
             headers={"argsrepr": "(12,)"}),
    envelope(content_type="application/x-yaml", body="x", headers={"argsrepr": None}),
    envelope("demo.render", ([], {"task_id": 9}, {})),
    envelope("demo.render", ([], {"task_id": None}, {})),
    envelope("demo.render", ([], {"task_id": ["x"]}, {})),
    envelope("demo.render", ([], {"task_id": 1.0}, {})),
    envelope("demo.render", ([], ["row-1"], {})),
    envelope("demo.render", (["row-1"], {}, {}), headers={"kwargsrepr": "{'task_id': 'r'}"}),
    envelope("demo.process_segment", ([3], {}, {})),
    envelope("demo.process_segment", ([], {}, {})),
    envelope("demo.second_arg", (["a", "row-2"], {}, {})),
    envelope("demo.second_arg", (["a"], {}, {})),
    envelope("demo.by_celery_id", body="garbage"),
    envelope("demo.send_email", body="garbage"),  # unmanaged: its body is never read
    envelope(headers={"eta": "2030-01-01T00:00:00"}),
    envelope(properties={"delivery_tag": 5, "body_encoding": "base64"}),
    envelope(properties={"delivery_tag": 0, "body_encoding": "base64"}),
    envelope(properties={"delivery_tag": "", "body_encoding": "base64"}),
    envelope(properties={"body_encoding": "base64"}),
    envelope(properties={}),
    _raw({k: v for k, v in _V2.items() if k != "content-type"}),
    _raw({k: v for k, v in _V2.items() if k != "body"}),
    _raw({k: v for k, v in _V2.items() if k != "properties"}),
    _raw({**_V2, "headers": None}),
    _raw({"body": _b64(json.dumps({"task": "demo.process_video", "id": "c-1",
                                   "args": ["row-1"], "kwargs": {}})),
          "content-type": "application/json", "headers": {},
          "properties": {"body_encoding": "base64"}}),  # protocol 1: read the full way
]


def _answerable(raw: bytes) -> bool:
    """What quick_read has always answered: protocol 2 with header and property objects."""
    try:
        doc = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return False
    return isinstance(doc, dict) and isinstance(doc.get("headers"), dict) \
        and isinstance(doc.get("properties"), dict) and bool(doc["headers"].get("task"))


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
            raw, replace(place, index=41), BINDINGS)


def test_quick_message_builds_the_location_replace_would() -> None:
    """quick_message names every Location field: one added later must be added there too."""
    values: dict[str, Any] = {}
    for f in fields(Location):
        values[f.name] = {"Where": Where.UNACKED, "str": f"v-{f.name}", "int": 7}[str(f.type)]
    place = Location(**values)
    read = ("c-1", "task", "row-1", "demo.process_video", "tag", None)
    assert quick_message(read, place, 3).location == replace(place, index=3)
    bare = replace(place, delivery_tag="")
    assert quick_message(read, bare, 3).location == replace(bare, index=3, delivery_tag="tag")


def test_not_fine_is_every_id_fine_rejects() -> None:
    rng = random.Random(3)
    pool = [f"i{n}" for n in range(60)]
    for _ in range(200):
        checked = {k: set(rng.sample(pool, 30)) for k in ("task", "sub_task")
                   if rng.random() < 0.9}
        problems = {k: frozenset(rng.sample(pool, 10)) for k in ("task", "sub_task")
                    if rng.random() < 0.9}
        verdicts = Verdicts(checked, problems, Lookup())
        for kind in ("task", "sub_task", "other"):
            ids = set(rng.sample(pool, 25))
            assert verdicts.not_fine(kind, ids) == {i for i in ids
                                                   if not verdicts.fine(kind, i)}


LIVE, DONE = RowState(True, "pending"), RowState(False, "done")
FULL = Lookup(
    tasks={**{f"live-{n}": LIVE for n in range(8)}, **{f"done-{n}": DONE for n in range(4)},
           "7": LIVE, "12": DONE},
    sub_tasks={"s-live": RowState(True, "queued", "live-1"),
               "s-done": RowState(False, "done", "live-1"),
               "s-parent-done": RowState(True, "queued", "done-1"),
               "s-parent-gone": RowState(True, "queued", "gone-9")},
    parents={"live-1": LIVE, "done-1": DONE},
    invalid=frozenset({"bad-1", "bad-2"}))


def _full(task_ids: Any, sub_ids: Any) -> Verdicts:
    return Verdicts.build(task_ids, sub_ids, FULL)


def _anti_join(task_ids: Any, sub_ids: Any) -> Verdicts:
    """As on PostgreSQL: only the rows of the task ids that are not live."""
    not_live = {i for i in task_ids if i not in FULL.tasks or not FULL.tasks[i].active}
    partial = replace(FULL, tasks={i: r for i, r in FULL.tasks.items() if i in not_live})
    return Verdicts.build(task_ids, sub_ids, partial, not_live_tasks=not_live)


def _unchecked(task_ids: Any, sub_ids: Any) -> Verdicts:
    """A look-up that leaves some ids unchecked: those must be judged, not passed."""
    full = _full(task_ids, sub_ids)
    skip = {"live-2", "s-live"}
    return Verdicts({k: set(v) - skip for k, v in full.checked.items()},
                    {k: set(v) - skip for k, v in full.problems.items()}, full.lookup)


def _message(rng: random.Random) -> bytes:
    if rng.random() < 0.15:
        return rng.choice(UNUSUAL + EDGES)
    task_ids = [*FULL.tasks, "gone-1", "gone-2", "bad-1", "", "s-live", 7, 12, 99]
    sub_ids = [*FULL.sub_tasks, "s-gone", "live-1", "bad-2", ""]
    kind = rng.choice(["video", "video", "segment", "render", "email", "celery_id"])
    if kind == "segment":
        return envelope("demo.process_segment", ([rng.choice(sub_ids)], {}, {}))
    if kind == "render":
        return envelope("demo.render", ([], {"task_id": rng.choice(task_ids)}, {}))
    if kind == "email":
        return envelope("demo.send_email", (["a@b"], {}, {}))
    if kind == "celery_id":
        return envelope("demo.by_celery_id", headers={"id": rng.choice(["live-3", "gone-3"])})
    return envelope(body=([rng.choice(task_ids)], {}, {}),
                    properties={"delivery_tag": f"t-{rng.randrange(99)}",
                                "body_encoding": "base64"})


@pytest.mark.parametrize("look_up", [_full, _anti_join, _unchecked])
@pytest.mark.parametrize("seed", range(4))
def test_batcher_fast_path_judges_like_the_full_path(look_up: LookUp, seed: int) -> None:
    """Chunks through add_queued look up the ids, and give the findings and counts, that every
    message read the full way and passed to add gives, with look-ups that answer per id."""
    rng = random.Random(seed)
    chunks: list[tuple[Location, int, list[bytes]]] = []
    for place in PLACES:
        start = 0
        for _ in range(rng.randrange(1, 12)):
            size = rng.choice([1, 2, 5, 17, 40])
            chunks.append((place, start, [_message(rng) for _ in range(size)]))
            start += size
    batch_size = rng.choice([1, 7, 30])
    reports, asked = [], []
    for fast in (True, False):
        report = ScanReport(started_at=0.0)
        ids: dict[str, set[str]] = {"task": set(), "sub_task": set()}

        def recorded(task_ids: Any, sub_ids: Any, ids: dict[str, set[str]] = ids) -> Verdicts:
            ids["task"] |= task_ids
            ids["sub_task"] |= sub_ids
            return look_up(task_ids, sub_ids)

        with ThreadPoolExecutor(max_workers=1) as pool:
            batcher = LookupBatcher(recorded, BINDINGS, report, pool, LostTracker(()), None,
                                    batch_size=batch_size, clock=lambda: 0.0)
            for place, start, chunk in chunks:
                if fast:
                    batcher.add_queued(chunk, start, place)
                else:
                    for offset, raw in enumerate(chunk):
                        batcher.add(parse_list_element(raw, replace(place, index=start + offset),
                                                       BINDINGS))
            batcher.flush()
        reports.append(report)
        asked.append(ids)
    fast_report, full_report = reports
    assert fast_report.findings, "the mix must give findings"
    assert fast_report.findings == full_report.findings
    assert fast_report.places == full_report.places
    assert asked[0] == asked[1]
