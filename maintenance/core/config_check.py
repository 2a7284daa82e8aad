"""`config check`: is a config usable against what the database and Redis hold? Pure judgement.

The service reads the facts (the configured tables as they are, the statuses present, the queues
in Redis, a bounded sample of messages, which sampled values are row ids) and this module says
what is wrong with the config: a *problem* makes the maintenance wrong or impossible (exit 1), a
*warning* deserves a look, *info* is what was seen.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from maintenance.core.bindings import Binding, BindingTable
from maintenance.core.proposals import (
    ID_KINDS,
    BindingPick,
    ColumnKind,
    IdTable,
    KeyLayout,
    QueueFact,
    Sample,
    TableFact,
    id_like,
    is_final_status,
    looks_active,
    managed_names,
    propose_binding,
)

Level = Literal["problem", "warning", "info"]
# What each configured column is used for, hence the types it may have.
USABLE_KINDS: dict[str, tuple[tuple[ColumnKind, ...], str]] = {
    "id_column": (ID_KINDS, "an integer, uuid or text key"),
    "parent_column": (ID_KINDS, "an integer, uuid or text key"),
    "status_column": (("string",), "text: statuses are compared with active_statuses as text"),
    "updated_at_column": (("datetime", "number"), "a date/time or an epoch number"),
    "celery_id_column": (("string", "uuid"), "text or uuid, like a Celery task id"),
}


@dataclass(frozen=True)
class TableConfig:
    """What the config says of one table (core does not read the config itself)."""

    section: str  # "tasks" or "sub_tasks"
    table: str
    schema: str = ""
    columns: Mapping[str, str] = field(default_factory=dict)  # config key -> column, "" unset

    @property
    def qualified(self) -> str:
        return f"{self.schema}.{self.table}" if self.schema else self.table


@dataclass(frozen=True)
class Issue:
    level: Level
    key: str  # the config key concerned, e.g. "tasks.status_column", "scan.queues"
    message: str

    def as_dict(self) -> dict[str, str]:
        return {"level": self.level, "key": self.key, "message": self.message}


@dataclass(frozen=True)
class TaskVerdict:
    """One task name seen in the sampled messages: managed or not, and why."""

    task: str
    queues: tuple[str, ...]
    sampled: int
    managed: bool
    binding: str  # "args[0] (task)", or "" when unmanaged
    level: Level
    why: str

    def as_dict(self) -> dict[str, Any]:
        return {
            "task": self.task,
            "queues": list(self.queues),
            "sampled": self.sampled,
            "managed": self.managed,
            "binding": self.binding,
            "level": self.level,
            "why": self.why,
        }


@dataclass(frozen=True)
class CheckReport:
    issues: tuple[Issue, ...]
    tasks: tuple[TaskVerdict, ...]
    queues: tuple[QueueFact, ...]
    statuses: tuple[str, ...]  # present in the task table (bounded read)

    @property
    def usable(self) -> bool:
        return not any(i.level == "problem" for i in self.issues) and not any(
            t.level == "problem" for t in self.tasks
        )

    def as_dict(self) -> dict[str, Any]:
        by_level = {
            level: [i.as_dict() for i in self.issues if i.level == level]
            for level in ("problem", "warning", "info")
        }
        return {
            "usable": self.usable,
            "problems": by_level["problem"],
            "warnings": by_level["warning"],
            "info": by_level["info"],
            "tasks": [t.as_dict() for t in self.tasks],
            "queues": [
                {"name": q.name, "bound": q.bound, "messages": q.messages, "bands": dict(q.lengths)}
                for q in self.queues
            ],
            "statuses_present": list(self.statuses),
        }


def check_table(config: TableConfig, fact: TableFact | None) -> list[Issue]:
    """The table exists, and each configured column exists with a type it can be used as."""
    section = config.section
    if fact is None:
        return [Issue("problem", f"{section}.table", f"table {config.qualified!r} does not exist")]
    issues: list[Issue] = []
    names = ", ".join(c.name for c in fact.columns)
    for key, name in config.columns.items():
        if not name:
            continue
        column = fact.column(name)
        if column is None:
            issues.append(
                Issue(
                    "problem",
                    f"{section}.{key}",
                    f"column {name!r} does not exist in {config.qualified} (columns: {names})",
                )
            )
            continue
        kinds, needed = USABLE_KINDS.get(key, (ID_KINDS, ""))
        if column.kind not in kinds:
            issues.append(
                Issue(
                    "problem",
                    f"{section}.{key}",
                    f"column {name!r} is {column.type_name or column.kind}; it must be {needed}",
                )
            )
    return issues


def check_parent_type(parent: TableFact | None, sub: TableConfig, task_id_kind: str) -> list[Issue]:
    """A sub-task's parent reference should have the task id's kind, or no parent is found."""
    column = parent.column(sub.columns.get("parent_column", "")) if parent else None
    if (
        column is None
        or column.kind == task_id_kind
        or {column.kind, task_id_kind}
        <= {
            "string",
            "uuid",
        }
    ):
        return []
    return [
        Issue(
            "warning",
            "sub_tasks.parent_column",
            f"is {column.kind} but tasks.id_column is {task_id_kind}: parents may not be found",
        )
    ]


def check_statuses(
    key: str,
    configured: Sequence[str],
    present: Sequence[str],
    complete: bool,
    column: str,
    *,
    unseen: bool = True,
) -> list[Issue]:
    """Statuses of `column` (the task table's, or the sub-task table's, judged by the same
    list): configured ones never seen (a typo?); ones present that look still to run but are
    not configured (a problem: their rows count as finished, so their live messages as
    orphans); ones present, neither configured nor clearly final (a warning, same reason).
    `unseen` False: the list is shared with another table, so a status absent here is fine."""
    where = f"in {column}" + ("" if complete else " (newest rows)")
    issues: list[Issue] = []
    if present:
        issues.append(Issue("info", key, f"statuses {where}: {', '.join(present)}"))
    never = [s for s in configured if s not in present]
    if unseen and never and present:
        issues.append(
            Issue("warning", key, f"never seen {where}: {', '.join(never)} (a typo? or just rare)")
        )
    missing = [s for s in present if s not in configured and looks_active(s)]
    if missing:
        issues.append(
            Issue(
                "problem",
                key,
                f"{', '.join(missing)} ({where}) look still to run but are not in "
                "active_statuses: their rows count as finished, so their live messages would "
                "be removed as orphans",
            )
        )
    unsure = [
        s for s in present if s not in configured and not looks_active(s) and not is_final_status(s)
    ]
    if unsure:
        issues.append(
            Issue(
                "warning",
                key,
                f"{', '.join(unsure)} ({where}) not in active_statuses, so finished: are they? "
                "A live one left out makes its messages orphans",
            )
        )
    return issues


def check_layout(
    queues: Sequence[QueueFact], seen: KeyLayout, configured: KeyLayout
) -> list[Issue]:
    """The transport options must name the keys the app's kombu writes: a wrong key prefix or
    separator, or a missing priority step, hides those lists from every scan."""
    issues = []
    for option, found, set_ in (
        ("global_keyprefix", seen.prefix, configured.prefix),
        ("sep", seen.sep, configured.sep),
    ):
        if found != set_:
            issues.append(
                Issue(
                    "problem",
                    "redis.transport_options",
                    f"kombu's keys use {option} {found!r}, the config {set_!r}: set "
                    f"transport_options.{option} (or run under `celery -A app maintenance`)",
                )
            )
    for queue in queues:
        missing = sorted(set(queue.lengths) - set(configured.steps))
        if missing:
            issues.append(
                Issue(
                    "problem",
                    "redis.transport_options",
                    f"queue {queue.name!r} has priority lists of band(s) "
                    f"{', '.join(map(str, missing))} that priority_steps lacks: their messages "
                    "are never scanned",
                )
            )
    return issues


def check_queues(configured: Sequence[str], found: Sequence[QueueFact]) -> list[Issue]:
    """Configured queues must exist in Redis; queues that exist but are not scanned may hide
    orphans (a warning: they may belong to another app)."""
    names = {q.name: q for q in found}
    issues = [
        Issue(
            "problem",
            "scan.queues",
            f"queue {queue!r} not found in Redis (no kombu binding, no list): a typo, or no "
            "worker ever declared it",
        )
        for queue in configured
        if queue not in names
    ]
    issues += [
        Issue("warning", "scan.queues", f"not configured, so never scanned: {q.describe()}")
        for q in found
        if q.name not in configured
    ]
    issues += [
        Issue("info", "scan.queues", f"found: {names[queue].describe()}")
        for queue in configured
        if queue in names
    ]
    return issues


def judge_tasks(
    samples: Sequence[Sample],
    bindings: Sequence[Binding],
    task: IdTable | None,
    sub: IdTable | None,
    task_hits: Collection[str],
    sub_hits: Collection[str],
) -> list[TaskVerdict]:
    """Per task name sampled: managed or not, and why (no binding; the bound argument absent;
    its values not found in the id column). `task` None: the task table is unusable, so values
    cannot be judged."""
    table = BindingTable(tuple(bindings))
    verdicts = []
    for name, group in managed_names(samples).items():
        queues = tuple(sorted({s.queue for s in group}))
        binding = table.lookup(name)
        if binding is None:
            level, why = _unbound(name, group, task, sub, task_hits, sub_hits)
            verdicts.append(TaskVerdict(name, queues, len(group), False, "", level, why))
            continue
        level, why = _bound(name, binding, group, task, sub, task_hits, sub_hits)
        label = f"{binding.id_from} ({binding.kind})"
        verdicts.append(TaskVerdict(name, queues, len(group), True, label, level, why))
    return verdicts


def _unbound(
    name: str,
    group: Sequence[Sample],
    task: IdTable | None,
    sub: IdTable | None,
    task_hits: Collection[str],
    sub_hits: Collection[str],
) -> tuple[Level, str]:
    why = "unmanaged: no [[bindings]] entry matches (counted, never judged or touched)"
    if task is None:
        return "info", why
    pick = propose_binding(name, group, task, sub, task_hits, sub_hits)
    if isinstance(pick, BindingPick):
        return "warning", f"{why}; but {pick.why}: bind it with {_binding_toml(pick)}"
    return "info", why


def _bound(
    name: str,
    binding: Binding,
    group: Sequence[Sample],
    task: IdTable | None,
    sub: IdTable | None,
    task_hits: Collection[str],
    sub_hits: Collection[str],
) -> tuple[Level, str]:
    n = len(group)
    values = [id_like(binding.extract(s.call.task_id, s.call.args, s.call.kwargs)) for s in group]
    ids = [v for v in values if v is not None]
    absent = n - len(ids)
    if not ids:
        return "problem", (
            f"{binding.id_from} is absent (or not an id) in all {n} sampled message(s): the scan "
            "reports each one as unreadable"
        )
    target = task if binding.kind == "task" else sub
    if target is None:
        return "info", f"{binding.id_from} present; the {binding.kind} table is unusable"
    hits = set(task_hits if binding.kind == "task" else sub_hits)
    distinct = set(ids)
    found = len(distinct & hits)
    if not found:
        why = (
            f"none of the {len(distinct)} distinct sampled value(s) of {binding.id_from} is an id "
            f"in {target.label}: every one of these messages would look orphaned"
        )
        pick = propose_binding(name, group, task or target, sub, task_hits, sub_hits)
        if isinstance(pick, BindingPick):
            why += f"; {pick.why}: use {_binding_toml(pick)}"
        return "problem", why
    why = f"managed: {found} of {len(distinct)} distinct sampled value(s) are ids in {target.label}"
    if found < len(distinct):
        why += " (the others: orphans, which `check` lists, or not ids)"
    if absent:
        return "warning", f"{why}; absent in {absent} of {n}: those are reported unreadable"
    return "info", why


def _binding_toml(pick: BindingPick) -> str:
    return f'task = "{pick.task}", id_from = "{pick.id_from}", kind = "{pick.kind}"'
