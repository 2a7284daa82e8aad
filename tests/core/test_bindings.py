"""Bindings: parsing `[[bindings]]`, extracting the database id, and first-match globs."""

from __future__ import annotations

from typing import Any

import pytest

from maintenance.core.bindings import Binding, BindingTable, parse_binding


@pytest.mark.parametrize(
    ("entry", "expected"),
    [
        (
            {"task": "demo.process_video", "id_from": "args[0]"},
            Binding("demo.process_video", "args[0]", "task"),
        ),
        (
            {"task": "demo.*", "id_from": "args[12]", "kind": "sub_task"},
            Binding("demo.*", "args[12]", "sub_task"),
        ),
        ({"task": "r", "id_from": "kwargs.task_id"}, Binding("r", "kwargs.task_id")),
        ({"task": "r", "id_from": "kwargs._x9"}, Binding("r", "kwargs._x9")),
        ({"task": "r", "id_from": "task_id"}, Binding("r", "task_id")),
    ],
)
def test_valid_entries_parse(entry: dict[str, Any], expected: Binding) -> None:
    """Well-formed bindings become frozen Binding values, kind defaulting to task."""
    assert parse_binding(entry) == expected


@pytest.mark.parametrize(
    ("entry", "words"),
    [
        ({"task": "x", "id_from": "args[0]", "queue": "q"}, "unknown keys ['queue']"),
        ({"id_from": "args[0]"}, "'task'"),
        ({"task": "", "id_from": "args[0]"}, "'task'"),
        ({"task": 3, "id_from": "args[0]"}, "'task'"),
        ({"task": "x"}, "'id_from'"),
        ({"task": "x", "id_from": "args[-1]"}, "'id_from'"),
        ({"task": "x", "id_from": "args[0].id"}, "'id_from'"),
        ({"task": "x", "id_from": "kwargs."}, "'id_from'"),
        ({"task": "x", "id_from": "kwargs.a.b"}, "'id_from'"),
        ({"task": "x", "id_from": "id"}, "'id_from'"),
        ({"task": "x", "id_from": "args[0]", "kind": "subtask"}, "'kind'"),
    ],
)
def test_invalid_entries_are_rejected(entry: dict[str, Any], words: str) -> None:
    """A malformed binding raises ValueError naming the field at fault."""
    with pytest.raises(ValueError) as caught:
        parse_binding(entry)
    assert words in str(caught.value)


@pytest.mark.parametrize(
    ("id_from", "args", "kwargs", "expected"),
    [
        ("args[0]", ["row-1", "x"], {}, "row-1"),
        ("args[1]", ("a", 7), {}, 7),
        ("args[2]", ["a"], {}, None),
        ("args[0]", [], {}, None),
        ("args[0]", None, None, None),
        ("args[0]", "row-1", {}, None),  # a string is not an argument list
        ("kwargs.task_id", [], {"task_id": "row-2"}, "row-2"),
        ("kwargs.task_id", [], {"other": 1}, None),
        ("kwargs.task_id", [], None, None),
        ("kwargs.task_id", [], ["task_id"], None),
        ("task_id", [], {}, "celery-id"),
    ],
)
def test_extract(id_from: str, args: Any, kwargs: Any, expected: Any) -> None:
    """The id comes from the configured place, and is None when the message lacks it."""
    assert Binding("t", id_from).extract("celery-id", args, kwargs) == expected


def test_task_id_binding_needs_no_body() -> None:
    """Only `task_id` bindings can be resolved without decoding the arguments."""
    assert not Binding("t", "task_id").needs_body
    assert Binding("t", "args[0]").needs_body
    assert Binding("t", "kwargs.a").needs_body


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("demo.process_video", Binding("demo.process_video", "args[0]")),
        ("demo.render", Binding("demo.*", "kwargs.task_id")),
        ("demo.render.hd", Binding("demo.*", "kwargs.task_id")),
        ("Demo.render", None),  # globs are case-sensitive, like task names
        ("other.task", None),
        ("seg.1", Binding("seg.?", "args[1]", "sub_task")),
        ("seg.10", None),
    ],
)
def test_first_matching_binding_wins(name: str, expected: Binding | None) -> None:
    """Bindings are tried in file order; a name no glob matches is unmanaged (None)."""
    table = BindingTable(
        (
            Binding("demo.process_video", "args[0]"),
            Binding("demo.*", "kwargs.task_id"),
            Binding("seg.?", "args[1]", "sub_task"),
        )
    )
    assert table.lookup(name) == expected
