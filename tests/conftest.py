"""Fixtures: one real Redis, PostgreSQL and MariaDB per session, a clean database per test."""

from __future__ import annotations

import itertools
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
import sqlalchemy as sa
from celery import Celery

from examples.demo.schema import create_schema
from maintenance.config import Settings, load_settings
from tests.servers import (
    MariaDBServer,
    PostgresServer,
    RedisServer,
    free_port,
    remove_dir,
    temp_dir,
)

ROOT = Path(__file__).resolve().parent.parent
_db_counter = itertools.count()


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    server = RedisServer(free_port(), temp_dir("tm-redis-")).start()
    yield server
    server.stop()
    remove_dir(server.directory)


@pytest.fixture(scope="session")
def pg_server() -> Iterator[PostgresServer]:
    server = PostgresServer(free_port(), temp_dir("tm-pg-")).start()
    yield server
    server.stop()
    remove_dir(server.directory)


@pytest.fixture
def redis_url(redis_server: RedisServer) -> Iterator[str]:
    """A flushed Redis database for this test."""
    url = f"{redis_server.url}/0"
    client = redis.Redis.from_url(url)
    client.flushall()
    yield url
    client.flushall()
    client.close()


@pytest.fixture
def redis_client(redis_url: str) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_url)
    yield client
    client.close()


@pytest.fixture
def database_url(pg_server: PostgresServer) -> Iterator[str]:
    """A new, empty PostgreSQL database with the demo schema."""
    name = f"t{os.getpid()}_{next(_db_counter)}"
    admin = sa.create_engine(pg_server.url, isolation_level="AUTOCOMMIT", pool_pre_ping=True)
    with admin.connect() as conn:
        conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    url = pg_server.url.rsplit("/", 1)[0] + f"/{name}"
    engine = sa.create_engine(url)
    create_schema(engine)
    engine.dispose()
    yield url
    with admin.connect() as conn:
        conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


@pytest.fixture
def engine(database_url: str) -> Iterator[sa.Engine]:
    eng = sa.create_engine(database_url, pool_pre_ping=True)
    yield eng
    eng.dispose()


@pytest.fixture(scope="session")
def mariadb_server() -> Iterator[MariaDBServer]:
    server = MariaDBServer(free_port(), temp_dir("tm-mariadb-")).start()
    yield server
    server.stop()
    remove_dir(server.directory)


@pytest.fixture
def mariadb_url(mariadb_server: MariaDBServer) -> Iterator[str]:
    """A new, empty MariaDB database with the demo schema (utf8mb4, case-insensitive as
    Debian's server default)."""
    name = f"t{os.getpid()}_{next(_db_counter)}"
    admin = sa.create_engine(mariadb_server.url, pool_pre_ping=True)
    with admin.connect() as conn:
        conn.execute(sa.text(f"CREATE DATABASE `{name}`"))
    url = mariadb_server.url.replace(f"/{mariadb_server.database}?", f"/{name}?", 1)
    engine = sa.create_engine(url)
    create_schema(engine)
    engine.dispose()
    yield url
    with admin.connect() as conn:
        conn.execute(sa.text(f"DROP DATABASE IF EXISTS `{name}`"))
    admin.dispose()


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    """A new SQLite file with the demo schema."""
    url = f"sqlite:///{tmp_path / 'app.db'}"
    engine = sa.create_engine(url)
    create_schema(engine)
    engine.dispose()
    return url


DATABASE_FIXTURES = {"postgresql": "database_url", "mariadb": "mariadb_url", "sqlite": "sqlite_url"}


@pytest.fixture(params=list(DATABASE_FIXTURES))
def db_url(request: pytest.FixtureRequest) -> str:
    """The same test on every supported database, each a fresh one with the demo schema."""
    return str(request.getfixturevalue(DATABASE_FIXTURES[request.param]))


DEFAULT_BINDINGS = """
[[bindings]]
task = "demo.process_video"
id_from = "args[0]"

[[bindings]]
task = "demo.process_segment"
id_from = "args[0]"
kind = "sub_task"

[[bindings]]
task = "demo.render"
id_from = "kwargs.task_id"
"""


def write_config(
    path: Path,
    redis_url: str,
    database_url: str,
    extra: str = "",
    bindings: str = DEFAULT_BINDINGS,
    queues: tuple[str, ...] = ("video_processing", "celery"),
) -> Path:
    queue_list = ", ".join(f'"{q}"' for q in queues)
    path.write_text(f"""
[redis]
broker_url = "{redis_url}"

[database]
url = "{database_url}"

[tasks]
table = "tasks"
id_column = "id"
status_column = "status"
active_statuses = ["pending", "queued", "processing"]
updated_at_column = "updated_at"
celery_id_column = "celery_task_id"

[sub_tasks]
table = "sub_tasks"
id_column = "id"
parent_column = "task_id"
status_column = "status"

[scan]
queues = [{queue_list}]
inspect_timeout_s = 1.0

[logging]
dir = "{path.parent / "logs"}"
{extra}
{bindings}
""")
    return path


def short_lease_config(
    path: Path,
    redis_url: str,
    database_url: str,
    *,
    lease_s: float = 2.0,
    redis_timeout_s: float | None = None,
) -> Path:
    """A config whose run lock lapses `lease_s` after its holder dies (renewed 4 times a
    lease), and whose Redis calls give up after `redis_timeout_s` when given."""
    extra = f"[cleanup]\nlock_lease_s = {lease_s}\nlock_renew_s = {lease_s / 4}\n"
    config = write_config(path, redis_url, database_url, extra=extra)
    if redis_timeout_s is not None:
        text = config.read_text().replace(
            "[redis]\n", f"[redis]\nsocket_timeout_s = {redis_timeout_s}\n", 1
        )
        config.write_text(text)
    return config


@pytest.fixture
def config_file(tmp_path: Path, redis_url: str, database_url: str) -> Path:
    return write_config(tmp_path / "maintenance.toml", redis_url, database_url)


@pytest.fixture
def settings(config_file: Path) -> Settings:
    return load_settings(config_file, env={})


def producer_app(redis_url: str, **conf: Any) -> Celery:
    """The monitored app as a producer: real Celery messages through a real broker."""
    app = Celery("producer", set_as_current=False)
    app.conf.update(
        broker_url=redis_url,
        result_backend=redis_url,
        accept_content=["json", "pickle"],
        task_default_queue="video_processing",
        **conf,
    )
    return app


@pytest.fixture
def producer(redis_url: str) -> Iterator[Celery]:
    app = producer_app(redis_url)
    yield app
    app.close()


def run_cli(
    *args: str, env: dict[str, str] | None = None, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    full_env = {**os.environ, **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "maintenance.cli.main", *args],
        capture_output=True,
        text=True,
        env=full_env,
        timeout=timeout,
        cwd=ROOT,
    )


def wait_for(
    predicate: Callable[[], Any],
    timeout_s: float = 30.0,
    interval_s: float = 0.1,
    what: str = "condition",
) -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval_s)
    raise AssertionError(f"timed out after {timeout_s}s waiting for {what}")
