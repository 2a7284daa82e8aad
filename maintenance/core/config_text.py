"""The config file `config init` writes: the proposals as TOML, each with its reason beside it.

No URL is ever written as a value: the file names the environment variables instead, and shows
the URLs it was made from with their passwords already redacted by the caller.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from maintenance.core.proposals import (
    BindingPick,
    Pick,
    StatusPick,
    SubTablePick,
    TaskTablePick,
    UnmanagedPick,
)


@dataclass(frozen=True)
class ConfigProposal:
    task: TaskTablePick
    sub: SubTablePick | None
    statuses: StatusPick
    statuses_present: Mapping[str, tuple[str, ...]]  # "table.column" -> statuses read
    bindings: tuple[BindingPick, ...]
    unmanaged: tuple[UnmanagedPick, ...]
    queues: tuple[str, ...]
    queues_why: str
    transport_options: Mapping[str, Any]  # what Redis shows the app set (sep, priority steps)
    transport_why: str
    sampled: int  # messages read in all
    broker_shown: str  # the broker URL, password redacted
    database_shown: str  # the database URL, password redacted
    notes: tuple[str, ...] = ()


def toml_string(text: str) -> str:
    """A TOML basic string: JSON's escapes (\\" \\\\ \\n \\uXXXX) are all valid TOML."""
    return json.dumps(text, ensure_ascii=False)


def _list(values: Sequence[str]) -> str:
    return "[" + ", ".join(toml_string(v) for v in values) + "]"


def _comment(text: str) -> str:
    return " ".join(text.split())  # a reason never breaks out of its comment line


def _proposed(key: str, value: str, why: str, marker: str = "proposed") -> str:
    return f"{key} = {value}  # {marker}: {_comment(why)}"


def _pick(key: str, pick: Pick | None) -> list[str]:
    if pick is None:
        return []
    return [_proposed(key, toml_string(pick.value), pick.why)]


def render_config(p: ConfigProposal, written_on: str) -> str:
    """The whole file; every guessed value is marked `# proposed: <why>`."""
    task = p.task
    lines = [
        f"# task-maintenance config, written by `task-cleanup config init` on {written_on}.",
        "# Every value marked '# proposed:' was guessed from the database and Redis (read-only):",
        "# check each one, then run `task-cleanup config check`. Keys not written keep their",
        "# defaults; `task-cleanup config example` documents every key.",
        "",
        "[redis]",
        "# broker_url: set $REDIS_URL in the environment (config init read",
        f"# {_comment(p.broker_shown)}). URLs are not stored in this file, so no password is",
        "# either; $RESULT_BACKEND_URL when the results live in another Redis.",
        *_transport_lines(p),
        "",
        "[database]",
        f"# url: set $DATABASE_URL (config init read {_comment(p.database_shown)}).",
        "",
        "[tasks]",
        _proposed("table", toml_string(task.table.name), task.why),
    ]
    if task.table.schema:
        lines.append(_proposed("schema", toml_string(task.table.schema), "the table's schema"))
    lines += _pick("id_column", task.id_column)
    lines += _pick("status_column", task.status_column)
    present = "; ".join(
        f"{where}: {', '.join(values) or 'none'}" for where, values in p.statuses_present.items()
    )
    marker = "proposed" if p.statuses.proposed else "chosen"
    lines.append(
        _proposed(
            "active_statuses",
            _list(p.statuses.values),
            f"{p.statuses.why} (statuses present: {present})",
            marker,
        )
    )
    lines += _pick("updated_at_column", task.updated_at_column)
    if task.updated_at_column is None:
        lines.append('# updated_at_column = ""  (none found: no lost-row detection)')
    lines += _pick("celery_id_column", task.celery_id_column)
    if task.others:
        lines.append(f"# other candidates for the task table: {', '.join(task.others)}")
    lines += ["", "[sub_tasks]"]
    lines += _sub_lines(p.sub, task)
    lines += [""]
    lines += _binding_lines(p)
    lines += [
        "[scan]",
        _proposed("queues", _list(p.queues), p.queues_why),
    ]
    if p.notes:
        lines += ["", *(f"# note: {_comment(note)}" for note in p.notes)]
    return "\n".join(lines) + "\n"


def toml_value(value: Any) -> str:
    if isinstance(value, str):
        return toml_string(value)
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return str(value)
    if isinstance(value, list | tuple):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    if isinstance(value, Mapping):
        return "{ " + ", ".join(f"{k} = {toml_value(v)}" for k, v in value.items()) + " }"
    raise TypeError(f"no TOML for {type(value).__name__}")


def _transport_lines(p: ConfigProposal) -> list[str]:
    if not p.transport_options:
        return []
    return [
        "# The app's broker_transport_options, as Redis shows them (under `celery -A app",
        "# maintenance` they come from the app itself):",
        _proposed("transport_options", toml_value(dict(p.transport_options)), p.transport_why),
    ]


def _sub_lines(sub: SubTablePick | None, task: TaskTablePick) -> list[str]:
    if sub is None:
        link = f"{task.table.qualified}.{task.id_column.value}"
        return [
            _proposed(
                "table", '""', f"none found (no table has a foreign key to {link}): no sub-tasks"
            )
        ]
    lines = [_proposed("table", toml_string(sub.table.name), sub.why)]
    if sub.table.schema:
        lines.append(_proposed("schema", toml_string(sub.table.schema), "the table's schema"))
    lines += _pick("id_column", sub.id_column)
    lines += _pick("parent_column", sub.parent_column)
    if sub.status_column is not None:
        lines += _pick("status_column", sub.status_column)
    else:
        lines.append(
            'status_column = ""  # proposed: none found; a sub-task lives as long as its row'
        )
    return lines


def _binding_lines(p: ConfigProposal) -> list[str]:
    lines: list[str] = []
    if not p.sampled:
        lines += [
            "# No message waits in the queues, so no binding could be proposed. Add one per task",
            "# name that carries a row id (`config init` again once messages are queued):",
        ]
    elif not p.bindings:
        lines.append("# No sampled message carries ids of these tables. Add bindings by hand:")
    if not p.bindings:
        lines += [
            "# [[bindings]]",
            '# task = "app.tasks.process"   # a Celery task name, or a glob',
            '# id_from = "args[0]"          # or "kwargs.NAME", or "task_id"',
            '# kind = "task"                # or "sub_task"',
            "",
        ]
    for binding in p.bindings:
        lines += [
            "[[bindings]]",
            f"task = {toml_string(binding.task)}",
            _proposed("id_from", toml_string(binding.id_from), binding.why),
            _proposed("kind", toml_string(binding.kind), "where those ids were found"),
            "",
        ]
    for unmanaged in p.unmanaged:
        lines.append(f"# {unmanaged.task}: {_comment(unmanaged.why)}")
    if p.unmanaged:
        lines.append("")
    return lines
