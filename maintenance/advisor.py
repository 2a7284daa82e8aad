"""`ConfigAdvisor`: what `config init` proposes and what `config check` finds, composed.

It reads facts through the introspection adapters (`services.open_survey`, read-only, bounded)
and leaves every decision to the pure core (`core.proposals`, `core.config_check`). The CLI
reaches it through `maintenance.service`, like every other operation.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace

from maintenance.config import Settings
from maintenance.core.bindings import BindingTable
from maintenance.core.config_check import (
    CheckReport,
    Issue,
    TableConfig,
    check_layout,
    check_parent_type,
    check_queues,
    check_statuses,
    check_table,
    judge_tasks,
)
from maintenance.core.config_text import ConfigProposal
from maintenance.core.envelope import read_call
from maintenance.core.proposals import (
    BindingPick,
    IdTable,
    KeyLayout,
    QueueFact,
    Sample,
    StatusPick,
    TableFact,
    UnmanagedPick,
    candidate_values,
    detect_sep,
    id_column,
    id_like,
    is_control_name,
    managed_names,
    propose_active_statuses,
    propose_binding,
    propose_queues,
    propose_sub_table,
    propose_task_table,
    propose_transport,
    queue_facts,
    task_table_candidates,
)
from maintenance.errors import ConfigError
from maintenance.redaction import redact_url
from maintenance.services import SurveyAdapters, open_survey

EVIDENCE_TABLES = 8  # candidate task tables whose ids the sampled values are looked up in


@dataclass(frozen=True)
class StatusQuestion:
    """What `config init` asks: which of the statuses present mean "still to run"."""

    columns: Mapping[str, tuple[str, ...]]  # "table.column" -> the statuses read there
    present: tuple[str, ...]  # all of them: sub-task rows are judged by the same list
    complete: bool  # every row was read
    proposal: StatusPick


ChooseStatuses = Callable[[StatusQuestion], StatusPick]


class ConfigAdvisor:
    def __init__(self, survey: SurveyAdapters, settings: Settings, *, sample: int = 100) -> None:
        self.survey = survey
        self.settings = settings
        self.sample_size = sample
        self._hits: dict[tuple[str, str], set[str]] = {}
        self.broker = survey.broker  # under the app's key prefix once `queues` has found it
        self.seen = self._configured()

    @classmethod
    def open(cls, settings: Settings, *, sample: int = 100) -> ConfigAdvisor:
        """Connect to the broker and the database of `settings`; reads only, ever."""
        return cls(open_survey(settings), settings, sample=sample)

    def close(self) -> None:
        self.survey.close()

    def __enter__(self) -> ConfigAdvisor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- config init ----------------------------------------------------------------------------
    def propose(self, choose: ChooseStatuses, *, task_table: str | None = None) -> ConfigProposal:
        """A config for the app behind these URLs: its task (and sub-task) table and columns,
        the statuses `choose` settles, the queues found in Redis, and a binding per task name
        whose sampled values are row ids."""
        tables = self.survey.schema.tables()
        queues = self.queues()
        samples = self.samples(queues)
        values = candidate_values(samples)
        evidence = {
            table.qualified: len(self._ids(table, values))
            for _, table, _ in task_table_candidates(tables)[:EVIDENCE_TABLES]
        }
        task = propose_task_table(tables, evidence, forced=task_table)
        if task is None:
            raise ConfigError(_no_task_table(tables, task_table), key="--task-table")
        sub = propose_sub_table(tables, task)
        task_ref = IdTable(task.table.qualified, task.id_column.value)
        sub_ref = IdTable(sub.table.qualified, sub.id_column.value) if sub else None
        task_hits = self._ids(task.table, values)
        sub_hits = self._ids(sub.table, values) if sub else set()
        picks = [
            propose_binding(name, group, task_ref, sub_ref, task_hits, sub_hits)
            for name, group in managed_names(samples).items()
        ]
        read = self.survey.schema.statuses(task.table, task.status_column.value)
        columns = {f"{task.table.qualified}.{task.status_column.value}": read.values}
        complete = read.complete
        if sub is not None and sub.status_column is not None:
            sub_read = self.survey.schema.statuses(sub.table, sub.status_column.value)
            columns[f"{sub.table.qualified}.{sub.status_column.value}"] = sub_read.values
            complete = complete and sub_read.complete
        present = tuple(dict.fromkeys(v for values in columns.values() for v in values))
        question = StatusQuestion(columns, present, complete, propose_active_statuses(present))
        statuses = choose(question)
        queue_names, queues_why = propose_queues(queues, self.settings.schedule.queue)
        transport, transport_why = propose_transport(queues, self.seen, self._configured())
        notes = []
        if not complete:
            notes.append(
                f"statuses read from the newest {self.survey.schema.status_rows:,} rows only"
            )
        if not self.broker.complete:
            notes.append("Redis was read partly (bounded SCAN): queues may be missing")
        return ConfigProposal(
            task=task,
            sub=sub,
            statuses=statuses,
            statuses_present=columns,
            bindings=tuple(p for p in picks if isinstance(p, BindingPick)),
            unmanaged=tuple(p for p in picks if isinstance(p, UnmanagedPick)),
            queues=queue_names,
            queues_why=queues_why,
            transport_options=transport,
            transport_why=transport_why,
            sampled=len(samples),
            broker_shown=redact_url(self.settings.redis.broker_url),
            database_shown=redact_url(self.settings.database.url),
            notes=tuple(notes),
        )

    # -- config check ---------------------------------------------------------------------------
    def check(self) -> CheckReport:
        """The config against the live database and Redis (see core.config_check)."""
        s = self.settings
        issues: list[Issue] = []
        task_fact = self._checked_table(
            TableConfig(
                "tasks",
                s.tasks.table,
                s.tasks.schema,
                {
                    "id_column": s.tasks.id_column,
                    "status_column": s.tasks.status_column,
                    "updated_at_column": s.tasks.updated_at_column,
                    "celery_id_column": s.tasks.celery_id_column,
                },
            ),
            issues,
        )
        sub_fact = None
        if s.sub_tasks.enabled:
            sub_cfg = TableConfig(
                "sub_tasks",
                s.sub_tasks.table,
                s.sub_tasks.schema,
                {
                    "id_column": s.sub_tasks.id_column,
                    "parent_column": s.sub_tasks.parent_column,
                    "status_column": s.sub_tasks.status_column,
                },
            )
            sub_fact = self._checked_table(sub_cfg, issues)
            if sub_fact is not None and task_fact is not None:
                column = task_fact.column(s.tasks.id_column)
                issues += check_parent_type(sub_fact, sub_cfg, column.kind if column else "")
        present = self._checked_statuses(task_fact, sub_fact, issues)
        own = s.schedule.queue
        queues = [q for q in self.queues() if q.name != own or own in s.scan.queues]
        issues += check_layout(queues, self.seen, self._configured())
        issues += check_queues(s.scan.queues, queues)
        samples = self.samples(queues)
        values = candidate_values(samples) | self._bound_values(samples)
        task_ref = sub_ref = None
        task_hits: set[str] = set()
        sub_hits: set[str] = set()
        if task_fact is not None:
            task_ref = IdTable(task_fact.qualified, s.tasks.id_column)
            task_hits = self._ids(task_fact, values, s.tasks.id_column)
        if sub_fact is not None:
            sub_ref = IdTable(sub_fact.qualified, s.sub_tasks.id_column)
            sub_hits = self._ids(sub_fact, values, s.sub_tasks.id_column)
        verdicts = judge_tasks(samples, s.bindings, task_ref, sub_ref, task_hits, sub_hits)
        if not self.broker.complete:
            issues.append(Issue("info", "scan.queues", "Redis was read partly (bounded SCAN)"))
        return CheckReport(tuple(issues), tuple(verdicts), tuple(queues), present)

    def _checked_table(self, config: TableConfig, issues: list[Issue]) -> TableFact | None:
        """The table as it is, or None when the config's view of it is unusable."""
        fact = self.survey.schema.table(config.table, config.schema)
        found = check_table(config, fact)
        issues += found
        return None if found else fact

    def _checked_statuses(
        self, task: TableFact | None, sub: TableFact | None, issues: list[Issue]
    ) -> tuple[str, ...]:
        """Both tables' statuses against the one `active_statuses` list they share."""
        s = self.settings
        reads = []
        if task is not None and s.tasks.status_column:
            column = s.tasks.status_column
            reads.append((f"{task.qualified}.{column}", self.survey.schema.statuses(task, column)))
        if sub is not None and s.sub_tasks.status_column:
            column = s.sub_tasks.status_column
            reads.append((f"{sub.qualified}.{column}", self.survey.schema.statuses(sub, column)))
        seen = tuple(dict.fromkeys(v for _, read in reads for v in read.values))
        if reads:
            issues += check_statuses(
                "tasks.active_statuses",
                s.tasks.active_statuses,
                seen,
                all(read.complete for _, read in reads),
                " and ".join(where for where, _ in reads),
            )
        return seen

    # -- facts ----------------------------------------------------------------------------------
    def queues(self) -> list[QueueFact]:
        """The queues in Redis, read with the key prefix and separator the app's kombu really
        used (found from its binding sets when they differ from the config's)."""
        configured = self._configured()
        bindings = self.broker.bindings()
        if not any(not is_control_name(exchange) for exchange in bindings):
            others = self.broker.prefixes() - {configured.prefix}
            if len(others) == 1:
                self.broker = self.broker.with_prefix(others.pop())
                bindings = self.broker.bindings()
        sep = detect_sep(bindings, configured.sep)
        self.seen = replace(configured, prefix=self.broker.layout.global_keyprefix, sep=sep)
        return queue_facts(bindings, self.broker.lists(), sep, configured.steps)

    def _configured(self) -> KeyLayout:
        layout = self.survey.layout
        return KeyLayout(layout.global_keyprefix, layout.sep, tuple(layout.priority_steps))

    def samples(self, queues: Sequence[QueueFact]) -> list[Sample]:
        """At most `sample` messages per queue, parsed (never unpickled beyond plain data)."""
        out = []
        for queue in queues:
            for raw in self.broker.sample(queue, self.sample_size, self.seen.sep):
                if (call := read_call(raw)) is not None:
                    out.append(Sample(queue.name, call))
        return out

    def _bound_values(self, samples: Sequence[Sample]) -> set[str]:
        """The values the configured bindings read, wherever they point (args[20] too)."""
        table = BindingTable(self.settings.bindings)
        values = set()
        for sample in samples:
            call = sample.call
            binding = table.lookup(call.task_name)
            if binding is not None:
                value = id_like(binding.extract(call.task_id, call.args, call.kwargs))
                if value is not None:
                    values.add(value)
        return values

    def _ids(self, table: TableFact, values: set[str], column: str | None = None) -> set[str]:
        """Which sampled values are ids of `table`: one query per table, remembered."""
        if column is None:
            pk = id_column(table)
            if pk is None:
                return set()
            column = pk.value
        key = (table.qualified, column)
        if key not in self._hits:
            self._hits[key] = (
                self.survey.schema.existing_ids(table, column, values) if values else set()
            )
        return self._hits[key]


def _no_task_table(tables: Sequence[TableFact], forced: str | None) -> str:
    seen = ", ".join(t.qualified for t in tables[:30]) or "none"
    if forced:
        return (
            f"table {forced!r} cannot be the task table: it must exist, have a single-column "
            f"primary key and a text status-like column (tables seen: {seen})"
        )
    return (
        "no table looks like a task table (a single-column primary key and a text status "
        f"column, named like task/job preferred); tables seen: {seen}. Name it with --task-table"
    )
