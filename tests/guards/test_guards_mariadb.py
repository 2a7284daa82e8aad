"""The guard decorators on MariaDB: a real prefork worker reads each task's row by primary
key, skips finished and missing rows, and waits out a hung server without skipping."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
import sqlalchemy as sa

from examples.demo.schema import create_schema, tasks
from tests.conftest import producer_app, wait_for, write_config
from tests.guards.test_decorators import GUARD_BINDINGS, GUARD_CONFIG, Env, Worker, start_worker
from tests.servers import MariaDBServer, RedisServer


@pytest.fixture(scope="module")
def env(
    redis_server: RedisServer,
    mariadb_server: MariaDBServer,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Env]:
    name = f"guards{os.getpid()}"
    admin = sa.create_engine(mariadb_server.url, pool_pre_ping=True)
    with admin.connect() as conn:
        conn.execute(sa.text(f"DROP DATABASE IF EXISTS `{name}`"))
        conn.execute(sa.text(f"CREATE DATABASE `{name}`"))
    db_url = mariadb_server.url.replace(f"/{mariadb_server.database}?", f"/{name}?", 1)
    engine = sa.create_engine(db_url, pool_pre_ping=True)
    create_schema(engine)
    broker_url = f"{redis_server.url}/3"
    client_redis = redis.Redis.from_url(broker_url)
    client_redis.flushdb()
    config = write_config(
        tmp_path_factory.mktemp("guards-mariadb") / "maintenance.toml",
        broker_url,
        db_url,
        extra=GUARD_CONFIG,
        bindings=GUARD_BINDINGS,
    )
    # A hung server is noticed within a second, on the connect and on every reply.
    config.write_text(
        config.read_text().replace("[database]\n", "[database]\nconnect_timeout_s = 1.0\n", 1)
    )
    client = producer_app(broker_url)
    yield Env(config, broker_url, engine, client, client_redis, mariadb_server)
    client.close()
    client_redis.flushdb()
    client_redis.close()
    engine.dispose()
    with admin.connect() as conn:
        conn.execute(sa.text(f"DROP DATABASE IF EXISTS `{name}`"))
    admin.dispose()


@pytest.fixture(scope="module")
def prefork(env: Env, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Worker]:
    logs = tmp_path_factory.mktemp("prefork-mariadb-logs")
    worker = start_worker(env, "prefork", "guarded", logs)
    yield worker
    worker.stop()


@pytest.mark.slow
def test_rows_read_on_mariadb(env: Env, prefork: Worker) -> None:
    """Live rows run (one named in upper case: the collation ignores case); finished, deleted
    and parent-finished rows are REVOKED; nothing errs."""
    live, done, parent_done = env.insert_task(), env.insert_task("done"), env.insert_task("done")
    gone = env.insert_task()
    with env.engine.begin() as conn:
        conn.execute(sa.delete(tasks).where(tasks.c.id == gone))
    sub = env.insert_sub_task(parent_done)
    shouting = env.insert_task()
    sent = {
        env.send("guarded.bare", "guarded", live): "SUCCESS",
        env.send("guarded.bare", "guarded", shouting.upper()): "SUCCESS",
        env.send("guarded.with_arg", "guarded", "n", done): "REVOKED",
        env.send("guarded.unbound_bare", "guarded", task_id=gone): "REVOKED",
        env.send("guarded.segment", "guarded", sub): "REVOKED",
    }
    assert {t: env.final_state(t) for t in sent} == sent
    assert [env.runs(i) for i in (live, shouting.upper(), done, gone, sub)] == [1, 1, 0, 0, 0]
    assert prefork.errors() == []


@pytest.mark.slow
def test_hung_mariadb_keeps_the_task_then_runs_it_once(
    env: Env, prefork: Worker, mariadb_server: MariaDBServer
) -> None:
    """With the server SIGSTOPped the guard's read times out: the task waits (RETRY, never
    skipped); once the server goes on, it runs exactly once."""
    row_id = env.insert_task()
    mariadb_server.pause()
    try:
        task_id = env.send("guarded.bare", "guarded", row_id)
        wait_for(
            lambda: [
                r for r in prefork.for_task(task_id) if "database unreachable" in r.get("event", "")
            ],
            30,
            what="the guard noticing the hung database",
        )
        time.sleep(2.0)  # a few more back-off rounds while the server hangs
        assert env.client.AsyncResult(task_id).state == "RETRY"
        assert env.runs(row_id) == 0
    finally:
        mariadb_server.resume()
    assert env.final_state(task_id) == "SUCCESS"
    assert env.runs(row_id) == 1
    assert prefork.errors() == []


def test_env_is_on_mariadb(env: Env) -> None:
    """These tests really read MariaDB (not the PostgreSQL of test_decorators.py)."""
    assert env.engine.dialect.name == "mysql"
    assert isinstance(env.pg, MariaDBServer)
    assert Path(env.config).read_text().count("mysql+pymysql://") == 1
