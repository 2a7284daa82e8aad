"""`config init`'s and `config check`'s decisions on hand-made facts: which table is the task
table, which columns, which statuses, which queues, which argument carries a row id, what a
config gets wrong, and the file they are written to. Pure, no servers."""

from __future__ import annotations

import tomllib
import uuid

import orjson
import pytest

from maintenance.config import settings_from_mapping
from maintenance.core.bindings import Binding
from maintenance.core.config_check import (
    TableConfig,
    check_layout,
    check_queues,
    check_statuses,
    check_table,
    judge_tasks,
)
from maintenance.core.config_text import ConfigProposal, render_config
from maintenance.core.envelope import Call, read_call
from maintenance.core.proposals import (
    BindingPick,
    ColumnFact,
    ForeignKeyFact,
    IdTable,
    KeyLayout,
    ListFact,
    QueueFact,
    Sample,
    StatusPick,
    TableFact,
    UnmanagedPick,
    binding_prefixes,
    binding_queue,
    candidate_values,
    celery_id_column,
    detect_sep,
    parse_status_answer,
    propose_active_statuses,
    propose_binding,
    propose_queues,
    propose_sub_table,
    propose_task_table,
    propose_transport,
    queue_facts,
    split_band,
    status_column,
    tokens,
    updated_at_column,
)

SEP = "\x06\x16"
STEPS = (0, 3, 6, 9)


def col(name: str, kind: str = "string", type_name: str = "") -> ColumnFact:
    return ColumnFact(name, kind, type_name)  # type: ignore[arg-type]  # kinds given as text


JOBS = TableFact(
    "video_jobs",
    "app",
    (
        col("id", "uuid", "UUID"),
        col("status", type_name="VARCHAR(20)"),
        col("updated_at", "datetime", "TIMESTAMP"),
        col("celery_task_id", type_name="VARCHAR(64)"),
        col("title"),
    ),
    ("id",),
)
PARTS = TableFact(
    "video_job_parts",
    "app",
    (col("id", "uuid"), col("job_id", "uuid"), col("status"), col("idx", "integer")),
    ("id",),
    (ForeignKeyFact(("job_id",), "app.video_jobs", ("id",)),),
)
USERS = TableFact("users", "", (col("id", "integer"), col("status"), col("email")), ("id",))
EVENTS = TableFact(
    "job_events",
    "app",
    (col("id", "integer"), col("job_id", "uuid"), col("kind")),
    ("id",),
    (ForeignKeyFact(("job_id",), "app.video_jobs", ("id",)),),
)
CELERY_META = TableFact(
    "celery_taskmeta", "", (col("id", "integer"), col("status"), col("task_id")), ("id",)
)


def sample(queue: str, name: str, *args: object, **kwargs: object) -> Sample:
    return Sample(queue, Call(str(uuid.uuid4()), name, tuple(args), dict(kwargs)))


# -- tables and columns -------------------------------------------------------------------------
def test_tokens_split_words_and_plurals() -> None:
    assert tokens("video_job_parts") == {"video", "job", "part"}
    assert tokens("BackgroundJobs") == {"background", "job"}
    assert tokens("process") == {"process"}  # not "proces"


def test_the_task_table_is_named_like_one_has_a_status_and_a_key() -> None:
    pick = propose_task_table([USERS, PARTS, JOBS, CELERY_META, EVENTS])
    assert pick is not None
    assert pick.table is JOBS
    assert (pick.id_column.value, pick.status_column.value) == ("id", "status")
    assert pick.updated_at_column is not None and pick.updated_at_column.value == "updated_at"
    assert pick.celery_id_column is not None and pick.celery_id_column.value == "celery_task_id"
    assert "named like a task/job table" in pick.why
    # the result backend's own table is never proposed; the child table ranks below its parent
    assert pick.others == ("users", "app.video_job_parts")


def test_no_candidate_without_a_primary_key_or_a_status() -> None:
    keyless = TableFact("jobs", "", (col("id", "integer"), col("status")), ())
    statusless = TableFact("tasks", "", (col("id", "integer"), col("name")), ("id",))
    numeric_status = TableFact(
        "tasks", "", (col("id", "integer"), col("status", "integer")), ("id",)
    )
    assert propose_task_table([keyless, statusless, numeric_status]) is None


def test_sampled_ids_point_at_a_table_not_named_like_tasks() -> None:
    """An `orders` app: the messages' values are ids of `orders`, which wins over a `jobs`
    table no message refers to."""
    orders = TableFact("orders", "", (col("id", "uuid"), col("state"), col("total")), ("id",))
    jobs = TableFact("cron_jobs", "", (col("id", "integer"), col("status")), ("id",))
    assert propose_task_table([orders, jobs], evidence={"orders": 5}).table is orders  # type: ignore[union-attr]
    assert propose_task_table([orders, jobs]).table is jobs  # type: ignore[union-attr]


def test_a_forced_task_table_by_name_or_qualified_name() -> None:
    assert propose_task_table([JOBS, USERS], forced="users").table is USERS  # type: ignore[union-attr]
    assert propose_task_table([JOBS, USERS], forced="app.video_jobs").table is JOBS  # type: ignore[union-attr]
    assert propose_task_table([JOBS], forced="nope") is None


NAMED = [col("state"), col("modified_at", "datetime"), col("celery_id")]
SUFFIXED = [col("job_status"), col("modified", "number"), col("task_id")]
WRONG_TYPES = [col("status", "integer"), col("updated_at", "string"), col("celery_id", "integer")]


@pytest.mark.parametrize(
    ("columns", "status", "updated", "celery"),
    [
        (NAMED, "state", "modified_at", "celery_id"),
        (SUFFIXED, "job_status", "modified", "task_id"),
        (WRONG_TYPES, None, None, None),
    ],
)
def test_columns_by_name_and_type(
    columns: list[ColumnFact], status: str | None, updated: str | None, celery: str | None
) -> None:
    table = TableFact("jobs", "", (col("id", "integer"), *columns), ("id",))
    assert (p.value if (p := status_column(table)) else None) == status
    assert (p.value if (p := updated_at_column(table)) else None) == updated
    assert (p.value if (p := celery_id_column(table)) else None) == celery


def test_a_foreign_key_task_id_is_the_parent_not_the_celery_id() -> None:
    table = TableFact(
        "steps",
        "",
        (col("id", "integer"), col("task_id"), col("status")),
        ("id",),
        (ForeignKeyFact(("task_id",), "tasks", ("id",)),),
    )
    assert celery_id_column(table) is None


def test_the_sub_task_table_by_its_foreign_key() -> None:
    task = propose_task_table([JOBS, PARTS, EVENTS])
    assert task is not None
    sub = propose_sub_table([JOBS, PARTS, EVENTS], task)
    assert sub is not None and sub.table is PARTS  # an events log has no status: not sub-tasks
    assert sub.parent_column.value == "job_id"
    assert sub.status_column is not None and sub.status_column.value == "status"
    assert "app.video_job_parts.job_id -> app.video_jobs.id" in sub.why
    assert propose_sub_table([JOBS, EVENTS], task) is None


# -- statuses ---------------------------------------------------------------------------------
def test_active_statuses_proposed_from_those_present() -> None:
    pick = propose_active_statuses(["done", "failed", "pending", "running"])
    assert pick.values == ("pending", "running") and pick.proposed
    # unknown statuses count as still to run: leaving a live one out would remove its messages
    pick = propose_active_statuses(["archived", "awaiting_upload", "queued"])
    assert pick.values == ("queued", "awaiting_upload")
    assert "awaiting_upload: not known as final" in pick.why
    assert propose_active_statuses([]).values == ("pending", "queued", "processing")
    assert propose_active_statuses(["done", "failed"]).values == ("pending", "queued", "processing")


def test_status_answers_by_name_or_number() -> None:
    present = ["done", "pending", "running"]
    assert parse_status_answer("2, 3", present) == ("pending", "running")
    assert parse_status_answer("pending,new,pending", present) == ("pending", "new")
    assert parse_status_answer(" , ", present) == ()


# -- queues -----------------------------------------------------------------------------------
def test_queues_from_bindings_and_lists_with_their_priority_bands() -> None:
    message = orjson.dumps(
        {"headers": {"task": "a.b", "id": "x"}, "body": "W1tdLCB7fSwge31d",
         "content-type": "application/json", "properties": {"body_encoding": "base64"}}
    )  # fmt: skip
    bindings = {
        "video": {f"video{SEP}{SEP}video"},
        "celery": {f"celery{SEP}{SEP}celery", f"empty{SEP}{SEP}empty"},
        "celery.pidbox": {f"{SEP}{SEP}worker1.celery.pidbox"},
        "celeryev": {f"worker.#{SEP}*{SEP}celeryev.1234"},
    }
    lists = [
        ListFact("video", 5),
        ListFact(f"video{SEP}6", 2),
        ListFact("legacy", 3, message),  # no binding, but Celery messages: a queue
        ListFact("recent_events", 9, b'{"not": "a message"}'),  # an app's own list
        ListFact("abc.reply.celery.pidbox", 1, message),
    ]
    facts = queue_facts(bindings, lists, SEP, STEPS)
    assert [(q.name, q.bound, dict(q.lengths)) for q in facts] == [
        ("celery", True, {}),
        ("empty", True, {}),
        ("legacy", False, {0: 3}),
        ("video", True, {0: 5, 6: 2}),
    ]
    names, why = propose_queues([*facts, QueueFact("maintenance", True)])
    assert names == ("celery", "empty", "legacy", "video")
    assert "video (bound, 7 waiting; band 6: 2)" in why
    assert propose_queues([]) == (("celery",), propose_queues([])[1])


def test_kombu_key_names() -> None:
    assert binding_queue(f"rk{SEP}{SEP}q1", SEP) == "q1"
    assert binding_queue("garbage", SEP) is None
    assert split_band(f"q{SEP}3", SEP, STEPS) == ("q", 3)
    assert split_band(f"q{SEP}4", SEP, STEPS) == (f"q{SEP}4", 0)  # not a priority step
    assert split_band("q", SEP, STEPS) == ("q", 0)


# -- bindings ---------------------------------------------------------------------------------
TASK = IdTable("app.video_jobs", "id")
SUB = IdTable("app.video_job_parts", "id")


def test_the_argument_whose_values_are_row_ids() -> None:
    jobs = [str(uuid.uuid4()) for _ in range(4)]
    samples = [sample("video", "media.process", j, 3, mode="fast") for j in jobs]
    samples.append(sample("video", "media.process", str(uuid.uuid4()), 3, mode="fast"))  # orphan
    pick = propose_binding("media.process", samples, TASK, SUB, set(jobs), set())
    assert isinstance(pick, BindingPick)
    assert (pick.id_from, pick.kind) == ("args[0]", "task")
    assert "5 distinct value(s), 4 found in app.video_jobs.id" in pick.why
    assert "orphans, or not ids" in pick.why
    assert jobs[0] in candidate_values(samples)


def test_a_sub_task_id_in_kwargs_beats_its_parent_in_args() -> None:
    parts = {str(uuid.uuid4()): str(uuid.uuid4()) for _ in range(3)}  # part -> job
    samples = [sample("render", "media.render_part", job, part_id=p) for p, job in parts.items()]
    samples.append(
        sample("render", "media.render_part", next(iter(parts.values())), part_id="gone")
    )
    pick = propose_binding("media.render_part", samples, TASK, SUB, set(parts.values()), set(parts))
    assert isinstance(pick, BindingPick)
    assert (pick.id_from, pick.kind) == ("kwargs.part_id", "sub_task")


def test_the_celery_id_as_the_row_id() -> None:
    samples = [sample("q", "media.by_id") for _ in range(3)]
    ids = {s.call.task_id for s in samples}
    pick = propose_binding("media.by_id", samples, TASK, None, ids, set())
    assert isinstance(pick, BindingPick) and pick.id_from == "task_id"


def test_integer_evidence_needs_two_ids_or_a_name() -> None:
    """`retries=3` equals job 3 by chance; a `job_id` keyword or two distinct ids do not."""
    ints = IdTable("jobs", "id")
    ids = {str(i) for i in range(1, 50)}
    chance = [sample("q", "shop.cleanup_tmp", "/tmp/x", 3) for _ in range(4)]
    assert isinstance(
        propose_binding("shop.cleanup_tmp", chance, ints, None, ids, set()), UnmanagedPick
    )
    named = [sample("q", "shop.notify", job_id=7, channel="email")]
    pick = propose_binding("shop.notify", named, ints, None, ids, set())
    assert isinstance(pick, BindingPick) and pick.id_from == "kwargs.job_id"
    several = [sample("q", "shop.run", i) for i in (4, 5, 99)]
    pick = propose_binding("shop.run", several, ints, None, ids, set())
    assert isinstance(pick, BindingPick) and pick.id_from == "args[0]"
    assert "(the other 1: orphans, or not ids)" in pick.why


def test_a_task_that_carries_no_id_is_unmanaged() -> None:
    samples = [sample("celery", "mail.send", "a@b.c", "hi")]
    pick = propose_binding("mail.send", samples, TASK, SUB, {"x"}, {"y"})
    assert isinstance(pick, UnmanagedPick) and "unmanaged" in pick.why


def test_read_call_reads_a_celery_message_and_refuses_garbage() -> None:
    raw = orjson.dumps(
        {"headers": {"task": "a.b", "id": "t1"}, "content-type": "application/json",
         "body": orjson.dumps([[1, "x"], {"k": 2}, {}]).decode(), "properties": {}}
    )  # fmt: skip
    assert read_call(raw) == Call("t1", "a.b", (1, "x"), {"k": 2})
    assert read_call(b"not json") is None
    assert read_call(b'{"headers": {}}') is None


# -- config check -----------------------------------------------------------------------------
def test_check_table_columns_and_types() -> None:
    config = TableConfig(
        "tasks",
        "video_jobs",
        "app",
        {"id_column": "id", "status_column": "stat", "updated_at_column": "title"},
    )
    issues = check_table(config, JOBS)
    assert [(i.level, i.key) for i in issues] == [
        ("problem", "tasks.status_column"),
        ("problem", "tasks.updated_at_column"),
    ]
    assert "'stat' does not exist in app.video_jobs" in issues[0].message
    assert "must be a date/time" in issues[1].message
    assert check_table(config, None)[0].message == "table 'app.video_jobs' does not exist"


def test_check_statuses_unseen_and_missing_live_ones() -> None:
    key, configured = "tasks.active_statuses", ["pending", "queud"]
    issues = check_statuses(key, configured, ["done", "pending", "running"], True, "jobs.status")
    levels = {i.level: i.message for i in issues}
    assert "never seen in jobs.status: queud" in levels["warning"]
    assert "running (in jobs.status) look still to run" in levels["problem"]
    # a sub-task table shares the list: its own vocabulary must be in it too
    issues = check_statuses(
        key, configured, ["closed", "waiting_parts"], True, "lines.state", unseen=False
    )
    assert [(i.level, i.message.split(" (")[0]) for i in issues] == [
        ("info", "statuses in lines.state: closed, waiting_parts"),
        ("warning", "waiting_parts"),
    ]


def test_check_queues_missing_and_unconfigured() -> None:
    found = [QueueFact("video", True, {0: 3}), QueueFact("emails", True, {})]
    issues = check_queues(["video", "vidoe"], found)
    assert [(i.level, i.message.split(":")[0]) for i in issues] == [
        ("problem", "queue 'vidoe' not found in Redis (no kombu binding, no list)"),
        ("warning", "not configured, so never scanned"),
        ("info", "found"),
    ]


def test_judge_tasks_managed_unmanaged_and_why() -> None:
    jobs = [str(uuid.uuid4()) for _ in range(3)]
    samples = [sample("video", "media.process", j) for j in jobs]
    samples += [sample("video", "media.second", j) for j in jobs]  # bound to an absent args[1]
    samples += [sample("video", "media.wrong", str(uuid.uuid4()), j) for j in jobs]
    samples += [sample("video", "media.unbound", j) for j in jobs]
    samples += [sample("video", "celery.chord_unlock", "x")]  # Celery's own: not judged
    bindings = [
        Binding("media.process", "args[0]"),
        Binding("media.second", "args[1]"),
        Binding("media.wrong", "args[0]"),
    ]
    verdicts = {v.task: v for v in judge_tasks(samples, bindings, TASK, None, set(jobs), set())}
    assert sorted(verdicts) == ["media.process", "media.second", "media.unbound", "media.wrong"]
    assert verdicts["media.process"].level == "info" and verdicts["media.process"].managed
    assert verdicts["media.second"].level == "problem"
    assert "absent" in verdicts["media.second"].why
    assert verdicts["media.wrong"].level == "problem"
    assert 'use task = "media.wrong", id_from = "args[1]"' in verdicts["media.wrong"].why
    assert not verdicts["media.unbound"].managed and verdicts["media.unbound"].level == "warning"


# -- the file written ---------------------------------------------------------------------------
def test_the_written_config_loads_and_marks_every_guess() -> None:
    task = propose_task_table([JOBS, PARTS])
    assert task is not None
    proposal = ConfigProposal(
        task=task,
        sub=propose_sub_table([JOBS, PARTS], task),
        statuses=StatusPick(("pending", 'we"ird\\'), "chosen at the prompt", proposed=False),
        statuses_present={"app.video_jobs.status": ("done", "pending")},
        bindings=(BindingPick("media.process", "args[0]", "task", "a reason\nover lines"),),
        unmanaged=(UnmanagedPick("mail.send", "no id"),),
        queues=("video",),
        queues_why="found in Redis",
        transport_options={"sep": ":", "priority_steps": [0, 5]},
        transport_why="seen in Redis",
        sampled=4,
        broker_shown="redis://:***@r:6379/0",
        database_shown="postgresql://app:***@db/app",
    )
    text = render_config(proposal, "2026-12-01")
    settings = settings_from_mapping(tomllib.loads(text), env={})
    assert (settings.tasks.table, settings.tasks.schema) == ("video_jobs", "app")
    assert settings.tasks.active_statuses == ("pending", 'we"ird\\')
    assert settings.sub_tasks.parent_column == "job_id"
    assert settings.bindings == (Binding("media.process", "args[0]", "task"),)
    assert settings.redis.broker_url == "redis://localhost:6379/0"  # never written: $REDIS_URL
    assert settings.redis.transport_options == {"sep": ":", "priority_steps": [0, 5]}
    assert "postgresql://app:***@db/app" in text
    assigned = [line for line in text.splitlines() if " = " in line and not line.startswith("#")]
    unmarked = [line for line in assigned if "# proposed:" not in line and "# chosen:" not in line]
    assert unmarked == ['task = "media.process"']  # the task name is a fact, not a guess
    assert "# mail.send: no id" in text


def test_an_app_with_its_own_separator_and_priority_steps() -> None:
    """`broker_transport_options = {"sep": ":", "priority_steps": list(range(10))}`: the keys
    show both, and the config must say so or those lists are never scanned."""
    bindings = {"payments": {"payments::payments"}, "celery.pidbox": {f"{SEP}{SEP}w.pidbox"}}
    sep = detect_sep(bindings, SEP)
    assert sep == ":"
    assert detect_sep({"celery": {f"celery{SEP}{SEP}celery"}}, SEP) == SEP
    assert detect_sep({"x": {"no separator here"}}, SEP) == SEP
    lists = [ListFact("payments", 4), ListFact("payments:5", 2), ListFact("payments:9", 1)]
    facts = queue_facts(bindings, lists, sep, STEPS)
    assert [(q.name, dict(q.lengths)) for q in facts] == [("payments", {0: 4, 5: 2, 9: 1})]
    default = KeyLayout()
    seen = KeyLayout("app1:", ":", STEPS)  # and a global_keyprefix
    options, why = propose_transport(facts, seen, default)
    assert options == {"global_keyprefix": "app1:", "sep": ":", "priority_steps": list(range(10))}
    assert "prefix 'app1:'" in why and "separator ':'" in why and "band(s) 5 exist" in why
    plain = queue_facts(bindings, lists[:1], sep, STEPS)
    assert propose_transport(plain, default, default) == ({}, "")
    issues = check_layout(facts, seen, default)
    assert [i.key for i in issues] == ["redis.transport_options"] * 3
    assert "global_keyprefix 'app1:'" in issues[0].message
    assert "sep ':'" in issues[1].message and "band(s) 5" in issues[2].message
    assert check_layout(facts, seen, KeyLayout("app1:", ":", tuple(range(10)))) == []
    keys = ["app1:_kombu.binding.celery", "_kombu.binding.x", "unrelated"]
    assert binding_prefixes(keys) == {"app1:", ""}


def test_sub_task_statuses_join_the_one_list() -> None:
    """Sub-task rows are judged by tasks.active_statuses too: `open` lines must be in it."""
    pick = propose_active_statuses(["cancelled", "new", "paid", "shipped", "closed", "open"])
    assert pick.values == ("new", "open", "paid")
