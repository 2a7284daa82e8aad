"""Bindings: which Celery task names carry which database id, and where in the message."""

from __future__ import annotations

import re
from dataclasses import dataclass
from fnmatch import fnmatchcase
from functools import lru_cache
from typing import Any

from maintenance.core.models import RowKind

ARG_PATTERN = re.compile(r"^args\[(\d+)\]$")
_KWARG = re.compile(r"^kwargs\.([A-Za-z_][A-Za-z0-9_]*)$")
_MISSING = object()


@dataclass(frozen=True, slots=True)
class Binding:
    """`task` globs Celery task names; `id_from` is `args[N]`, `kwargs.NAME` or `task_id`."""

    task: str
    id_from: str
    kind: RowKind = "task"

    @property
    def needs_body(self) -> bool:
        return self.id_from != "task_id"

    def extract(self, task_id: str, args: Any, kwargs: Any) -> Any:
        """The bound database id, or `None` when the message does not carry it."""
        if self.id_from == "task_id":
            return task_id
        index, name = _accessor(self.id_from)
        if index is not None:
            if isinstance(args, list | tuple) and index < len(args):
                return args[index]
            return None
        if isinstance(kwargs, dict):
            return kwargs.get(name)
        return None


@lru_cache(maxsize=256)
def _accessor(id_from: str) -> tuple[int | None, str]:
    """(args index, kwargs name) of an `id_from`: parsed once, not once per message."""
    if m := ARG_PATTERN.match(id_from):
        return int(m.group(1)), ""
    return None, id_from.split(".", 1)[1]


def parse_binding(entry: dict[str, Any]) -> Binding:
    """Validate one `[[bindings]]` table; raises ValueError naming the problem."""
    unknown = set(entry) - {"task", "id_from", "kind"}
    if unknown:
        raise ValueError(f"unknown keys {sorted(unknown)}; expected task, id_from, kind")
    task, id_from, kind = entry.get("task"), entry.get("id_from"), entry.get("kind", "task")
    if not isinstance(task, str) or not task:
        raise ValueError("'task' must be a Celery task name or glob")
    if not isinstance(id_from, str) or not (
        id_from == "task_id" or ARG_PATTERN.match(id_from) or _KWARG.match(id_from)
    ):
        raise ValueError(
            f"'id_from' must be 'args[N]', 'kwargs.NAME' or 'task_id', got {id_from!r}"
        )
    if kind not in ("task", "sub_task"):
        raise ValueError(f"'kind' must be 'task' or 'sub_task', got {kind!r}")
    return Binding(task=task, id_from=id_from, kind=kind)


# A task name's binding and where its id is: (binding, args index, kwargs name); both None when
# the id is the task id itself.
IdAccess = tuple[Binding, int | None, str | None]


class BindingTable:
    """First matching binding per task name; memoised, since a queue holds few distinct names."""

    def __init__(self, bindings: tuple[Binding, ...]):
        self.bindings = bindings
        self.lookup = lru_cache(maxsize=4096)(self._lookup)
        self.access = lru_cache(maxsize=4096)(self._access)

    def _lookup(self, task_name: str) -> Binding | None:
        for binding in self.bindings:
            if fnmatchcase(task_name, binding.task):
                return binding
        return None

    def _access(self, task_name: str) -> IdAccess | None:
        """`lookup` with its `id_from` already parsed: the scan's hot path reads the id itself,
        and per-message calls into `Binding.extract` cost more than the reading."""
        binding = self.lookup(task_name)
        if binding is None:
            return None
        if not binding.needs_body:
            return binding, None, None
        index, name = _accessor(binding.id_from)
        return binding, index, None if index is not None else name
