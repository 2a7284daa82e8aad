"""Guessing an app's config from what its database and Redis hold: pure decisions over facts.

`task-cleanup config init` reads facts through an adapter (tables and their columns, the statuses
present, the queues in Redis, a bounded sample of messages, which sampled values are row ids)
and asks this module what to propose; every proposal carries the reason written next to it in
the file. Nothing here reads anything: the heuristics are unit-tested on hand-made facts.
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from maintenance.core.envelope import Call, read_call
from maintenance.core.models import RowKind

ColumnKind = Literal["integer", "uuid", "string", "datetime", "number", "other"]
ID_KINDS: tuple[ColumnKind, ...] = ("integer", "uuid", "string")

# Tables that hold task-like rows but are never the app's own: Celery's database result backend,
# django-celery-results/beat, migration tools, and our own history.
FOREIGN_TABLE_PREFIXES = (
    "celery_",
    "django_celery_",
    "alembic_",
    "maintenance_runs",
    "maintenance_actions",
)
TASK_WORDS = frozenset({"task", "job"})
SUB_WORDS = frozenset({"sub", "subtask", "part", "step", "segment", "chunk", "item", "piece"})
STATUS_NAMES = ("status", "state")
UPDATED_NAMES = (
    "updated_at",
    "modified_at",
    "modified",
    "updated",
    "last_modified",
    "last_updated",
    "changed_at",
    "updated_on",
    "modified_on",
)
CELERY_ID_NAMES = ("celery_task_id", "celery_id", "task_id", "celery_uuid", "async_task_id")
# Statuses read as "still to run" without asking (`config init --yes`). Leaving a live status out
# makes its messages look orphaned; counting a finished one in only hides some orphans. So any
# status present that is not clearly final is proposed too.
COMMON_ACTIVE = (
    "pending",
    "queued",
    "processing",
    "started",
    "running",
    "scheduled",
    "in_progress",
    "waiting",
    "retrying",
    "retry",
    "received",
    "submitted",
    "new",
    "created",
    "enqueued",
    "accepted",
    "open",
    "active",
)
FINAL_WORDS = frozenset(
    {
        "done",
        "complete",
        "completed",
        "success",
        "succeeded",
        "successful",
        "finished",
        "failed",
        "failure",
        "error",
        "errored",
        "cancelled",
        "canceled",
        "aborted",
        "revoked",
        "deleted",
        "expired",
        "archived",
        "skipped",
        "rejected",
        "timeout",
        "timed_out",
        "ok",
        "processed",
        "dead",
        "shipped",
        "delivered",
        "refunded",
        "closed",
        "resolved",
        "settled",
        "returned",
        "void",
        "voided",
        "removed",
        "purged",
        "killed",
        "terminated",
        "abandoned",
        "discarded",
        "declined",
        "invalid",
    }
)
DEFAULT_ACTIVE = ("pending", "queued", "processing")  # the config's own default
# Task names whose messages never carry an app's row id.
FOREIGN_TASK_PREFIXES = ("celery.", "maintenance.")
CONTROL_EXCHANGE_SUFFIXES = (".pidbox",)
MAX_ARGS = 8  # positional arguments looked at per message
MAX_KWARGS = 16  # keyword arguments looked at per message
MAX_ID_LENGTH = 64
ID_WORDS = frozenset({"id", "pk", "uuid"})  # a keyword argument named like an id


# -- facts ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ColumnFact:
    name: str
    kind: ColumnKind
    type_name: str = ""  # as the database names it, for messages: "VARCHAR(36)"


@dataclass(frozen=True)
class ForeignKeyFact:
    columns: tuple[str, ...]
    target: str  # the referred table, qualified as TableFact.qualified
    target_columns: tuple[str, ...]


@dataclass(frozen=True)
class TableFact:
    name: str
    schema: str = ""  # "" for the connection's default schema
    columns: tuple[ColumnFact, ...] = ()
    primary_key: tuple[str, ...] = ()
    foreign_keys: tuple[ForeignKeyFact, ...] = ()

    @property
    def qualified(self) -> str:
        return f"{self.schema}.{self.name}" if self.schema else self.name

    def column(self, name: str) -> ColumnFact | None:
        return next((c for c in self.columns if c.name == name), None)


@dataclass(frozen=True)
class ListFact:
    """A Redis list, its key without the global prefix, and its first element (LINDEX 0)."""

    key: str
    length: int
    head: bytes | None = None


@dataclass(frozen=True)
class QueueFact:
    name: str
    bound: bool  # declared: kombu keeps a binding for it
    lengths: Mapping[int, int] = field(default_factory=dict)  # priority band -> messages

    @property
    def messages(self) -> int:
        return sum(self.lengths.values())

    def describe(self) -> str:
        bands = ", ".join(f"band {b}: {n}" for b, n in sorted(self.lengths.items()) if b)
        how = "bound" if self.bound else "a list of Celery messages"
        return f"{self.name} ({how}, {self.messages} waiting{'; ' + bands if bands else ''})"


@dataclass(frozen=True)
class Sample:
    """One message read from a queue (LRANGE 0..N-1), parsed."""

    queue: str
    call: Call


# -- proposals ------------------------------------------------------------------------------
@dataclass(frozen=True)
class Pick:
    """A proposed value and why it was proposed."""

    value: str
    why: str


@dataclass(frozen=True)
class TaskTablePick:
    table: TableFact
    why: str
    id_column: Pick
    status_column: Pick
    updated_at_column: Pick | None = None
    celery_id_column: Pick | None = None
    others: tuple[str, ...] = ()  # the other candidates, best first


@dataclass(frozen=True)
class SubTablePick:
    table: TableFact
    why: str
    id_column: Pick
    parent_column: Pick
    status_column: Pick | None = None


@dataclass(frozen=True)
class StatusPick:
    values: tuple[str, ...]
    why: str
    proposed: bool  # False: the user chose them (prompt or --active-statuses)


@dataclass(frozen=True)
class BindingPick:
    task: str
    id_from: str
    kind: RowKind
    why: str


@dataclass(frozen=True)
class UnmanagedPick:
    task: str
    why: str


@dataclass(frozen=True)
class IdTable:
    """Where a kind of bound id is looked up, for the reasons' wording and the name hints."""

    qualified: str
    id_column: str

    @property
    def label(self) -> str:
        return f"{self.qualified}.{self.id_column}"


# -- names ------------------------------------------------------------------------------------
def tokens(name: str) -> set[str]:
    """Lower-case words of an identifier, singular: `VideoJobParts` -> {video, job, part}."""
    spaced = re.sub(r"(?<=[a-z0-9])(?=[A-Z])", "_", name)
    return {_singular(t) for t in re.split(r"[^a-z0-9]+", spaced.lower()) if t}


def _singular(word: str) -> str:
    return word[:-1] if len(word) > 3 and word.endswith("s") and not word.endswith("ss") else word


def is_foreign_table(table: TableFact) -> bool:
    return table.name.lower().startswith(FOREIGN_TABLE_PREFIXES)


# -- columns ----------------------------------------------------------------------------------
def id_column(table: TableFact) -> Pick | None:
    """The single-column primary key, if it has a type ids can be sent as."""
    if len(table.primary_key) != 1:
        return None
    column = table.column(table.primary_key[0])
    if column is None or column.kind not in ID_KINDS:
        return None
    return Pick(column.name, f"the primary key ({_type(column)})")


def status_column(table: TableFact) -> Pick | None:
    """`status`, `state`, else `*_status` / `*_state`, of a text type."""
    texts = [c for c in table.columns if c.kind == "string"]
    for wanted in STATUS_NAMES:
        for column in texts:
            if column.name.lower() == wanted:
                return Pick(column.name, f"named {wanted} ({_type(column)})")
    for column in texts:
        if column.name.lower().endswith(tuple(f"_{w}" for w in STATUS_NAMES)):
            return Pick(column.name, f"a status-like name ({_type(column)})")
    return None


def updated_at_column(table: TableFact) -> Pick | None:
    """A time of last change, for "lost row" detection: by name, of a date/time or epoch type."""
    usable = {c.name.lower(): c for c in table.columns if c.kind in ("datetime", "number")}
    for wanted in UPDATED_NAMES:
        if (column := usable.get(wanted)) is not None:
            return Pick(column.name, f"named {wanted} ({_type(column)}): enables lost-row checks")
    return None


def celery_id_column(table: TableFact) -> Pick | None:
    """The Celery task id stored on the row: by name, a text or uuid column that is neither the
    primary key nor a foreign key (a sub-task's `task_id` is its parent)."""
    taken = set(table.primary_key) | {c for fk in table.foreign_keys for c in fk.columns}
    usable = {
        c.name.lower(): c
        for c in table.columns
        if c.kind in ("string", "uuid") and c.name not in taken
    }
    for wanted in CELERY_ID_NAMES:
        if (column := usable.get(wanted)) is not None:
            return Pick(column.name, f"named {wanted} ({_type(column)})")
    return None


def _type(column: ColumnFact) -> str:
    return (column.type_name or column.kind).lower()


# -- the task table ---------------------------------------------------------------------------
def task_table_candidates(
    tables: Sequence[TableFact], evidence: Mapping[str, int] | None = None
) -> list[tuple[int, TableFact, list[str]]]:
    """(score, table, reasons) of every table that can be the task table, best first: it needs a
    primary key ids can be sent as and a status-like column; a name like task/job, a Celery id
    column, an updated-at column, and sampled message values found among its ids count for it; a
    table pointing at another candidate through a foreign key, or named like a part, against it
    (it is more likely the sub-task table). `evidence`: qualified name -> distinct sampled values
    found in its id column."""
    evidence = evidence or {}
    usable = [
        t
        for t in tables
        if not is_foreign_table(t) and id_column(t) is not None and status_column(t) is not None
    ]
    names = {t.qualified for t in usable}
    ranked: list[tuple[int, TableFact, list[str]]] = []
    for table in usable:
        words = tokens(table.name)
        score, why = 0, []
        if words & TASK_WORDS:
            score += 4
            why.append("named like a task/job table")
        if celery_id_column(table) is not None:
            score += 2
            why.append("stores a Celery id")
        if updated_at_column(table) is not None:
            score += 1
        if words & SUB_WORDS:
            score -= 2
        if any(fk.target in names and fk.target != table.qualified for fk in table.foreign_keys):
            score -= 3
            why.append("but points at another candidate (a sub-task table?)")
        if hits := evidence.get(table.qualified, 0):
            score += 3 + min(hits, 3)
            why.append(f"{hits} sampled message values are its ids")
        ranked.append((score, table, why))
    ranked.sort(key=lambda item: (-item[0], item[1].qualified))
    return ranked


def propose_task_table(
    tables: Sequence[TableFact],
    evidence: Mapping[str, int] | None = None,
    forced: str | None = None,
) -> TaskTablePick | None:
    """The best candidate, or the table named by `forced` (`--task-table`) if it is usable."""
    ranked = task_table_candidates(tables, evidence)
    chosen: tuple[int, TableFact, list[str]] | None = None
    if forced is not None:
        chosen = next((r for r in ranked if forced in (r[1].qualified, r[1].name)), None)
        if chosen is None:
            return None
        why = ["named with --task-table"]
    elif ranked:
        chosen = ranked[0]
        why = chosen[2] or ["the only table with a primary key and a status column"]
    if chosen is None:
        return None
    table = chosen[1]
    pk, status = id_column(table), status_column(table)
    assert pk is not None and status is not None  # candidates have both
    others = tuple(r[1].qualified for r in ranked if r[1] is not table)
    return TaskTablePick(
        table=table,
        why="; ".join([*why, f"primary key {pk.value}, status column {status.value}"]),
        id_column=pk,
        status_column=status,
        updated_at_column=updated_at_column(table),
        celery_id_column=celery_id_column(table),
        others=others,
    )


# -- the sub-task table -----------------------------------------------------------------------
def propose_sub_table(tables: Sequence[TableFact], task: TaskTablePick) -> SubTablePick | None:
    """A table whose foreign key points at the task table's id (a self-reference excluded) and
    that has a status column or a part/step-like name (a log of events about a job is not a
    sub-task table); several: the one named like a part, sharing the task table's name, or with
    a status column."""
    parent = task.table
    ranked: list[tuple[int, str, TableFact, str]] = []
    for table in tables:
        if table.qualified == parent.qualified or is_foreign_table(table):
            continue
        pk = id_column(table)
        words = tokens(table.name)
        if pk is None or (status_column(table) is None and not words & SUB_WORDS):
            continue
        for fk in table.foreign_keys:
            if (
                fk.target == parent.qualified
                and fk.target_columns == (task.id_column.value,)
                and len(fk.columns) == 1
            ):
                score = 2 * bool(words & SUB_WORDS) + bool(words & tokens(parent.name))
                score += status_column(table) is not None
                ranked.append((score, table.qualified, table, fk.columns[0]))
    if not ranked:
        return None
    ranked.sort(key=lambda item: (-item[0], item[1]))
    _, _, table, parent_column = ranked[0]
    pk = id_column(table)
    assert pk is not None
    link = f"{table.qualified}.{parent_column} -> {parent.qualified}.{task.id_column.value}"
    others = [r[1] for r in ranked[1:]]
    return SubTablePick(
        table=table,
        why=f"foreign key {link}" + (f" (also: {', '.join(others)})" if others else ""),
        id_column=pk,
        parent_column=Pick(parent_column, f"the foreign key to {parent.qualified}"),
        status_column=status_column(table),
    )


# -- statuses ---------------------------------------------------------------------------------
def is_final_status(status: str) -> bool:
    return status.strip().lower() in FINAL_WORDS


def looks_active(status: str) -> bool:
    return status.strip().lower() in COMMON_ACTIVE


def propose_active_statuses(present: Sequence[str]) -> StatusPick:
    """Every status present that is not clearly final (see COMMON_ACTIVE): when unsure, a status
    counts as still to run, which can only hide orphans, never make a live message look like
    one. No rows to read: the config's defaults."""
    if not present:
        return StatusPick(DEFAULT_ACTIVE, "no rows to read statuses from: the defaults", True)
    known = [s for s in present if looks_active(s)]
    unknown = [s for s in present if not looks_active(s) and not is_final_status(s)]
    values = tuple(dict.fromkeys([*known, *unknown]))
    if not values:
        return StatusPick(
            DEFAULT_ACTIVE,
            f"every status present looks final ({', '.join(present)}): the defaults",
            True,
        )
    why = "common still-to-run statuses present"
    if unknown:
        why += f"; {', '.join(unknown)}: not known as final, so counted as still to run"
    finals = [s for s in present if s not in values]
    if finals:
        why += f"; read as finished: {', '.join(finals)}"
    return StatusPick(values, why, True)


def parse_status_answer(answer: str, present: Sequence[str]) -> tuple[str, ...]:
    """A prompt's or `--active-statuses`' comma-separated list; numbers pick from `present`."""
    values: list[str] = []
    for item in (part.strip() for part in answer.split(",")):
        if not item:
            continue
        if item.isdigit() and 1 <= int(item) <= len(present) and item not in present:
            values.append(present[int(item) - 1])
        else:
            values.append(item)
    return tuple(dict.fromkeys(values))


# -- queues -----------------------------------------------------------------------------------
def binding_queue(member: str, sep: str) -> str | None:
    """The queue of a kombu binding-set member, `routing_key SEP pattern SEP queue`."""
    parts = member.split(sep)
    return parts[-1] if len(parts) == 3 and parts[-1] else None


def split_band(key: str, sep: str, steps: Sequence[int] | None) -> tuple[str, int]:
    """kombu's priority lists: `queue SEP step` holds band `step`; `queue` itself band 0.
    `steps` None: any number is taken for a step (the app's steps are not known)."""
    name, found, band = key.rpartition(sep)
    step = int(band) if found and name and band.isdigit() else 0
    if step and (steps is None or step in steps):
        return name, step
    return key, 0


def detect_sep(bindings: Mapping[str, Collection[str]], default: str) -> str:
    """The separator the app's kombu wrote its binding members with: `default` when they split
    with it, else the one that makes a direct binding's `queue SEP SEP queue` (an app that sets
    `broker_transport_options = {"sep": ...}`), else `default`."""
    members = [m for ex, ms in bindings.items() if not is_control_name(ex) for m in ms]
    if not members or any(binding_queue(m, default) for m in members):
        return default
    for member in members:
        for width in range(1, 5):
            half, odd = divmod(len(member) - 2 * width, 2)
            if half > 0 and not odd:
                queue, sep = member[:half], member[half : half + width]
                if member == queue + sep + sep + queue:
                    return sep
    return default


@dataclass(frozen=True)
class KeyLayout:
    """How kombu names the keys: the global key prefix, the separator, the priority steps."""

    prefix: str = ""
    sep: str = "\x06\x16"
    steps: tuple[int, ...] = (0, 3, 6, 9)


def binding_prefixes(keys: Iterable[str]) -> set[str]:
    """The global key prefixes in front of kombu's binding sets (`<prefix>_kombu.binding.x`)."""
    marker = "_kombu.binding."
    return {key[: key.index(marker)] for key in keys if marker in key}


def propose_transport(
    queues: Sequence[QueueFact], seen: KeyLayout, configured: KeyLayout
) -> tuple[dict[str, Any], str]:
    """Transport options the app must have set, seen in Redis: another separator, or priority
    lists of bands that are not kombu's default steps (then the full 0..9 range, which kombu's
    docs suggest; a superset of the app's steps only costs an LLEN of an empty list)."""
    options: dict[str, Any] = {}
    why = []
    if seen.prefix != configured.prefix:
        options["global_keyprefix"] = seen.prefix
        why.append(f"kombu's keys carry the prefix {seen.prefix!r}")
    if seen.sep != configured.sep:
        options["sep"] = seen.sep
        why.append(f"kombu's bindings are written with the separator {seen.sep!r}")
    bands = {band for q in queues for band in q.lengths}
    extra = sorted(bands - set(configured.steps))
    if extra:
        options["priority_steps"] = list(range(10)) if max(bands) <= 9 else sorted(bands | {0})
        why.append(f"priority lists of band(s) {', '.join(map(str, extra))} exist")
    return options, "; ".join(why)


def is_control_name(name: str) -> bool:
    """Celery's own plumbing: control (pidbox) and event queues and exchanges."""
    return name.endswith(CONTROL_EXCHANGE_SUFFIXES) or name.startswith(("celeryev", "_kombu."))


def queue_facts(
    bindings: Mapping[str, Collection[str]],
    lists: Sequence[ListFact],
    sep: str,
    steps: Sequence[int],
) -> list[QueueFact]:
    """Queues from kombu's binding sets (exchange -> member strings) and the lists found: a list
    is a queue if its queue is bound, or if its first message is a Celery message (an app's own
    list of anything else is not)."""
    bound: set[str] = set()
    for exchange, members in bindings.items():
        if is_control_name(exchange):
            continue
        for member in members:
            queue = binding_queue(member, sep)
            if queue and not is_control_name(queue):
                bound.add(queue)
    lengths: dict[str, dict[int, int]] = {name: {} for name in bound}
    for item in lists:
        queue, band = split_band(item.key, sep, steps)
        if queue not in bound and split_band(item.key, sep, None)[0] in bound:
            queue, band = split_band(item.key, sep, None)  # a step the config does not know
        if is_control_name(queue):
            continue
        if queue in bound or (item.head is not None and read_call(item.head) is not None):
            lengths.setdefault(queue, {})[band] = item.length
    return [
        QueueFact(name, name in bound, dict(sorted(bands.items())))
        for name, bands in sorted(lengths.items())
    ]


def propose_queues(
    queues: Sequence[QueueFact], own_queue: str = "maintenance"
) -> tuple[tuple[str, ...], str]:
    """Every queue found but the maintenance service's own; none: Celery's default `celery`."""
    names = [q for q in queues if q.name != own_queue]
    if not names:
        return (
            "celery",
        ), "no queue found in Redis (no binding, no list of messages): Celery's default"
    found = "; ".join(q.describe() for q in names)
    return tuple(q.name for q in names), f"found in Redis: {found}"


# -- bindings ---------------------------------------------------------------------------------
def id_like(value: object) -> str | None:
    """A value that could be a row id, as text: an int (not a bool) or a short token."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return str(value)
    if isinstance(value, str) and 0 < len(value) <= MAX_ID_LENGTH and value.isprintable():
        return value if not any(ch.isspace() for ch in value) else None
    return None


def accessors(call: Call) -> dict[str, str]:
    """`id_from` -> the id-like value it gives in this message: `args[N]`, `kwargs.NAME` and
    `task_id` (an app that uses the row id as the Celery id)."""
    found: dict[str, str] = {}
    for index, arg in enumerate(call.args[:MAX_ARGS]):
        if (text := id_like(arg)) is not None:
            found[f"args[{index}]"] = text
    for name in list(call.kwargs)[:MAX_KWARGS]:
        text = id_like(call.kwargs[name])
        if text is not None and re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name):
            found[f"kwargs.{name}"] = text
    found["task_id"] = call.task_id
    return found


def managed_names(samples: Iterable[Sample]) -> dict[str, list[Sample]]:
    """Sampled messages per task name, Celery's and ours left out."""
    by_name: dict[str, list[Sample]] = defaultdict(list)
    for sample in samples:
        if not sample.call.task_name.startswith(FOREIGN_TASK_PREFIXES):
            by_name[sample.call.task_name].append(sample)
    return dict(sorted(by_name.items()))


def candidate_values(samples: Iterable[Sample]) -> set[str]:
    """Every value some accessor gives in the sample: what to look up, once, in each table."""
    return {
        v for s in managed_names(samples).values() for x in s for v in accessors(x.call).values()
    }


@dataclass(frozen=True)
class _Option:
    id_from: str
    kind: RowKind
    carried: int  # messages with an id-like value there
    distinct: int
    found: int  # distinct values that are ids of the table
    hint: int  # name words shared with the table's own words


def _order(id_from: str) -> tuple[int, int, str]:
    if m := re.fullmatch(r"args\[(\d+)\]", id_from):
        return 0, int(m.group(1)), ""
    return (1, 0, id_from) if id_from.startswith("kwargs.") else (2, 0, "")


def binding_options(
    task_name: str,
    samples: Sequence[Sample],
    task: IdTable,
    sub: IdTable | None,
    task_hits: Collection[str],
    sub_hits: Collection[str],
) -> list[_Option]:
    """Each (accessor, table) whose sampled values include ids of that table, best first: most
    distinct ids found (a constant argument that happens to equal an id counts once), then the
    name words (`kwargs.part_id`, `process_part`) shared with that table alone, then kind task,
    then positional before keyword before the Celery id."""
    values: dict[str, list[str]] = defaultdict(list)
    for sample in samples:
        for id_from, value in accessors(sample.call).items():
            values[id_from].append(value)
    task_words = tokens(task.qualified.rsplit(".", 1)[-1])
    sub_words = tokens(sub.qualified.rsplit(".", 1)[-1]) if sub else set()
    tables: list[tuple[RowKind, Collection[str], set[str]]] = [
        ("task", task_hits, task_words - sub_words)
    ]
    if sub is not None:
        tables.append(("sub_task", sub_hits, sub_words - task_words))
    options = []
    for id_from, seen in values.items():
        distinct = set(seen)
        named = tokens(id_from.split(".", 1)[1]) if "." in id_from else set()
        words = tokens(task_name) | named
        for kind, hits, own_words in tables:
            matched = distinct & set(hits)
            hint = len(words & own_words)
            # One small integer that equals some id proves little (`retries=3`, `args[1]=2`):
            # integer evidence needs two distinct ids, or a name saying it is one.
            weak = all(v.lstrip("-").isdigit() for v in matched)
            if matched and (not weak or len(matched) >= 2 or hint or named & ID_WORDS):
                options.append(_Option(id_from, kind, len(seen), len(distinct), len(matched), hint))
    options.sort(
        key=lambda o: (-o.found, -o.hint, o.kind != "task", _order(o.id_from)),
    )
    return options


def propose_binding(
    task_name: str,
    samples: Sequence[Sample],
    task: IdTable,
    sub: IdTable | None,
    task_hits: Collection[str],
    sub_hits: Collection[str],
) -> BindingPick | UnmanagedPick:
    """Where `task_name`'s messages carry a row id, judged on the sample (see binding_options)."""
    options = binding_options(task_name, samples, task, sub, task_hits, sub_hits)
    n = len(samples)
    if not options:
        tables = task.label + (f" or {sub.label}" if sub else "")
        return UnmanagedPick(
            task_name,
            f"no argument of the {n} sampled message(s) holds ids of {tables}: unmanaged "
            "(counted, never judged or touched); bind it by hand if it carries a row id",
        )
    best = options[0]
    table = task if best.kind == "task" else sub
    assert table is not None
    why = (
        f"{best.id_from} of {n} sampled message(s): {best.distinct} distinct value(s), "
        f"{best.found} found in {table.label}"
    )
    if best.found < best.distinct:
        why += f" (the other {best.distinct - best.found}: orphans, or not ids)"
    if best.carried < n:
        why += f"; absent from {n - best.carried} message(s)"
    rivals = [o for o in options[1:] if o.found == best.found and o.hint == best.hint]
    if rivals:
        alt = rivals[0]
        why += f"; as likely: {alt.id_from} as {alt.kind}, check"
    return BindingPick(task_name, best.id_from, best.kind, why)
