"""`task-cleanup check` and the reconciliation behind it, against real Redis, PostgreSQL and Celery.

Scenario tests scan in-process through the same services the CLI uses; exit codes, output and
error handling are checked through the real command line in a subprocess.
"""

from __future__ import annotations

import base64
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import pexpect
import pytest
import redis
import sqlalchemy as sa
import structlog
from celery import Celery
from sqlalchemy.pool import NullPool

from examples.demo.schema import create_schema, new_id, sub_tasks, tasks, utcnow
from maintenance.config import Settings, load_settings
from maintenance.core.models import Finding, FindingKind, Reason, Where
from maintenance.core.report import ScanReport
from maintenance.service import Maintenance
from tests.conftest import ROOT, producer_app, run_cli, wait_for
from tests.servers import PostgresServer, free_port

SEP = "\x06\x16"
OLD = timedelta(days=2)


# -- configuration ---------------------------------------------------------------------------


def toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, list | tuple):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    raise TypeError(value)


def toml_document(doc: dict[str, Any]) -> str:
    """Enough of a TOML writer for config files: tables, sub-tables and arrays of tables."""
    lines: list[str] = []

    def table(name: str, body: dict[str, Any]) -> None:
        lines.append(f"[{name}]")
        nested = {k: v for k, v in body.items() if isinstance(v, dict)}
        lines.extend(f"{k} = {toml_value(v)}" for k, v in body.items() if k not in nested)
        for key, sub in nested.items():
            table(f"{name}.{key}", sub)

    for name, body in doc.items():
        if isinstance(body, list):
            for entry in body:
                lines.append(f"[[{name}]]")
                lines.extend(f"{k} = {toml_value(v)}" for k, v in entry.items())
        else:
            table(name, body)
    return "\n".join(lines) + "\n"


def base_config(redis_url: str, database_url: str, log_dir: Path) -> dict[str, Any]:
    return {
        "redis": {"broker_url": redis_url},
        "database": {"url": database_url},
        "tasks": {
            "table": "tasks",
            "id_column": "id",
            "status_column": "status",
            "active_statuses": ["pending", "queued", "processing"],
            "updated_at_column": "updated_at",
            "celery_id_column": "celery_task_id",
        },
        "sub_tasks": {
            "table": "sub_tasks",
            "id_column": "id",
            "parent_column": "task_id",
            "status_column": "status",
        },
        "scan": {"queues": ["video_processing", "celery"], "inspect_timeout_s": 0.3},
        "logging": {"dir": str(log_dir)},
        "bindings": [
            {"task": "demo.process_video", "id_from": "args[0]"},
            {"task": "demo.process_segment", "id_from": "args[0]", "kind": "sub_task"},
            {"task": "demo.render", "id_from": "kwargs.task_id"},
        ],
    }


class Env:
    """One test's world: a flushed Redis, a fresh database, a producer, and a config file."""

    def __init__(
        self,
        tmp_path: Path,
        redis_url: str,
        database_url: str,
        engine: sa.Engine,
        client: redis.Redis,
    ):
        self.tmp_path = tmp_path
        self.redis_url = redis_url
        self.database_url = database_url
        self.engine = engine
        self.redis = client
        self.config = base_config(redis_url, database_url, tmp_path / "logs")
        self._apps: list[Celery] = []

    @property
    def path(self) -> Path:
        path = self.tmp_path / "maintenance.toml"
        path.write_text(toml_document(self.config))
        return path

    def settings(self) -> Settings:
        return load_settings(self.path, env={})

    def producer(self, **conf: Any) -> Celery:
        app = producer_app(self.redis_url, **conf)
        self._apps.append(app)
        return app

    def rows(
        self,
        *entries: tuple[str, str],
        age: timedelta = timedelta(0),
        celery_ids: dict[str, str] | None = None,
    ) -> None:
        """Insert task rows (id, status), last updated `age` ago."""
        at = utcnow() - age
        with self.engine.begin() as conn:
            conn.execute(
                sa.insert(tasks),
                [
                    {
                        "id": row_id,
                        "status": status,
                        "updated_at": at,
                        "celery_task_id": (celery_ids or {}).get(row_id),
                    }
                    for row_id, status in entries
                ],
            )

    def sub_rows(self, *entries: tuple[str, str, str]) -> None:
        """Insert sub-task rows (id, parent id, status)."""
        with self.engine.begin() as conn:
            conn.execute(
                sa.insert(sub_tasks),
                [
                    {"id": row_id, "task_id": parent, "status": status}
                    for row_id, parent, status in entries
                ],
            )

    def scan(self, only: str | None = None) -> ScanReport:
        with Maintenance.open(self.settings()) as maintenance:
            return maintenance.scan(only)

    def cli(
        self, *args: str, env: dict[str, str] | None = None
    ) -> subprocess.CompletedProcess[str]:
        return run_cli("--config", str(self.path), *args, env=env)

    def close(self) -> None:
        for app in self._apps:
            app.close()


@pytest.fixture
def env(
    tmp_path: Path, redis_url: str, database_url: str, engine: sa.Engine, redis_client: redis.Redis
) -> Iterator[Env]:
    world = Env(tmp_path, redis_url, database_url, engine, redis_client)
    yield world
    world.close()


def summary(report: ScanReport) -> set[tuple[str, str, str | None]]:
    return {(f.kind.value, f.reason.value, f.db_id) for f in report.findings}


def by_task_id(report: ScanReport) -> dict[str, Finding]:
    return {f.task_id: f for f in report.findings}


def send(app: Celery, name: str, **options: Any) -> str:
    options.setdefault("queue", "video_processing")
    return str(app.send_task(name, **options).id)


# -- what a scan finds -----------------------------------------------------------------------


@pytest.mark.parametrize("serializer", ["json", "pickle"])
def test_every_orphan_kind(env: Env, serializer: str) -> None:
    """Rows missing or finished, and sub-tasks whose row or parent is, are orphans; live are not."""
    # Given rows in every state, and one message per row
    live, done, gone, cancelled = new_id(), new_id(), new_id(), new_id()
    env.rows(
        (live, "pending"),
        (done, "done"),
        (cancelled, "cancelled"),
        (p_live := new_id(), "processing"),
        (p_done := new_id(), "done"),
    )
    s_live, s_done, s_gone, s_orphan_parent, s_parent_done = (new_id() for _ in range(5))
    env.sub_rows(
        (s_live, p_live, "pending"),
        (s_done, p_live, "done"),
        (s_orphan_parent, new_id(), "pending"),
        (s_parent_done, p_done, "queued"),
    )
    app = env.producer(task_serializer=serializer)
    ids = {
        row: send(app, "demo.process_video", args=[row]) for row in (live, done, gone, cancelled)
    }
    ids[p_live] = send(app, "demo.render", kwargs={"task_id": p_live, "quality": "sd"})
    ids[p_done] = send(app, "demo.render", kwargs={"task_id": p_done})
    for row in (s_live, s_done, s_gone, s_orphan_parent, s_parent_done):
        ids[row] = send(app, "demo.process_segment", args=[row])

    # When the scan runs
    report = env.scan()

    # Then exactly the orphans are reported, each with its Celery id and place
    assert summary(report) == {
        ("orphan", "row_finished", done),
        ("orphan", "row_missing", gone),
        ("orphan", "row_finished", cancelled),
        ("orphan", "row_finished", p_done),
        ("orphan", "row_finished", s_done),
        ("orphan", "row_missing", s_gone),
        ("orphan", "parent_missing", s_orphan_parent),
        ("orphan", "parent_finished", s_parent_done),
    }
    found = by_task_id(report)
    for row in (live, p_live, s_live):
        assert ids[row] not in found
    assert found[ids[gone]].task_name == "demo.process_video"
    assert found[ids[gone]].location.where is Where.QUEUE
    assert found[ids[gone]].location.queue == "video_processing"
    stats = report.places["video_processing"]
    assert (stats.messages, stats.managed, stats.orphans) == (11, 11, 8)


def test_priorities_land_in_kombu_bands(env: Env) -> None:
    """Priority messages are read from kombu's sub-lists and reported with their band."""
    app = env.producer()
    live = new_id()
    env.rows((live, "pending"))
    sent = {
        priority: send(app, "demo.process_video", args=[new_id()], priority=priority)
        for priority in (0, 2, 5, 9)
    }
    for priority in (0, 5, 9):
        send(app, "demo.process_video", args=[live], priority=priority)
    report = env.scan()
    found = by_task_id(report)
    assert set(found) == set(sent.values())
    assert {p: found[tid].location.priority for p, tid in sent.items()} == {0: 0, 2: 0, 5: 3, 9: 9}
    assert found[sent[5]].location.key == f"video_processing{SEP}3"
    places = {name: (s.messages, s.orphans) for name, s in report.places.items()}
    assert places == {
        "video_processing": (3, 2),
        "video_processing[priority 3]": (2, 1),
        "video_processing[priority 9]": (2, 1),
    }


def test_unmanaged_tasks_are_counted_never_judged(env: Env) -> None:
    """Messages of task names without a binding are counted as unmanaged and never reported."""
    app = env.producer()
    send(app, "demo.send_email", args=[new_id()])
    send(app, "demo.send_email", args=[object()], serializer="pickle")
    send(app, "other.app.task", kwargs={"task_id": new_id()}, queue="celery", priority=6)
    report = env.scan()
    assert report.findings == []
    assert report.consistent
    assert report.places["video_processing"].unmanaged == 2
    assert report.places["celery[priority 6]"].unmanaged == 1
    assert report.managed_messages == 0


def test_unreadable_messages(env: Env) -> None:
    """Garbage in a queue and messages without their bound id are unreadable, never orphans."""
    app = env.producer()
    live = new_id()
    env.rows((live, "pending"))
    too_long = send(app, "demo.process_video", args=[live + "-0"])  # varchar(36) cannot hold it
    no_arg = send(app, "demo.process_video", args=[])
    no_kwarg = send(app, "demo.render", kwargs={"id": new_id()})
    bad_repr = send(app, "demo.process_video", args=[object()], serializer="pickle")
    env.redis.lpush("video_processing", b"not json{")
    env.redis.lpush(f"video_processing{SEP}6", b'{"headers": {}, "body": ""}')
    report = env.scan()
    assert {(f.kind, f.reason, f.task_id) for f in report.findings} == {
        (FindingKind.UNREADABLE, Reason.NO_BOUND_ID, no_arg),
        (FindingKind.UNREADABLE, Reason.NO_BOUND_ID, no_kwarg),
        (FindingKind.UNREADABLE, Reason.BAD_ENVELOPE, bad_repr),
        (FindingKind.UNREADABLE, Reason.BAD_ENVELOPE, ""),
        (FindingKind.UNREADABLE, Reason.BAD_ID, too_long),
    } and len(report.findings) == 6
    assert report.places["video_processing"].unreadable == 5
    assert report.places["video_processing[priority 6]"].unreadable == 1


@pytest.fixture
def typed_tables(env: Env) -> Iterator[Env]:
    """Tables whose ids are an integer and a UUID, as many apps have them."""
    metadata = sa.MetaData()
    sa.Table(
        "jobs",
        metadata,
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("status", sa.String(20)),
        sa.Column("updated_at", sa.DateTime),
    )
    sa.Table(
        "steps",
        metadata,
        sa.Column("id", sa.Uuid, primary_key=True),
        sa.Column("job_id", sa.Integer),
        sa.Column("status", sa.String(20)),
    )
    metadata.create_all(env.engine)
    env.config["tasks"] = {
        "table": "jobs",
        "id_column": "id",
        "status_column": "status",
        "updated_at_column": "updated_at",
    }
    env.config["sub_tasks"] = {
        "table": "steps",
        "id_column": "id",
        "parent_column": "job_id",
        "status_column": "status",
    }
    yield env


def test_ids_invalid_for_the_column_type_are_unreadable(typed_tables: Env) -> None:
    """An id that cannot exist in the id column's type is unreadable; valid ones are judged."""
    env = typed_tables
    step_live, step_gone = new_id(), new_id()
    with env.engine.begin() as conn:
        conn.execute(
            sa.text(
                "INSERT INTO jobs (id, status, updated_at) VALUES "
                "(1, 'pending', now()), (2, 'done', now())"
            )
        )
        conn.execute(
            sa.text(f"INSERT INTO steps (id, job_id, status) VALUES ('{step_live}', 1, 'pending')")
        )
    app = env.producer()
    fine = [
        send(app, "demo.process_video", args=[1]),
        send(app, "demo.process_video", args=["1"]),
        send(app, "demo.process_segment", args=[step_live.upper()]),
    ]
    finished = send(app, "demo.process_video", args=[2])
    missing = send(app, "demo.process_video", args=[3])
    bad = {
        send(app, "demo.process_video", args=["abc"]),
        send(app, "demo.process_video", args=["1; DROP TABLE jobs"]),
        send(app, "demo.process_video", args=[2**40]),
        send(app, "demo.process_segment", args=["not-a-uuid"]),
    }
    missing_step = send(app, "demo.process_segment", args=[step_gone])
    report = env.scan()
    found = by_task_id(report)
    assert not set(fine) & set(found)
    assert found[finished].reason is Reason.ROW_FINISHED
    assert found[missing].reason is Reason.ROW_MISSING
    assert found[missing_step].reason is Reason.ROW_MISSING
    assert {tid for tid, f in found.items() if f.reason is Reason.BAD_ID} == bad
    assert all(found[tid].kind is FindingKind.UNREADABLE for tid in bad)


def test_lost_rows(env: Env) -> None:
    """Rows still to run past the stuck age with no message anywhere are lost; others are not."""
    lost, queued, by_celery_id, recent, finished = (new_id() for _ in range(5))
    app = env.producer()
    send(app, "demo.process_video", args=[queued], priority=5)
    unmanaged_id = send(app, "demo.send_email", args=["a@b"])
    env.rows(
        (lost, "pending"),
        (queued, "queued"),
        (by_celery_id, "processing"),
        (finished, "done"),
        age=OLD,
        celery_ids={by_celery_id: unmanaged_id},
    )
    env.rows((recent, "pending"))
    with structlog.testing.capture_logs() as logs:
        report = env.scan()
    assert summary(report) == {("lost", "no_message", lost)}
    finding = report.findings[0]
    assert finding.location.where is Where.DATABASE
    assert finding.age_s is not None and abs(finding.age_s - OLD.total_seconds()) < 60
    assert report.lost_checked
    assert any(e["event"] == "scan finished" and e["lost"] == 1 for e in logs)


def test_lost_rows_need_worker_inspection(env: Env) -> None:
    """Without asking workers, running tasks cannot be told from lost ones: no lost verdict."""
    env.rows((new_id(), "pending"), age=OLD)
    env.config["scan"]["inspect_workers"] = False
    report = env.scan()
    assert report.findings == []
    assert not report.lost_checked
    assert any("lost rows not checked" in note for note in report.notes)


def test_orphans_are_logged_with_the_marker(env: Env) -> None:
    """Each orphan is logged with the seed's ⚠️ marker, and a summary line counts them."""
    tid = send(env.producer(), "demo.process_video", args=[new_id()])
    with structlog.testing.capture_logs() as logs:
        env.scan()
    assert [e["task_id"] for e in logs if e["event"] == "⚠️ orphan found"] == [tid]
    assert [e["orphans"] for e in logs if e["event"] == "⚠️ orphans found"] == [1]


# -- real workers ----------------------------------------------------------------------------


@contextmanager
def running_worker(env: Env, **extra_env: str) -> Iterator[str]:
    """A real `celery worker` of the demo app on this test's Redis and database; yields its name."""
    name = f"check-{os.getpid()}-{time.monotonic_ns()}@localhost"
    log = env.tmp_path / "worker.log"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "celery",
            "-A",
            "examples.demo.app",
            "worker",
            "-P",
            "threads",
            "-c",
            "2",
            "-Q",
            "video_processing",
            "-n",
            name,
            "--without-gossip",
            "--without-mingle",
            "--without-heartbeat",
            "-l",
            "INFO",
            "-f",
            str(log),
        ],
        env={
            **os.environ,
            "REDIS_URL": env.redis_url,
            "DATABASE_URL": env.database_url,
            "C_FORCE_ROOT": "1",
            **extra_env,
        },
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.STDOUT,
    )
    control = env.producer()
    try:

        def answers() -> bool:
            assert proc.poll() is None, log.read_text() if log.exists() else "worker died"
            return any(name in reply for reply in control.control.ping(timeout=0.2) or [])

        wait_for(answers, timeout_s=30, what="the worker to answer pings")
        yield name
    finally:
        # Cold shutdown; a thread-pool worker has no children, so a kill after 2 s is clean.
        proc.send_signal(signal.SIGQUIT)
        try:
            proc.wait(2)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def test_results_written_by_a_worker(env: Env) -> None:
    """Real results are read; past retention or without TTL they are stale, fresh ones are not."""
    fresh, old, persistent, gone = new_id(), new_id(), new_id(), new_id()
    env.rows((fresh, "pending"), (old, "pending"), (persistent, "pending"))
    app = env.producer()
    with running_worker(env):
        results = {
            row: app.send_task("demo.process_video", args=[row])
            for row in (fresh, old, persistent, gone)
        }
        for row, result in results.items():
            result.get(timeout=30, propagate=row != gone)
    assert results[gone].state == "FAILURE"
    key = {row: f"celery-task-meta-{result.id}" for row, result in results.items()}
    assert env.redis.ttl(key[fresh]) > 0
    # Age one result by three days, keeping its TTL; make another never expire.
    raw = env.redis.get(key[old])
    assert raw is not None
    doc = json.loads(raw)
    doc["date_done"] = (datetime.now(UTC) - timedelta(days=3)).isoformat()
    env.redis.set(key[old], json.dumps(doc), keepttl=True)
    env.redis.persist(key[persistent])

    report = env.scan()

    assert report.results_scanned == 4
    stale = {f.task_id: f for f in report.of_kind(FindingKind.STALE_RESULT)}
    assert set(stale) == {results[old].id, results[persistent].id}
    assert stale[results[old].id].reason is Reason.RESULT_EXPIRED
    assert abs((stale[results[old].id].age_s or 0) - 3 * 86_400) < 120
    assert stale[results[persistent].id].reason is Reason.RESULT_NO_TTL
    assert stale[results[persistent].id].location.key == key[persistent]
    assert stale[results[persistent].id].location.state == "SUCCESS"
    assert summary(report) == {
        ("stale_result", "result_expired", None),
        ("stale_result", "result_no_ttl", None),
    }
    one = env.scan(only=results[old].id)
    assert [(f.task_id, f.reason) for f in one.findings] == [
        (results[old].id, Reason.RESULT_EXPIRED)
    ]


def test_tasks_held_by_a_worker(env: Env) -> None:
    """An ETA orphan a worker holds is reported once, at unacked, with its age; live ones never."""
    busy, waiting, gone = new_id(), new_id(), new_id()
    env.rows((busy, "pending"), age=OLD)  # a lost candidate until a worker is seen running it
    env.rows((waiting, "pending"))
    app = env.producer()
    with running_worker(env, DEMO_TASK_SECONDS="6") as worker:
        # Given a task running on the worker, and two ETA tasks it holds unacknowledged
        send(app, "demo.process_video", args=[busy])

        def status_of_busy() -> bool:
            with env.engine.connect() as conn:
                return conn.scalar(sa.select(tasks.c.status).where(tasks.c.id == busy)) == (
                    "processing"
                )

        wait_for(status_of_busy, what="the worker to start the busy task")
        orphan = send(app, "demo.process_video", args=[gone], countdown=300)
        live = send(app, "demo.process_video", args=[waiting], countdown=300)
        wait_for(lambda: env.redis.hlen("unacked") == 2, what="both ETA tasks in unacked")
        assert env.redis.llen("video_processing") == 0
        env.config["scan"]["inspect_timeout_s"] = 1.0

        # When the scan runs
        report = env.scan()

    # Then the orphan is reported once, where it really sits; the running task is not lost
    assert report.workers == (worker,)
    assert [(f.task_id, f.reason) for f in report.findings] == [(orphan, Reason.ROW_MISSING)]
    finding = report.findings[0]
    assert finding.location.where is Where.UNACKED
    assert finding.location.queue == "video_processing"
    assert finding.location.delivery_tag
    assert finding.age_s is not None and 0 <= finding.age_s < 60
    assert live not in by_task_id(report)


@pytest.mark.filterwarnings("ignore:Call to deprecated setex:DeprecationWarning")
def test_global_keyprefix(env: Env) -> None:
    """With a global_keyprefix, queues, unacked and results are read under the app's prefix."""
    options = {"global_keyprefix": "app:"}
    app = env.producer(broker_transport_options=options, result_backend_transport_options=options)
    queued = send(app, "demo.process_video", args=[new_id()], priority=5)
    taken = send(app, "demo.process_video", args=[new_id()])
    foreign = send(env.producer(), "demo.process_video", args=[new_id()])  # unprefixed app
    app.backend.store_result(result_id := new_id(), 42, "SUCCESS")
    env.redis.persist(f"app:celery-task-meta-{result_id}")
    with app.connection_for_read() as conn:
        # A real kombu consumer takes one message without acking it: it sits in app:unacked.
        queue = conn.SimpleQueue("video_processing")
        held = queue.get(timeout=5)
        assert held.headers["id"] == taken
        assert env.redis.hlen("app:unacked") == 1

        env.config["redis"]["transport_options"] = options
        env.config["redis"]["result_backend_transport_options"] = options
        prefixed = env.scan()
        del env.config["redis"]["transport_options"]
        del env.config["redis"]["result_backend_transport_options"]
        plain = env.scan()
        queue.close()

    found = by_task_id(prefixed)
    assert set(found) == {queued, taken, result_id}
    assert found[queued].location.key == f"app:video_processing{SEP}3"
    assert found[taken].location.where is Where.UNACKED
    assert found[taken].location.key == "app:unacked"
    assert found[result_id].location.key == f"app:celery-task-meta-{result_id}"
    assert set(by_task_id(plain)) == {foreign}


@pytest.mark.filterwarnings("ignore:Call to deprecated setex:DeprecationWarning")
def test_results_on_their_own_backend(env: Env) -> None:
    """Results are read from the result backend's URL when it differs from the broker's."""
    results_url = env.redis_url.rsplit("/", 1)[0] + "/3"
    app = env.producer()
    app.conf.result_backend = results_url
    app.backend.store_result(task_id := new_id(), 1, "SUCCESS")
    backend = redis.Redis.from_url(results_url)
    backend.persist(f"celery-task-meta-{task_id}")
    backend.close()
    assert env.scan().findings == []  # broker database only: nothing there
    env.config["redis"]["result_backend_url"] = results_url
    report = env.scan()
    assert report.results_scanned == 1
    assert [(f.task_id, f.reason) for f in report.findings] == [(task_id, Reason.RESULT_NO_TTL)]


# -- the command line ------------------------------------------------------------------------


def test_exit_codes_and_summary(env: Env) -> None:
    """Exit 0 with a consistent verdict, 1 with a summary per kind and place when not."""
    live = new_id()
    env.rows((live, "pending"))
    app = env.producer()
    send(app, "demo.process_video", args=[live])
    clean = env.cli("check")
    assert clean.returncode == 0, clean.stderr
    assert clean.stdout.startswith("Scan consistent: 1 managed messages")

    orphan = send(app, "demo.process_video", args=[new_id()], priority=5)
    dirty = env.cli("check")
    assert dirty.returncode == 1, dirty.stderr
    lines = dirty.stdout.splitlines()
    assert lines[0].startswith("Scan INCONSISTENT: 2 managed messages")
    assert any(line.split() == ["orphan", "1"] for line in lines)
    assert any(
        line.split() == ["video_processing[priority", "3]", "1", "1", "0", "1", "0"]
        for line in lines
    )
    assert orphan not in dirty.stdout
    assert "Run with -v" in dirty.stdout

    verbose = env.cli("check", "-v")
    assert verbose.returncode == 1
    line = next(line for line in verbose.stdout.splitlines() if orphan in line)
    assert line.startswith("orphan") and "row_missing" in line
    assert "at queue video_processing priority 3" in line

    # Every run leaves JSON lines in the log file, orphans marked as in the seed.
    log_file = env.tmp_path / "logs" / "task_cleanup.log"
    events = [json.loads(line) for line in log_file.read_text().splitlines()]
    marked = [e for e in events if e["event"] == "⚠️ orphan found"]
    assert [e["task_id"] for e in marked] == [orphan, orphan]  # two inconsistent runs
    assert sum(e["event"] == "scan finished" for e in events) == 3


def test_json_report(env: Env) -> None:
    """--json prints the whole report as one JSON document with every finding's fields."""
    gone = new_id()
    app = env.producer()
    orphan = send(app, "demo.process_video", args=[gone], priority=9)
    send(app, "demo.send_email", args=["a@b"], queue="celery")
    done = env.cli("check", "--json")
    assert done.returncode == 1, done.stderr
    doc = json.loads(done.stdout)
    assert doc["consistent"] is False
    assert doc["counts"] == {
        "orphan": 1,
        "stale_result": 0,
        "lost": 0,
        "unreadable": 0,
        "eta_beyond_visibility": 0,
        "duplicate": 0,
        "expired_waiting": 0,
    }
    assert doc["reasons"] == {"orphan:row_missing": 1}
    assert doc["places"] == {
        "celery": {"messages": 1, "managed": 0, "unmanaged": 1, "orphans": 0, "unreadable": 0},
        "video_processing[priority 9]": {
            "messages": 1,
            "managed": 1,
            "unmanaged": 0,
            "orphans": 1,
            "unreadable": 0,
        },
    }
    assert doc["lost_checked"] is True and doc["workers"] == []
    [finding] = doc["findings"]
    assert finding == {
        "kind": "orphan",
        "reason": "row_missing",
        "task_id": orphan,
        "task_name": "demo.process_video",
        "db_id": gone,
        "row_kind": "task",
        "location": {
            "where": "queue",
            "queue": "video_processing",
            "priority": 9,
            "key": f"video_processing{SEP}9",
            "delivery_tag": finding["location"]["delivery_tag"],
            "worker": None,
            "state": None,
        },
        "age_s": None,
        "detail": None,
    }
    assert finding["location"]["delivery_tag"]


def test_check_one_task(env: Env) -> None:
    """--task-id finds a task by Celery id or by row id, reports only it, and sets the exit code."""
    live, gone = new_id(), new_id()
    env.rows((live, "pending"))
    app = env.producer()
    live_id = send(app, "demo.process_video", args=[live], priority=5)
    orphan_id = send(app, "demo.process_video", args=[gone])
    send(app, "demo.process_video", args=[new_id()])  # another orphan, never mentioned

    by_celery_id = env.cli("check", "--task-id", orphan_id, "--json")
    assert by_celery_id.returncode == 1
    doc = json.loads(by_celery_id.stdout)
    assert doc["task_id"] == orphan_id
    assert [(f["task_id"], f["db_id"]) for f in doc["findings"]] == [(orphan_id, gone)]

    by_row_id = env.cli("check", "--task-id", gone)
    assert by_row_id.returncode == 1
    assert orphan_id in by_row_id.stdout and "row_missing" in by_row_id.stdout

    fine = env.cli("check", "--task-id", live)
    assert fine.returncode == 0
    assert "present at queue video_processing priority 3: row ok" in fine.stdout
    assert (
        live_id
        not in json.loads(env.cli("check", "--task-id", live_id, "--json").stdout)["findings"]
    )


@pytest.mark.parametrize(
    ("change", "key", "words"),
    [
        (lambda c: c["redis"].update(brokr_url="x"), "redis.brokr_url", "unknown key"),
        (lambda c: c["scan"].update(queues="video"), "scan.queues", "list of strings"),
        (
            lambda c: c["database"].update(batch_size="100"),
            "database.batch_size",
            "must be an integer",
        ),
        (lambda c: c["tasks"].update(table="jobs"), "tasks.table", "'jobs' does not exist"),
        (
            lambda c: c["tasks"].update(status_column="state"),
            "tasks.status_column",
            "column 'state' does not exist",
        ),
        (
            lambda c: c["sub_tasks"].update(parent_column="job_id"),
            "sub_tasks.parent_column",
            "column 'job_id' does not exist",
        ),
        (
            lambda c: c["bindings"].append({"task": "x", "id_from": "arg[0]"}),
            "bindings[3]",
            "'id_from'",
        ),
        (
            lambda c: c["redis"].update(broker_url="amqp://guest@localhost//"),
            "redis.broker_url",
            "redis://",
        ),
        (
            lambda c: c["redis"].update(broker_url="redis://127.0.0.1:abc/0"),
            "redis.broker_url",
            "invalid URL",
        ),
        (
            lambda c: c["redis"].update(broker_url=c["redis"]["broker_url"][:-1] + "x"),
            "redis.broker_url",
            "invalid URL",
        ),
        (
            lambda c: c["redis"].update(result_backend_url="amqp://x"),
            "redis.result_backend_url",
            "invalid URL",
        ),
        (
            lambda c: c["database"].update(url="postgresql://u@127.0.0.1:abc/x"),
            "database.url",
            "invalid database URL",
        ),
    ],
)
def test_bad_config(
    env: Env, change: Callable[[dict[str, Any]], None], key: str, words: str
) -> None:
    """A bad config exits 2 with one paragraph naming the key and the file, and no traceback."""
    change(env.config)
    done = env.cli("check")
    assert done.returncode == 2
    assert done.stdout == ""
    message = done.stderr.strip()
    assert "\n" not in message and "Traceback" not in message
    assert message.startswith("task-cleanup: configuration error:")
    assert f"key '{key}'" in message and str(env.path) in message and words in message


def test_missing_config_file(tmp_path: Path) -> None:
    """A config file that does not exist exits 2, naming the path, with no traceback."""
    path = tmp_path / "nowhere.toml"
    done = run_cli("--config", str(path), "check")
    assert done.returncode == 2
    assert str(path) in done.stderr and "not found" in done.stderr
    assert "Traceback" not in done.stderr and done.stdout == ""
    from_env = run_cli("check", env={"MAINTENANCE_CONFIG": str(path)})
    assert from_env.returncode == 2 and str(path) in from_env.stderr


def test_usage_error(env: Env) -> None:
    """An unknown option is a usage error: exit 2."""
    assert env.cli("check", "--frobnicate").returncode == 2


def test_redis_down(env: Env) -> None:
    """With Redis unreachable the check exits 3 and gives no verdict."""
    env.config["redis"]["broker_url"] = f"redis://:pw@127.0.0.1:{free_port()}/0"
    started = time.monotonic()
    done = env.cli("check")
    assert done.returncode == 3, done.stderr
    assert time.monotonic() - started < 30
    assert done.stdout == ""
    assert "No verdict" in done.stderr and "Traceback" not in done.stderr
    assert ":pw@" not in done.stderr


def test_database_down(env: Env) -> None:
    """With the database unreachable the check exits 3, gives no verdict and hides the password."""
    send(env.producer(), "demo.process_video", args=[new_id()])
    env.config["database"]["url"] = f"postgresql+psycopg2://u:secret@127.0.0.1:{free_port()}/x"
    done = env.cli("check")
    assert done.returncode == 3, done.stderr
    assert done.stdout == ""
    assert "No verdict" in done.stderr and "Traceback" not in done.stderr
    assert "secret" not in done.stderr


# -- the database stopping mid-scan ----------------------------------------------------------


@pytest.fixture
def own_database(pg_server: PostgresServer) -> Iterator[str]:
    """A database whose fixtures hold no pooled connection, so the server may be restarted."""
    name = f"stop{os.getpid()}_{time.monotonic_ns()}"
    admin = sa.create_engine(pg_server.url, isolation_level="AUTOCOMMIT", poolclass=NullPool)
    with admin.connect() as conn:
        conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    url = pg_server.url.rsplit("/", 1)[0] + f"/{name}"
    engine = sa.create_engine(url, poolclass=NullPool)
    create_schema(engine)
    yield url
    with admin.connect() as conn:
        conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


def fill_queue(env: Env, count: int) -> None:
    """`count` copies of a real Celery message, each with its own task id and (missing) row."""
    send(env.producer(), "demo.process_video", args=["template"])
    raw = env.redis.rpop("video_processing")
    assert isinstance(raw, bytes)
    template = orjson.loads(raw)
    embed = json.loads(base64.b64decode(template["body"]))[2]
    pipe = env.redis.pipeline(transaction=False)
    for i in range(count):
        task_id, row = new_id(), new_id()
        template["headers"].update(id=task_id, root_id=task_id, argsrepr=repr([row]))
        template["properties"].update(correlation_id=task_id, delivery_tag=new_id())
        template["body"] = base64.b64encode(orjson.dumps([[row], {}, embed])).decode()
        pipe.lpush("video_processing", orjson.dumps(template))
        if i % 5000 == 4999:
            pipe.execute()
    pipe.execute()


def test_database_stopped_mid_scan(
    tmp_path: Path,
    redis_url: str,
    redis_client: redis.Redis,
    pg_server: PostgresServer,
    own_database: str,
) -> None:
    """When PostgreSQL stops during the look-ups, the check exits 3 and prints no verdict."""
    engine = sa.create_engine(own_database, poolclass=NullPool)
    env = Env(tmp_path, redis_url, own_database, engine, redis_client)
    env.config["database"]["batch_size"] = 20
    fill_queue(env, 50_000)
    stopped = threading.Event()

    def stop_when_lookups_run() -> None:
        # The scan reads the queue in LRANGE chunks and looks rows up as it goes: once Redis
        # shows a client whose last command is LRANGE, look-ups are under way.
        wait_for(
            lambda: any(c["cmd"] == "lrange" for c in redis_client.client_list()),
            timeout_s=60,
            interval_s=0.005,
            what="the scan to read the queue",
        )
        pg_server.stop()
        stopped.set()

    thread = threading.Thread(target=stop_when_lookups_run, daemon=True)
    try:
        thread.start()
        done = env.cli("check", "--no-results")
        thread.join(60)
    finally:
        pg_server.resume()
        env.close()
    assert stopped.is_set()
    assert done.returncode == 3, (done.stdout[-2000:], done.stderr)
    assert done.stdout == ""
    assert "database failed while looking up task rows" in done.stderr
    assert "No verdict" in done.stderr and "Traceback" not in done.stderr


def test_progress_on_a_terminal(env: Env) -> None:
    """On a terminal a long scan shows its progress per queue; piped, stderr stays quiet."""
    fill_queue(env, 20_000)
    child = pexpect.spawn(
        sys.executable,
        ["-m", "maintenance.cli.main", "--config", str(env.path), "check", "--no-results"],
        cwd=str(ROOT),
        encoding="utf-8",
        timeout=60,
    )
    child.expect(r"queue video_processing\b.*?[\d,]+/20,000")  # rich's bar: phase, bar, counts
    child.expect("Scan INCONSISTENT: 20,000 managed messages")
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 1
    piped = env.cli("check", "--no-results")
    assert piped.returncode == 1
    assert "/20,000" not in piped.stderr
