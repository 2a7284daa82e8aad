"""The task tables adapter: schema validation, batched look-ups, the scan's anti-join verdicts
against the full look-up, the stuck-row stream, errors. Each test runs on PostgreSQL, MariaDB
and SQLite alike (`db_url`); tests/adapters/test_mysql.py has MariaDB's own cases."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from examples.demo.schema import new_id, sub_tasks, tasks, utcnow
from maintenance.adapters.database import TaskDatabase, create_db_engine
from maintenance.config import Settings, load_settings, settings_from_mapping
from maintenance.core.diff import Verdicts, judge_message
from maintenance.core.models import Location, Message, RowKind, RowState, Where
from maintenance.errors import ConfigError, DatabaseUnavailable
from tests.conftest import write_config
from tests.servers import free_port

QUEUE = Location(Where.QUEUE, queue="q", key="q")


@pytest.fixture
def settings(tmp_path: Path, db_url: str) -> Settings:
    """The tests' config on this test's database (Redis is not used here: any URL does)."""
    config = write_config(tmp_path / "maintenance.toml", "redis://127.0.0.1:1/0", db_url)
    return load_settings(config, env={})


@pytest.fixture
def engine(settings: Settings) -> Iterator[sa.Engine]:
    """The engine the service would build: its pool, time-outs and driver options."""
    eng = create_db_engine(settings)
    yield eng
    eng.dispose()


def with_section(settings: Settings, section: str, **changes: object) -> Settings:
    return dataclasses.replace(
        settings, **{section: dataclasses.replace(getattr(settings, section), **changes)}
    )


def insert(engine: sa.Engine, table: sa.Table, rows: list[dict[str, object]]) -> None:
    with engine.begin() as conn:
        conn.execute(sa.insert(table), rows)


def test_lookup_in_batches(settings: Settings, engine: sa.Engine) -> None:
    """Ids spanning several batches come back with their state; absent ids are simply absent."""
    settings = with_section(settings, "database", batch_size=3)
    live = [new_id() for _ in range(5)]
    done = [new_id() for _ in range(4)]
    insert(
        engine,
        tasks,
        [{"id": i, "status": "pending", "updated_at": utcnow()} for i in live]
        + [{"id": i, "status": "done", "updated_at": utcnow()} for i in done],
    )
    gone = [new_id() for _ in range(3)]
    lookup = TaskDatabase(engine, settings).lookup(set(live + done + gone))
    assert lookup.tasks == {
        **dict.fromkeys(live, RowState(True, "pending")),
        **dict.fromkeys(done, RowState(False, "done")),
    }
    assert lookup.invalid == frozenset()


def test_lookup_sub_tasks_with_parents(settings: Settings, engine: sa.Engine) -> None:
    """Sub-task rows come with their parent's row, looked up in the same call."""
    parent, done_parent = new_id(), new_id()
    insert(
        engine,
        tasks,
        [
            {"id": parent, "status": "queued", "updated_at": utcnow()},
            {"id": done_parent, "status": "failed", "updated_at": utcnow()},
        ],
    )
    a, b, c = new_id(), new_id(), new_id()
    insert(
        engine,
        sub_tasks,
        [
            {"id": a, "task_id": parent, "status": "pending"},
            {"id": b, "task_id": done_parent, "status": "pending"},
            {"id": c, "task_id": new_id(), "status": "done"},
        ],
    )
    lookup = TaskDatabase(engine, settings).lookup((), {a, b, c, new_id()})
    assert set(lookup.sub_tasks) == {a, b, c}
    assert lookup.sub_tasks[a] == RowState(True, "pending", parent)
    assert lookup.sub_tasks[c].active is False
    assert lookup.parents == {
        parent: RowState(True, "queued"),
        done_parent: RowState(False, "failed"),
    }
    assert lookup.tasks == {}


def _settings(database_url: str) -> Settings:
    return settings_from_mapping(
        {
            "database": {"url": database_url, "batch_size": 7},
            "tasks": {"table": "tasks", "active_statuses": ["pending", "queued"]},
            "sub_tasks": {"table": "sub_tasks", "status_column": "status"},
            "bindings": [
                {"task": "t", "id_from": "args[0]"},
                {"task": "s", "id_from": "args[0]", "kind": "sub_task"},
            ],
        }
    )


def test_verdicts_judge_exactly_like_the_full_lookup(db_url: str) -> None:
    """Every id the anti-join calls fine is one judge_message lets pass with the full look-up,
    and every other id is judged the same with the partial rows it returns."""
    engine = create_db_engine(_settings(db_url))
    now = utcnow()
    with engine.begin() as conn:
        conn.execute(
            sa.insert(tasks),
            [{"id": f"live-{i}", "status": "pending", "updated_at": now} for i in range(20)]
            + [{"id": f"done-{i}", "status": "done", "updated_at": now} for i in range(10)],
        )
        conn.execute(
            sa.insert(sub_tasks),
            [
                {"id": "s-live", "task_id": "live-1", "status": "queued"},
                {"id": "s-done", "task_id": "live-1", "status": "done"},
                {"id": "s-parent-done", "task_id": "done-1", "status": "queued"},
                {"id": "s-parent-gone", "task_id": "gone-9", "status": "queued"},
            ],
        )
    db = TaskDatabase(engine, _settings(db_url))
    task_ids = (
        {f"live-{i}" for i in range(20)}
        | {f"done-{i}" for i in range(10)}
        | {f"gone-{i}" for i in range(10)}
        | {"x" * 40}  # longer than the column: cannot exist
    )
    sub_ids = {"s-live", "s-done", "s-parent-done", "s-parent-gone", "s-gone"}
    verdicts = db.verdicts(task_ids, sub_ids)
    full = db.lookup(task_ids, sub_ids)
    assert Verdicts.build(task_ids, sub_ids, full).problems == verdicts.problems
    by_kind: tuple[tuple[RowKind, set[str]], ...] = (("task", task_ids), ("sub_task", sub_ids))
    for kind, ids in by_kind:
        for db_id in ids:
            msg = Message("c", "n", QUEUE, db_id=db_id, row_kind=kind)
            expected = judge_message(msg, full)
            assert verdicts.fine(kind, db_id) == (expected is None), (kind, db_id)
            if expected is not None:
                assert judge_message(msg, verdicts.lookup) == expected, (kind, db_id)
    assert not verdicts.fine("task", "never-looked-up")
    engine.dispose()


def test_iter_stuck(settings: Settings, engine: sa.Engine) -> None:
    """Only rows still to run and untouched for longer than the stuck age are streamed."""
    old = utcnow() - timedelta(days=2)
    stuck, recent, finished = new_id(), new_id(), new_id()
    insert(
        engine,
        tasks,
        [
            {"id": stuck, "status": "processing", "updated_at": old, "celery_task_id": "cid"},
            {"id": recent, "status": "pending", "updated_at": utcnow(), "celery_task_id": None},
            {"id": finished, "status": "done", "updated_at": old, "celery_task_id": None},
        ],
    )
    rows = list(TaskDatabase(engine, settings).iter_stuck(86_400, time.time()))
    assert [(r.db_id, r.status, r.celery_id, r.row_kind) for r in rows] == [
        (stuck, "processing", "cid", "task")
    ]
    assert rows[0].updated_at is not None
    assert abs(time.time() - rows[0].updated_at - 2 * 86_400) < 60


@pytest.mark.parametrize(
    ("section", "changes", "key"),
    [
        ("tasks", {"table": "jobs"}, "tasks.table"),
        ("tasks", {"id_column": "uuid"}, "tasks.id_column"),
        ("tasks", {"updated_at_column": "modified"}, "tasks.updated_at_column"),
        ("tasks", {"celery_id_column": "celery_id"}, "tasks.celery_id_column"),
        ("sub_tasks", {"table": "steps"}, "sub_tasks.table"),
        ("sub_tasks", {"status_column": "state"}, "sub_tasks.status_column"),
    ],
)
def test_validate_names_the_bad_key(
    settings: Settings, engine: sa.Engine, section: str, changes: dict[str, object], key: str
) -> None:
    """A table or column missing from the database is a config error naming the key."""
    db = TaskDatabase(engine, with_section(settings, section, **changes))
    with pytest.raises(ConfigError) as caught:
        db.validate()
    assert caught.value.key == key
    assert caught.value.source == settings.source


@pytest.mark.parametrize("scheme", ["postgresql+psycopg2", "mysql+pymysql"])
def test_unreachable_database_is_unavailable_not_empty(scheme: str) -> None:
    """A database that cannot be reached raises DatabaseUnavailable; it never reads as no rows."""
    url = f"{scheme}://u:secret@127.0.0.1:{free_port()}/x"
    settings = with_section(_settings(url), "database", connect_timeout_s=2.0)
    db = TaskDatabase(create_db_engine(settings), settings)
    with pytest.raises(DatabaseUnavailable) as caught:
        db.lookup({new_id()})
    assert "secret" not in str(caught.value)


def test_invalid_database_url_is_a_config_error() -> None:
    """A URL SQLAlchemy cannot parse is reported against database.url."""
    with pytest.raises(ConfigError) as caught:
        create_db_engine(_settings("not a url"))
    assert caught.value.key == "database.url"


def test_iter_stuck_streams_with_a_server_side_cursor(
    settings: Settings, engine: sa.Engine
) -> None:
    """The stuck rows come through a server-side cursor (PyMySQL's SSCursor, a psycopg2 named
    cursor): the first rows arrive while the server still sends, and look-ups meanwhile go
    through other connections of the pool, never the streaming one."""
    old = utcnow() - timedelta(days=2)
    ids = [f"{i:06d}-{new_id()}"[:36] for i in range(30_000)]
    title = "t" * 200  # a result larger than the socket buffers
    insert(
        engine,
        tasks,
        [{"id": i, "status": "pending", "updated_at": old, "title": title} for i in ids],
    )
    cursors: list[Any] = []

    def note_cursor(conn: Any, cursor: Any, statement: str, *_: Any) -> None:
        if "updated_at <" in statement:
            cursors.append(cursor)

    sa.event.listen(engine, "before_cursor_execute", note_cursor)
    settings = with_section(settings, "database", batch_size=500)
    db = TaskDatabase(engine, settings)
    stream = db.iter_stuck(86_400, time.time())
    first = next(stream)
    (cursor,) = cursors
    if engine.dialect.name == "mysql":
        import pymysql.cursors

        assert isinstance(cursor, pymysql.cursors.SSCursor)
        with engine.connect() as other:  # the server is still sending to the stream
            busy = other.execute(
                sa.text("SELECT command FROM information_schema.processlist WHERE info LIKE :q"),
                {"q": "%updated_at <%"},
            ).scalars()
            assert list(busy) == ["Query"]
    elif engine.dialect.name == "postgresql":
        assert cursor.name  # a named cursor lives on the server
    # A look-up while the stream is open: its own connection, and the stream goes on.
    assert db.lookup(ids[:3]).tasks == dict.fromkeys(ids[:3], RowState(True, "pending"))
    rest = [row.db_id for row in stream]
    assert sorted([first.db_id, *rest]) == ids


def test_pinned_verdicts_see_rows_committed_during_the_scan(
    settings: Settings, engine: sa.Engine
) -> None:
    """A scan's look-ups share one connection, yet each sees the rows committed before it: a
    row the app commits after the scan's first batch is never taken for missing (MySQL's
    REPEATABLE READ would have kept the first batch's snapshot)."""
    db = TaskDatabase(engine, settings)
    late = new_id()
    with db.pinned_verdicts() as verdicts:
        assert not verdicts({late}, set()).fine("task", late)
        insert(engine, tasks, [{"id": late, "status": "pending", "updated_at": utcnow()}])
        assert verdicts({late}, set()).fine("task", late)


def test_char_id_column_matches_its_rows(db_url: str) -> None:
    """A CHAR(36) id column: PostgreSQL pads shorter ids with spaces, MySQL strips them; either
    way the row is found under the id the message carries, and a longer id cannot exist."""
    engine = sa.create_engine(db_url)
    jobs = sa.Table(
        "jobs",
        sa.MetaData(),
        sa.Column("id", sa.CHAR(36), primary_key=True),
        sa.Column("status", sa.String(20), nullable=False),
    )
    jobs.create(engine)
    uuid_id, short = new_id(), "job-7"
    insert(engine, jobs, [{"id": uuid_id, "status": "pending"}, {"id": short, "status": "done"}])
    settings = settings_from_mapping(
        {
            "database": {"url": db_url, "batch_size": 2},
            "tasks": {"table": "jobs"},
            "bindings": [{"task": "t", "id_from": "args[0]"}],
        }
    )
    db = TaskDatabase(engine, settings)
    lookup = db.lookup({uuid_id, short, "job-8", "x" * 37})
    assert lookup.tasks == {uuid_id: RowState(True, "pending"), short: RowState(False, "done")}
    assert lookup.invalid == frozenset({"x" * 37})
    verdicts = db.verdicts({uuid_id, short, "job-8"}, set())
    assert verdicts.fine("task", uuid_id)
    assert not verdicts.fine("task", short)
    assert verdicts.lookup.tasks.get(short) == RowState(False, "done")
    engine.dispose()
