"""The guard decorators: decorating a task (no servers), then real workers on real Redis and
PostgreSQL."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import redis
import sqlalchemy as sa
from celery import Celery

from examples.demo.schema import create_schema, new_id, sub_tasks, tasks, utcnow
from maintenance.guards import SKIP_EVENT, validate_sub_task_exists, validate_task_exists
from tests.conftest import ROOT, producer_app, wait_for, write_config
from tests.servers import MariaDBServer, PostgresServer, RedisServer


# -- decorating (no servers) ---------------------------------------------------------------------
def test_decorated_task_keeps_its_signature_for_celery() -> None:
    """Celery still rejects wrong arguments at the caller, for both decorator forms."""
    app = Celery("sig", set_as_current=False, broker="memory://")

    @app.task(bind=True)
    @validate_task_exists
    def bare(self: Any, task_id: str) -> None: ...

    @app.task
    @validate_sub_task_exists(id_arg="sub_task_id")
    def with_arg(sub_task_id: str) -> None: ...

    for task in (bare, with_arg):
        with pytest.raises(TypeError):
            task.apply_async(args=("a", "b"))


def test_unknown_id_arg_fails_at_decoration() -> None:
    """A typo in id_arg is reported when the module is imported, not on the first message."""
    with pytest.raises(TypeError, match="task_idd"):
        validate_task_exists(id_arg="task_idd")(lambda task_id: None)


def test_guard_above_app_task_is_refused() -> None:
    """The wrong decorator order would guard nothing; it is refused with a hint."""
    app = Celery("order", set_as_current=False, broker="memory://")

    def process(task_id: str) -> None: ...

    with pytest.raises(TypeError, match=r"below @app\.task"):
        validate_task_exists(app.task(process))


def test_direct_call_runs_the_body_without_config() -> None:
    """Calling the task as a function is the caller's choice: no look-up, no config needed."""
    app = Celery("direct", set_as_current=False, broker="memory://")

    @app.task(bind=True)
    @validate_task_exists
    def double(self: Any, task_id: int) -> int:
        return task_id * 2

    assert double(21) == 42


# -- real workers ---------------------------------------------------------------------------------
GUARD_CONFIG = """
[guards]
missing_retries = 6
missing_retry_delay_s = 0.5
db_retry_max_delay_s = 1.0
"""
GUARD_BINDINGS = """
[[bindings]]
task = "guarded.bare"
id_from = "args[0]"

[[bindings]]
task = "guarded.unbound_bare"
id_from = "kwargs.task_id"
"""
FINAL = {"SUCCESS", "FAILURE", "REVOKED"}


@dataclass
class Env:
    """Everything the worker tests share: one database, one Redis database, one config."""

    config: Path
    broker_url: str
    engine: sa.Engine
    client: Celery
    redis: redis.Redis
    pg: PostgresServer | MariaDBServer  # the database server, to stop and resume

    def insert_task(self, status: str = "pending", row_id: str | None = None) -> str:
        row_id = row_id or new_id()
        with self.engine.begin() as conn:
            conn.execute(sa.insert(tasks), [dict(id=row_id, status=status, updated_at=utcnow())])
        return row_id

    def insert_sub_task(self, parent_id: str, status: str = "pending") -> str:
        row_id = new_id()
        with self.engine.begin() as conn:
            conn.execute(sa.insert(sub_tasks), [dict(id=row_id, task_id=parent_id, status=status)])
        return row_id

    def runs(self, db_id: str) -> int:
        return int(self.redis.get(f"guarded:runs:{db_id}") or 0)

    def send(self, name: str, queue: str, *args: Any, **kwargs: Any) -> str:
        return str(self.client.send_task(name, args=args, kwargs=kwargs, queue=queue).id)

    def final_state(self, task_id: str, timeout_s: float = 30.0) -> str:
        result = self.client.AsyncResult(task_id)
        return str(
            wait_for(
                lambda: result.state if result.state in FINAL else None,
                timeout_s,
                what=f"a final state for {task_id}",
            )
        )


@dataclass
class Worker:
    process: subprocess.Popen[bytes]
    log_dir: Path

    def records(self) -> list[dict[str, Any]]:
        """Our JSON log lines and Celery's own, from the worker's log directory."""
        lines = []
        for name in ("task_cleanup.log", "celery_worker.log"):
            path = self.log_dir / name
            if path.exists():
                lines += [json.loads(line) for line in path.read_text().splitlines() if line]
        return lines

    def for_task(self, task_id: str) -> list[dict[str, Any]]:
        return [r for r in self.records() if r.get("task_id") == task_id]

    def errors(self) -> list[str]:
        found = [json.dumps(r) for r in self.records() if r.get("level") in ("error", "critical")]
        stderr = (self.log_dir / "stderr.log").read_text()
        return found + (["Traceback in stderr:\n" + stderr] if "Traceback" in stderr else [])

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def start_worker(env: Env, pool: str, queue: str, log_dir: Path, concurrency: int = 2) -> Worker:
    """`celery -A tests.guarded_app worker` as a user would run it, pointed at the test servers."""
    log_dir.mkdir(parents=True, exist_ok=True)
    name = f"{queue}-{os.getpid()}@localhost"
    proc_env = {
        **os.environ,
        "C_FORCE_ROOT": "1",
        "GUARD_BROKER_URL": env.broker_url,
        "MAINTENANCE_CONFIG": str(env.config),
        "GUARD_LOG_DIR": str(log_dir),
        "PYTHONPATH": str(ROOT),
    }
    with (log_dir / "stderr.log").open("wb") as stderr:
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "celery",
                "-A",
                "tests.guarded_app",
                "worker",
                "-P",
                pool,
                "-c",
                str(concurrency),
                "-Q",
                queue,
                "-n",
                name,
                "--without-gossip",
                "--without-mingle",
                "--without-heartbeat",
                "-l",
                "INFO",
            ],
            cwd=ROOT,
            env=proc_env,
            stdout=subprocess.DEVNULL,
            stderr=stderr,
        )
    worker = Worker(process, log_dir)
    try:
        wait_for(
            lambda: env.client.control.ping(destination=[name], timeout=0.5),
            60,
            what=f"worker {name}",
        )
    except AssertionError:
        worker.stop()
        raise AssertionError((log_dir / "stderr.log").read_text()) from None
    return worker


@pytest.fixture(scope="module")
def env(
    redis_server: RedisServer, pg_server: PostgresServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Env]:
    name = f"guards{os.getpid()}"
    admin = sa.create_engine(pg_server.url, isolation_level="AUTOCOMMIT", pool_pre_ping=True)
    with admin.connect() as conn:
        conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    db_url = pg_server.url.rsplit("/", 1)[0] + f"/{name}"
    engine = sa.create_engine(db_url, pool_pre_ping=True)
    create_schema(engine)
    broker_url = f"{redis_server.url}/2"
    client_redis = redis.Redis.from_url(broker_url)
    client_redis.flushdb()
    config = write_config(
        tmp_path_factory.mktemp("guards") / "maintenance.toml",
        broker_url,
        db_url,
        extra=GUARD_CONFIG,
        bindings=GUARD_BINDINGS,
    )
    client = producer_app(broker_url)
    yield Env(config, broker_url, engine, client, client_redis, pg_server)
    client.close()
    client_redis.flushdb()
    client_redis.close()
    engine.dispose()
    with admin.connect() as conn:
        conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


@pytest.fixture(scope="module")
def prefork(env: Env, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Worker]:
    worker = start_worker(env, "prefork", "guarded", tmp_path_factory.mktemp("prefork-logs"))
    yield worker
    worker.stop()


def drain(conn: Any) -> None:
    with contextlib.suppress(TimeoutError):
        conn.drain_events(timeout=0.2)


def skip_record(worker: Worker, task_id: str) -> dict[str, Any]:
    return next(r for r in worker.for_task(task_id) if "🚫" in r.get("event", ""))


@pytest.mark.slow
def test_live_rows_run_under_every_form(env: Env, prefork: Worker) -> None:
    """Bare and argument forms, bound and unbound, task and sub-task: a live row's body runs."""
    a, b, c, d, parent = (env.insert_task() for _ in range(5))
    sub = env.insert_sub_task(parent)
    sent = [
        env.send("guarded.bare", "guarded", a),
        env.send("guarded.with_arg", "guarded", "n", b),
        env.send("guarded.unbound", "guarded", c),
        env.send("guarded.unbound_bare", "guarded", task_id=d),
        env.send("guarded.segment", "guarded", sub),
    ]
    assert [env.final_state(t) for t in sent] == ["SUCCESS"] * 5
    assert [env.runs(i) for i in (a, b, c, d, sub)] == [1] * 5
    assert any("✅" in r.get("event", "") for r in prefork.for_task(sent[0]))
    assert prefork.errors() == []


@pytest.mark.slow
def test_deleted_row_is_revoked_without_error(env: Env, prefork: Worker) -> None:
    """A deleted row is re-checked, then skipped as REVOKED; the body never runs, nothing errs."""
    gone, gone_too = env.insert_task(), env.insert_task()
    with env.engine.begin() as conn:
        conn.execute(sa.delete(tasks).where(tasks.c.id.in_([gone, gone_too])))
    bound = env.send("guarded.bare", "guarded", gone)
    unbound = env.send("guarded.unbound", "guarded", gone_too)
    assert [env.final_state(bound), env.final_state(unbound)] == ["REVOKED", "REVOKED"]
    assert env.runs(gone) == env.runs(gone_too) == 0
    skip = skip_record(prefork, bound)
    assert (skip["db_id"], skip["reason"]) == (gone, "row_missing")
    rechecks = [r for r in prefork.for_task(bound) if r.get("event", "").startswith("row not")]
    assert len(rechecks) == 6
    assert prefork.errors() == []


@pytest.mark.slow
def test_finished_row_is_revoked_at_once(env: Env, prefork: Worker) -> None:
    """A finished row is certain: REVOKED on the first look, without re-checks, and announced."""
    done = env.insert_task(status="done")
    events: list[dict[str, Any]] = []
    with env.client.connection_for_read() as conn:
        receiver = env.client.events.Receiver(conn, handlers={SKIP_EVENT: events.append})
        with receiver.consumer_context(wakeup=False) as (listening, _, _):
            drain(listening)  # subscribes before the skip can happen
            task_id = env.send("guarded.with_arg", "guarded", "n", done)
            assert env.final_state(task_id) == "REVOKED"

            def skip_events() -> list[dict[str, Any]]:
                drain(listening)
                return events

            wait_for(skip_events, 10, what="the skip event")
    assert (events[0]["uuid"], events[0]["db_id"], events[0]["reason"]) == (
        task_id,
        done,
        "row_finished",
    )
    assert "row_finished" in str(env.client.AsyncResult(task_id).result)
    # The shared skip counter that `task-cleanup monitor` exports.
    assert int(env.redis.hget("task-maintenance:guard:skips", "row_finished") or 0) >= 1
    assert env.runs(done) == 0
    assert skip_record(prefork, task_id)["reason"] == "row_finished"
    assert not [r for r in prefork.for_task(task_id) if r.get("event", "").startswith("row not")]
    assert prefork.errors() == []


@pytest.mark.slow
def test_sub_task_with_deleted_parent_is_revoked(env: Env, prefork: Worker) -> None:
    """A sub-task whose parent row is gone is skipped as REVOKED."""
    parent = env.insert_task()
    sub = env.insert_sub_task(parent)
    with env.engine.begin() as conn:
        conn.execute(sa.delete(tasks).where(tasks.c.id == parent))
    task_id = env.send("guarded.segment", "guarded", sub)
    assert env.final_state(task_id) == "REVOKED"
    assert env.runs(sub) == 0
    assert skip_record(prefork, task_id)["reason"] == "parent_missing"
    assert prefork.errors() == []


@pytest.mark.slow
def test_row_committed_after_enqueue_runs_once(env: Env, prefork: Worker) -> None:
    """A producer that commits two seconds after enqueueing: the task runs, exactly once."""
    row_id = new_id()
    task_id = env.send("guarded.bare", "guarded", row_id)
    time.sleep(2.0)
    env.insert_task(row_id=row_id)
    assert env.final_state(task_id) == "SUCCESS"
    time.sleep(1.0)  # a duplicate would have had time to run
    assert env.runs(row_id) == 1
    # The guard's re-checks did not spend the task's own retry budget.
    assert env.client.AsyncResult(task_id).result == {"runs": 1, "retries": 0}
    assert prefork.errors() == []


@pytest.mark.slow
def test_database_restart_runs_task_once(env: Env, prefork: Worker) -> None:
    """With PostgreSQL stopped the task waits (never skipped); after the restart it runs once."""
    row_id = env.insert_task()
    env.pg.stop()
    try:
        task_id = env.send("guarded.bare", "guarded", row_id)
        wait_for(
            lambda: [
                r for r in prefork.for_task(task_id) if "database unreachable" in r.get("event", "")
            ],
            30,
            what="the guard noticing the stopped database",
        )
        time.sleep(2.0)  # a few more back-off rounds while the database is down
        assert env.client.AsyncResult(task_id).state == "RETRY"
        assert env.runs(row_id) == 0
    finally:
        env.pg.resume()
    assert env.final_state(task_id) == "SUCCESS"
    assert env.runs(row_id) == 1
    assert prefork.errors() == []


@pytest.mark.slow
def test_threads_pool(env: Env, tmp_path: Path) -> None:
    """Under the threads pool: live rows run, finished and missing rows are REVOKED."""
    worker = start_worker(env, "threads", "guarded_threads", tmp_path / "logs", concurrency=4)
    try:
        live, live_too, done, gone = (
            env.insert_task(),
            env.insert_task(),
            env.insert_task("done"),
            new_id(),
        )
        sub = env.insert_sub_task(env.insert_task("done"))
        sent = {
            env.send("guarded.bare", "guarded_threads", live): "SUCCESS",
            env.send("guarded.unbound", "guarded_threads", live_too): "SUCCESS",
            env.send("guarded.with_arg", "guarded_threads", "n", done): "REVOKED",
            env.send("guarded.unbound_bare", "guarded_threads", task_id=gone): "REVOKED",
            env.send("guarded.segment", "guarded_threads", sub): "REVOKED",
        }
        assert {t: env.final_state(t) for t in sent} == sent
        assert [env.runs(i) for i in (live, live_too, done, gone, sub)] == [1, 1, 0, 0, 0]
        assert skip_record(worker, list(sent)[4])["reason"] == "parent_finished"
        assert worker.errors() == []
    finally:
        worker.stop()
