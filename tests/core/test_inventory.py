"""The `queues` view's counting and the listing's reading, pure."""

from __future__ import annotations

from maintenance.core.bindings import BindingTable, parse_binding
from maintenance.core.envelope import Quick
from maintenance.core.inventory import Inventory, age_bucket, describe, name_matcher
from maintenance.core.models import Location, Message, Where

NOW = 1_800_000_000.0
PLACE = Location(Where.QUEUE, queue="q", priority=3, key="q\x06\x163")


def read(task_id: str, name: str, eta: str | None = None) -> Quick:
    return (task_id, "", None, name, "tag-" + task_id, eta, None)


def test_counts_names_etas_and_the_next_to_be_delivered() -> None:
    inv = Inventory(NOW)
    inv.queued([read("a", "x.one"), read("b", "x.two", eta="2027-01-15T08:00:00+00:00")], PLACE, 0)
    inv.queued([read("c", "x.one")], PLACE, 2)
    stock = inv.bands[PLACE.key]
    assert stock.messages == 3 and stock.by_name == {"x.one": 2, "x.two": 1}
    assert stock.eta_messages == 1 and stock.eta_furthest_s is not None
    assert stock.tail == (2, "c", "x.one")
    inv.orphan(PLACE, "x.one")
    doc = stock.as_dict()
    assert doc["by_task_name"][0] == {"name": "x.one", "messages": 2, "share": 0.6667, "orphans": 1}
    unacked = Message("u", "x.two", Location(Where.UNACKED, key="unacked"), taken_at=NOW - 700)
    inv.message(unacked)
    assert inv.unacked.as_dict()["by_age"]["< 1 h"] == 1 and inv.unacked.oldest_age_s == 700


def test_age_buckets_and_globs() -> None:
    assert [age_bucket(s) for s in (5, 100, 1000, 10_000, 100_000)] == [
        "< 1 min", "< 10 min", "< 1 h", "< 1 day", "≥ 1 day",
    ]  # fmt: skip
    glob = name_matcher("demo.*")
    assert glob("demo.render") and not glob("other.demo") and glob("demo.render")
    assert name_matcher(None)("anything")


def test_the_listing_reads_arguments_but_never_unpickles() -> None:
    bindings = BindingTable((parse_binding({"task": "demo.render", "id_from": "kwargs.task_id"}),))
    json_msg = {
        "body": '[[1], {"task_id": "r1", "tenant": 7}, {}]',
        "content-type": "application/json",
        "headers": {"task": "demo.render", "id": "c1", "retries": 2, "eta": None},
        "properties": {"delivery_tag": "t1"},
    }
    d = describe(json_msg, PLACE, bindings)
    assert (d.msg.db_id, d.retries, d.fields.kwargs["tenant"]) == ("r1", 2, 7)
    assert d.preview == '[[1],{"task_id":"r1","tenant":7}]'
    pickled = {
        "body": "gASVAAAAAAAAAAA=",
        "content-type": "application/x-python-serialize",
        "headers": {"task": "demo.render", "id": "c2", "argsrepr": "(1,)", "kwargsrepr": "{}"},
        "properties": {"delivery_tag": "t2", "body_encoding": "base64"},
    }
    d2 = describe(pickled, PLACE, bindings)
    assert d2.preview == "(1,) {}" and d2.fields.args == (1,)  # from the reprs, literals only
    v1 = {"body": "gASV", "content-type": "application/x-python-serialize", "headers": {},
          "properties": {"body_encoding": "base64"}}  # fmt: skip
    assert describe(v1, PLACE, bindings).preview == "(protocol 1 body: not shown)"
