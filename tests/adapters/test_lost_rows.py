"""The lost-row check on the database side (adapters/lost_rows.py) against the in-memory
`LostTracker` it replaces: the same findings from the same rows and sightings, on PostgreSQL and
MariaDB; a failed crossing-off fails the scan; without the TEMPORARY privilege the scan falls back
to the in-memory check and says so."""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from celery import Celery

from examples.demo.schema import new_id, tasks, utcnow
from maintenance.adapters import lost_rows
from maintenance.adapters.database import TaskDatabase, create_db_engine
from maintenance.adapters.lost_rows import ServerLostRows, TempTableRefused
from maintenance.config import Settings, load_settings
from maintenance.core.diff import LostTracker
from maintenance.core.models import Bound, Finding, Location, Message, Where
from maintenance.core.report import ScanReport
from maintenance.errors import DatabaseUnavailable
from maintenance.scan.reconciler import Reconciler
from tests.conftest import run_cli, write_config

QUEUE = Location(Where.QUEUE, queue="q", key="q")
OLD = timedelta(days=2)
STUCK_S = 86_400


@pytest.fixture(params=["database_url", "mariadb_url"])
def server_url(request: pytest.FixtureRequest) -> str:
    return str(request.getfixturevalue(request.param))


@pytest.fixture
def settings(tmp_path: Path, server_url: str) -> Settings:
    config = write_config(tmp_path / "maintenance.toml", "redis://127.0.0.1:1/0", server_url)
    settings = load_settings(config, env={})
    # Small batches: crossing off is sent in several statements.
    return dataclasses.replace(
        settings, database=dataclasses.replace(settings.database, batch_size=7)
    )


@pytest.fixture
def db(settings: Settings) -> Iterator[TaskDatabase]:
    engine = create_db_engine(settings)
    database = TaskDatabase(engine, settings)
    database.validate()
    yield database
    engine.dispose()


def insert(db: TaskDatabase, rows: list[dict[str, Any]]) -> None:
    with db.engine.begin() as conn:
        conn.execute(sa.insert(tasks), rows)


def msg(task_id: str, db_id: str | None, row_kind: Bound = "task") -> Message:
    return Message(task_id=task_id, task_name="t", db_id=db_id, row_kind=row_kind, location=QUEUE)


def described(findings: Any) -> list[tuple[Any, ...]]:
    out = [
        (f.kind, f.reason, f.task_id, f.db_id, f.location, f.detail, f.row_kind, round(f.age_s))
        for f in findings
        if isinstance(f, Finding) and f.age_s is not None
    ]
    return sorted(out, key=repr)


@pytest.mark.parametrize("cross_every", [1_000_000, 3], ids=["at-the-end", "every-3-ids"])
def test_same_findings_as_in_memory(
    db: TaskDatabase, monkeypatch: pytest.MonkeyPatch, cross_every: int
) -> None:
    """Every way a sighting crosses a row off (or does not), through the temp table and in
    memory: by id, by Celery id, sub-task ids and other row kinds never, ids compared exactly
    (case, trailing spaces: as `str` renders them), ids no text column can hold ignored.
    PostgreSQL crosses the ids seen off in bulk: once at the end, or every few ids."""
    monkeypatch.setattr(lost_rows, "CROSS_EVERY", cross_every)
    old = utcnow() - OLD
    ids = {name: f"{name}-{new_id()}"[:36] for name in "abcdefghij"}
    rows = [
        {"id": ids["a"], "status": "pending", "updated_at": old, "celery_task_id": "cid-a"},
        {"id": ids["b"], "status": "queued", "updated_at": old, "celery_task_id": "cid-b"},
        {"id": ids["c"], "status": "processing", "updated_at": old, "celery_task_id": None},
        {"id": ids["d"], "status": "pending", "updated_at": old, "celery_task_id": ""},
        {"id": ids["e"], "status": "pending", "updated_at": old, "celery_task_id": "cid-e"},
        {"id": ids["f"], "status": "pending", "updated_at": old, "celery_task_id": None},
        {"id": ids["g"], "status": "pending", "updated_at": old, "celery_task_id": "CID-G"},
        {"id": ids["h"], "status": "done", "updated_at": old, "celery_task_id": "cid-h"},
        {"id": ids["i"], "status": "pending", "updated_at": utcnow(), "celery_task_id": None},
        {"id": ids["j"], "status": "pending", "updated_at": old, "celery_task_id": "cid-j"},
    ]
    rows += [  # enough candidates for several crossing-off statements
        {"id": new_id(), "status": "pending", "updated_at": old, "celery_task_id": new_id()}
        for _ in range(40)
    ]
    insert(db, rows)
    now = time.time()
    messages = [
        msg("x1", ids["a"]),  # by id
        msg("cid-b", None),  # by Celery id, an unmanaged message
        msg("x3", ids["c"], "sub_task"),  # a sub-task id never crosses a task row off
        msg("", None),  # an empty task id is no Celery id
        msg("x5", ids["e"].upper()),  # another id under a case-insensitive collation
        msg("x6", ids["f"] + " "),  # the same id under PAD SPACE
        msg("cid-g", None),  # another Celery id under a case-insensitive collation
        msg("x\x00", "bad\x00id"),  # no database text holds these: ignored, not an error
        msg("\ud800", "\udfff"),
    ]
    messages += [msg(str(r["celery_task_id"]), None) for r in rows[10:30]]
    quick = [(m.task_id, m.row_kind, m.db_id, m.task_name, None, None, None) for m in messages]
    quick += [("y", "task", str(r["id"]), "t", None, None, None) for r in rows[30:45]]
    memory = LostTracker(db.iter_stuck(STUCK_S, now))
    server = ServerLostRows.open(db, STUCK_S, now)
    with ThreadPoolExecutor(max_workers=1) as pool:
        server.run_on(pool)
        for check in (memory, server):
            for m in messages[:4]:
                check.saw(m)
            check.saw_many(quick[4:])
    later = now + 60
    expected = described(memory.findings(later))
    assert {f[3] for f in expected} >= {ids[k] for k in "cdefgj"}
    assert {f[3] for f in expected}.isdisjoint({ids[k] for k in "abhi"})
    assert described(server.findings(later)) == expected
    with db.engine.connect() as conn:  # the tables went with the check
        if conn.dialect.name == "postgresql":
            for name in (lost_rows.TABLE, *lost_rows.SEEN_TABLES.values()):
                left = conn.execute(
                    sa.text("SELECT count(*) FROM pg_class WHERE relname = :n"), {"n": name}
                ).scalar()
                assert left == 0, name


def test_crossing_off_is_flushed_in_batches(
    db: TaskDatabase, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Sightings are sent as they come (on the given thread), not all held for the end."""
    monkeypatch.setattr(lost_rows, "FLUSH_IDS", 5)
    old = utcnow() - OLD
    rows = [{"id": new_id(), "status": "pending", "updated_at": old} for _ in range(30)]
    insert(db, rows)
    server = ServerLostRows.open(db, STUCK_S, time.time())
    with ThreadPoolExecutor(max_workers=1) as pool:
        server.run_on(pool)
        server.saw_many([("t", "task", r["id"], "", None, None, None) for r in rows[:20]])
        assert len(server._db_ids) == 0  # sent
        server.saw_many([("t", "task", r["id"], "", None, None, None) for r in rows[20:25]])
    assert {f.db_id for f in server.findings(time.time())} == {r["id"] for r in rows[25:]}


def test_ids_still_held_at_the_end_are_crossed_off_before_the_findings(db: TaskDatabase) -> None:
    """Fewer ids seen than candidates: PostgreSQL holds them all until the end, and they still
    cross their rows off before anything is reported lost."""
    old = utcnow() - OLD
    rows = [{"id": new_id(), "status": "pending", "updated_at": old} for _ in range(10)]
    insert(db, rows)
    server = ServerLostRows.open(db, STUCK_S, time.time())
    server.saw_many([("t", "task", r["id"], "", None, None, None) for r in rows[:3]])
    assert {f.db_id for f in server.findings(time.time())} == {r["id"] for r in rows[3:]}


def test_nothing_is_sent_once_no_candidate_is_left(db: TaskDatabase) -> None:
    """The usual case, no old backlog: the ids seen are not even buffered."""
    row_id = new_id()
    insert(db, [{"id": row_id, "status": "pending", "updated_at": utcnow() - OLD}])
    server = ServerLostRows.open(db, STUCK_S, time.time())
    server.saw(msg("t", "other"))
    server._cross_off(server._db_ids, [])
    server._db_ids = []
    server.saw(msg("t", row_id))
    server._cross_off(server._db_ids, [])
    server.saw(msg("t2", "more"))
    assert server._left == 0 and server._db_ids == [row_id]  # the last one was not kept
    assert list(server.findings(time.time())) == []


def test_a_failed_crossing_off_fails_the_check(db: TaskDatabase) -> None:
    """The check's session ends mid-scan: no findings, DatabaseUnavailable (a row whose message
    was seen but not crossed off must never read as lost)."""
    insert(db, [{"id": new_id(), "status": "pending", "updated_at": utcnow() - OLD}])
    server = ServerLostRows.open(db, STUCK_S, time.time())
    server.saw(msg("t", new_id()))
    with db.engine.connect() as conn:
        if conn.dialect.name == "postgresql":
            conn.execute(
                sa.text(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                    " WHERE pid <> pg_backend_pid() AND datname = current_database()"
                )
            )
        else:
            for (pid,) in conn.execute(
                sa.text(
                    "SELECT id FROM information_schema.processlist"
                    " WHERE id <> CONNECTION_ID() AND db = DATABASE()"
                )
            ):
                conn.execute(sa.text(f"KILL {int(pid)}"))
    with pytest.raises(DatabaseUnavailable):
        list(server.findings(time.time()))


@pytest.fixture
def no_temp_url(database_url: str) -> Iterator[str]:
    """A login role on the test database that may read the tables but not create temp ones."""
    admin = sa.create_engine(database_url, isolation_level="AUTOCOMMIT")
    role = f"r{new_id()[:8]}"
    with admin.connect() as conn:
        name = conn.execute(sa.text("SELECT current_database()")).scalar()
        conn.execute(sa.text(f"CREATE ROLE {role} LOGIN PASSWORD 'pw'"))
        conn.execute(sa.text(f'REVOKE TEMP ON DATABASE "{name}" FROM PUBLIC'))
        conn.execute(sa.text(f"GRANT SELECT ON ALL TABLES IN SCHEMA public TO {role}"))
    url = sa.make_url(database_url).set(username=role, password="pw")
    yield url.render_as_string(hide_password=False)
    with admin.connect() as conn:
        conn.execute(sa.text(f'GRANT TEMP ON DATABASE "{name}" TO PUBLIC'))
        conn.execute(sa.text(f"REASSIGN OWNED BY {role} TO CURRENT_USER"))
        conn.execute(sa.text(f"DROP OWNED BY {role}"))
        conn.execute(
            sa.text(
                f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = '{role}'"
            )
        )
        conn.execute(sa.text(f"DROP ROLE {role}"))
    admin.dispose()


def test_without_temp_privilege_the_scan_checks_in_memory(
    tmp_path: Path, database_url: str, no_temp_url: str
) -> None:
    """PostgreSQL without TEMP: the temp table is refused, the reconciler notes it and checks
    in memory, with the same verdict."""
    lost_id = new_id()
    owner = sa.create_engine(database_url)
    with owner.begin() as conn:
        conn.execute(
            sa.insert(tasks), [{"id": lost_id, "status": "pending", "updated_at": utcnow() - OLD}]
        )
    owner.dispose()
    config = write_config(tmp_path / "maintenance.toml", "redis://127.0.0.1:1/0", no_temp_url)
    settings = load_settings(config, env={})
    engine = create_db_engine(settings)
    db = TaskDatabase(engine, settings)
    with pytest.raises(TempTableRefused):
        ServerLostRows.open(db, STUCK_S, time.time())
    report = ScanReport(started_at=time.time())
    reconciler = Reconciler(settings, reader=None, db=db)  # type: ignore[arg-type]  # no Redis read
    check = reconciler._lost_tracker(report)
    assert isinstance(check, LostTracker)
    assert report.lost_checked
    assert any("lost rows checked in memory" in n and "temporary" in n for n in report.notes)
    assert [f.db_id for f in check.findings(time.time())] == [lost_id]
    engine.dispose()


def test_check_reports_the_same_lost_rows_end_to_end(
    tmp_path: Path, server_url: str, redis_url: str, producer: Celery
) -> None:
    """`check --json` through Redis and the database: a stuck row whose message is queued (by
    its id, or by its Celery id alone) is not lost; one with no message is; a recent one is not."""
    engine = sa.create_engine(server_url)
    lost_id, by_id, by_celery_id, recent = (new_id() for _ in range(4))
    old = utcnow() - OLD
    celery_id = new_id()
    with engine.begin() as conn:
        conn.execute(
            sa.insert(tasks),
            [
                {"id": lost_id, "status": "pending", "updated_at": old, "celery_task_id": None},
                {"id": by_id, "status": "pending", "updated_at": old, "celery_task_id": None},
                {
                    "id": by_celery_id,
                    "status": "queued",
                    "updated_at": old,
                    "celery_task_id": celery_id,
                },
                {"id": recent, "status": "pending", "updated_at": utcnow(), "celery_task_id": None},
            ],
        )
    engine.dispose()
    producer.send_task("demo.process_video", args=[by_id], queue="video_processing")
    producer.send_task("demo.unbound", queue="video_processing", task_id=celery_id)
    config = write_config(tmp_path / "maintenance.toml", redis_url, server_url)
    check = run_cli("--config", str(config), "check", "--json", "--no-results")
    assert check.returncode == 1, check.stderr
    report = json.loads(check.stdout)
    assert report["lost_checked"] is True
    lost = [(f["kind"], f["db_id"]) for f in report["findings"] if f["kind"] == "lost"]
    names = {lost_id: "lost", by_id: "by_id", by_celery_id: "by_celery_id", recent: "recent"}
    assert [names.get(db_id, db_id) for _, db_id in lost] == ["lost"]
    assert not any("in memory" in note for note in report["notes"])
