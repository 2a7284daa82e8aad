"""`task-cleanup config init|show|check|example` against real PostgreSQL and Redis, on schemas
the tool has never seen (not the demo's): what `config init --yes` writes must let `check` find
exactly the orphans planted with a real Celery producer, and nothing else."""

from __future__ import annotations

import itertools
import json
import os
import re
import subprocess
import sys
import tomllib
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pexpect
import pytest
import sqlalchemy as sa
from celery import Celery

from maintenance.cli.config_commands import config_group
from maintenance.config import Settings, example_config, load_settings
from tests.conftest import ROOT, producer_app
from tests.servers import PostgresServer, free_port

_names = itertools.count()
URL_VARS = ("REDIS_URL", "RESULT_BACKEND_URL", "DATABASE_URL", "MAINTENANCE_CONFIG")


def cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """`task-cleanup …` with no terminal on stdin and only the URL variables given here."""
    clean = {k: v for k, v in os.environ.items() if k not in URL_VARS}
    return subprocess.run(
        [sys.executable, "-m", "maintenance.cli.main", *args],
        capture_output=True,
        text=True,
        env={**clean, **(env or {})},
        stdin=subprocess.DEVNULL,
        timeout=120,
        cwd=ROOT,
    )


@pytest.fixture
def empty_db(pg_server: PostgresServer) -> Iterator[str]:
    """A new PostgreSQL database with no table at all: each test creates the app's own."""
    name = f"cfg{os.getpid()}_{next(_names)}"
    admin = sa.create_engine(pg_server.url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    yield pg_server.url.rsplit("/", 1)[0] + f"/{name}"
    with admin.connect() as conn:
        conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


def execute(url: str, sql: str, rows: list[dict[str, Any]] | None = None) -> None:
    engine = sa.create_engine(url)
    with engine.begin() as conn:
        if rows:
            conn.execute(sa.text(sql), rows)
        else:
            conn.execute(sa.text(sql))
    engine.dispose()


def send(app: Celery, name: str, queue: str, *args: Any, **options: Any) -> None:
    app.send_task(name, args=list(args), queue=queue, **options)


def urls(redis_url: str, db: str) -> dict[str, str]:
    return {"REDIS_URL": redis_url, "DATABASE_URL": db}


def init_yes(output: Path, env: dict[str, str], *extra: str) -> Settings:
    done = cli("config", "init", "--yes", "--output", str(output), *extra, env=env)
    assert done.returncode == 0, done.stderr
    assert "wrote" in done.stderr
    return load_settings(output, env={})


def findings(config: Path, env: dict[str, str]) -> list[tuple[str, str]]:
    """`check --json`'s findings as sorted (kind, row id) pairs."""
    done = cli("--config", str(config), "check", "--json", env=env)
    assert done.returncode in (0, 1), done.stderr
    report = json.loads(done.stdout)
    found = sorted((f["kind"], f["db_id"]) for f in report["findings"])
    assert sum(report["counts"].values()) == len(found)
    return found


def with_password(url: str) -> str:
    """The same URL with a password (the test server trusts loopback, so any will do)."""
    scheme, rest = url.split("://", 1)
    user, host = rest.split("@", 1)
    return f"{scheme}://{user}:pw-do-not-write@{host}"


# -- (a) integer keys, a `jobs` table with state / modified_at / celery_id ------------------------
INTEGER_SCHEMA = """
CREATE TABLE customers (id serial PRIMARY KEY, email text, status varchar(10) NOT NULL);
CREATE TABLE jobs (
    id serial PRIMARY KEY,
    customer_id int REFERENCES customers(id),
    state varchar(16) NOT NULL,
    modified_at timestamptz NOT NULL DEFAULT now(),
    celery_id varchar(64),
    payload text
);
CREATE TABLE job_events (id serial PRIMARY KEY, job_id int REFERENCES jobs(id), kind text);
"""


# The integer app also sets its own kombu key layout, which Redis shows and init must propose.
SHOP_TRANSPORT = {"global_keyprefix": "shop:", "sep": ":", "priority_steps": list(range(10))}


def plant_integer_app(db: str, redis_url: str) -> list[tuple[str, str]]:
    """Jobs 1..12 in five states, messages for live and finished ones; returns the orphans as
    `findings` lists them."""
    execute(db, INTEGER_SCHEMA)
    execute(
        db,
        "INSERT INTO customers (email, status) VALUES (:email, 'active')",
        [{"email": f"c{i}@x"} for i in range(20)],  # ids 1..20 overlap the jobs' ids
    )
    states = ["queued"] * 4 + ["running"] * 3 + ["done"] * 3 + ["failed", "cancelled"]
    execute(
        db,
        "INSERT INTO jobs (state, customer_id, celery_id) VALUES (:state, 1, :cid)",
        [{"state": s, "cid": str(uuid.uuid4())} for s in states],
    )
    live, finished = range(1, 8), range(8, 13)
    app = producer_app(redis_url, broker_transport_options=SHOP_TRANSPORT)
    try:
        for job in [*live, *finished, 404]:  # 404: never existed
            send(app, "shop.process_job", "jobs", job, "fast")
        for job in (2, 3, 9):
            app.send_task(
                "shop.notify", kwargs={"job_id": job, "channel": "email"}, queue="notifications"
            )
        send(app, "shop.cleanup_tmp", "celery", "/tmp/x", 3)  # 3 is a job id only by chance
        send(app, "shop.process_job", "jobs", 5, "slow", priority=5)  # not a default step
    finally:
        app.close()
    return sorted(("orphan", str(j)) for j in [*finished, 404, 9])


def test_init_on_integer_keys_then_check_finds_exactly_the_orphans(
    tmp_path: Path, redis_url: str, empty_db: str
) -> None:
    planted = plant_integer_app(empty_db, redis_url)
    env = urls(redis_url, with_password(empty_db))
    config = tmp_path / "maintenance.toml"
    settings = init_yes(config, env)

    tasks = settings.tasks
    assert (tasks.table, tasks.schema, tasks.id_column) == ("jobs", "", "id")
    assert (tasks.status_column, tasks.updated_at_column) == ("state", "modified_at")
    assert tasks.celery_id_column == "celery_id"
    assert tasks.active_statuses == ("queued", "running")
    assert not settings.sub_tasks.enabled  # job_events: no status, not named like parts
    bound = {(b.task, b.id_from, b.kind) for b in settings.bindings}
    assert bound == {
        ("shop.process_job", "args[0]", "task"),
        ("shop.notify", "kwargs.job_id", "task"),
    }
    assert set(settings.scan.queues) == {"jobs", "notifications", "celery"}
    assert settings.redis.transport_options == SHOP_TRANSPORT
    text = config.read_text()
    assert "# shop.cleanup_tmp: no argument" in text
    assert "# proposed: common still-to-run statuses present" in text
    assert "pw-do-not-write" not in text
    urls_written = [line for line in text.splitlines() if "://" in line]
    assert urls_written and all(line.startswith("#") for line in urls_written)

    assert findings(config, env) == planted


# -- (b) uuid keys in a schema, sub-tasks by foreign key -------------------------------------------
UUID_SCHEMA = """
CREATE SCHEMA app;
CREATE TABLE app.video_jobs (
    id uuid PRIMARY KEY,
    title text,
    status varchar(20) NOT NULL,
    updated_at timestamp NOT NULL DEFAULT now(),
    celery_task_id varchar(64)
);
CREATE TABLE app.video_job_parts (
    id uuid PRIMARY KEY,
    job_id uuid NOT NULL REFERENCES app.video_jobs(id),
    idx int NOT NULL,
    status varchar(20) NOT NULL
);
CREATE TABLE public.audit_log (id bigserial PRIMARY KEY, message text);
"""


def plant_uuid_app(db: str, redis_url: str) -> list[tuple[str, str]]:
    execute(db, UUID_SCHEMA)
    jobs = {s: [str(uuid.uuid4()) for _ in range(3)] for s in ("pending", "running", "done")}
    execute(
        db,
        "INSERT INTO app.video_jobs (id, title, status) VALUES (:id, 't', :status)",
        [{"id": j, "status": s} for s, ids in jobs.items() for j in ids],
    )
    parts = {j: [str(uuid.uuid4()) for _ in range(2)] for ids in jobs.values() for j in ids}
    execute(
        db,
        "INSERT INTO app.video_job_parts (id, job_id, idx, status) "
        "VALUES (:id, :job, :idx, 'pending')",
        [{"id": p, "job": j, "idx": i} for j, ps in parts.items() for i, p in enumerate(ps)],
    )
    live = jobs["pending"] + jobs["running"]
    missing_job, missing_part = str(uuid.uuid4()), str(uuid.uuid4())
    app = producer_app(redis_url)
    try:
        for job in [*live, *jobs["done"], missing_job]:
            send(app, "media.process_video", "video", job)
        for job in live:  # the parts of live jobs, and the parts of a finished job
            for part in parts[job]:
                app.send_task(
                    "media.render_part", args=[job], kwargs={"part_id": part}, queue="render"
                )
        done_job = jobs["done"][0]
        for part in parts[done_job]:
            app.send_task(
                "media.render_part", args=[done_job], kwargs={"part_id": part}, queue="render"
            )
        app.send_task(
            "media.render_part", args=[live[0]], kwargs={"part_id": missing_part}, queue="render"
        )
        send(app, "media.send_report", "celery", "ops@example.com", "daily")
    finally:
        app.close()
    return sorted(
        ("orphan", i) for i in [*jobs["done"], missing_job, *parts[done_job], missing_part]
    )


def test_init_on_uuid_keys_in_a_schema_with_sub_tasks(
    tmp_path: Path, redis_url: str, empty_db: str
) -> None:
    planted = plant_uuid_app(empty_db, redis_url)
    env = urls(redis_url, empty_db)
    config = tmp_path / "maintenance.toml"
    settings = init_yes(config, env)

    assert (settings.tasks.table, settings.tasks.schema) == ("video_jobs", "app")
    assert settings.tasks.celery_id_column == "celery_task_id"
    assert settings.tasks.active_statuses == ("pending", "running")
    sub = settings.sub_tasks
    assert (sub.table, sub.schema, sub.id_column, sub.parent_column, sub.status_column) == (
        "video_job_parts",
        "app",
        "id",
        "job_id",
        "status",
    )
    bound = {(b.task, b.id_from, b.kind) for b in settings.bindings}
    assert bound == {
        ("media.process_video", "args[0]", "task"),
        ("media.render_part", "kwargs.part_id", "sub_task"),
    }
    assert findings(config, env) == planted

    # the schema-qualified spelling of the same tables works as well
    text = config.read_text()
    for table in ("video_jobs", "video_job_parts"):
        text = text.replace(f'table = "{table}"', f'table = "app.{table}"', 1)
    qualified = tmp_path / "qualified.toml"
    qualified.write_text("\n".join(s for s in text.splitlines() if not s.startswith("schema =")))
    assert load_settings(qualified, env={}).sub_tasks.schema == "app"
    assert findings(qualified, env) == planted


# -- config check ----------------------------------------------------------------------------
def test_config_check_on_a_good_and_a_broken_config(
    tmp_path: Path, redis_url: str, empty_db: str
) -> None:
    plant_uuid_app(empty_db, redis_url)
    env = urls(redis_url, empty_db)
    good = tmp_path / "good.toml"
    init_yes(good, env)
    done = cli("--config", str(good), "config", "check", "--json", env=env)
    assert done.returncode == 0, done.stdout + done.stderr
    report = json.loads(done.stdout)
    assert report["usable"] and report["problems"] == [] and report["warnings"] == []
    verdicts = {t["task"]: t for t in report["tasks"]}
    assert verdicts["media.process_video"]["managed"]
    assert verdicts["media.render_part"]["binding"] == "kwargs.part_id (sub_task)"
    assert not verdicts["media.send_report"]["managed"]
    assert "no [[bindings]] entry matches" in verdicts["media.send_report"]["why"]

    text = good.read_text()
    broken = tmp_path / "broken.toml"
    broken.write_text(
        text.replace('status_column = "status"', 'status_column = "stat"', 1).replace(
            'queues = ["celery", "render", "video"]', 'queues = ["celery", "video"]'
        )
    )
    done = cli("--config", str(broken), "config", "check", env=env)
    assert done.returncode == 1, done.stdout + done.stderr
    assert "PROBLEM  tasks.status_column: column 'stat' does not exist in app.video_jobs" in (
        done.stdout
    )
    assert "warning  scan.queues: not configured, so never scanned: render" in done.stdout
    assert "NOT usable" in done.stdout

    wrong_binding = tmp_path / "wrong.toml"
    wrong_binding.write_text(text.replace('id_from = "kwargs.part_id"', 'id_from = "args[0]"'))
    done = cli("--config", str(wrong_binding), "config", "check", "--json", env=env)
    assert done.returncode == 1
    render = next(t for t in json.loads(done.stdout)["tasks"] if t["task"] == "media.render_part")
    assert render["level"] == "problem" and 'id_from = "kwargs.part_id"' in render["why"]

    missing_column = cli("--config", str(broken), "check", env=env)  # and `check` itself
    assert missing_column.returncode == 2 and "'stat' does not exist" in missing_column.stderr


def test_config_check_unavailable_and_config_errors(tmp_path: Path, empty_db: str) -> None:
    config = tmp_path / "m.toml"
    config.write_text('[tasks]\ntable = "jobs"\n')
    dead = {"REDIS_URL": f"redis://127.0.0.1:{free_port()}/0", "DATABASE_URL": empty_db}
    assert cli("--config", str(config), "config", "check", env=dead).returncode == 3
    bad = tmp_path / "bad.toml"
    bad.write_text("[tasks]\ntable = \n")
    done = cli("--config", str(bad), "config", "check", env=dead)
    assert done.returncode == 2 and "not valid TOML" in done.stderr


# -- config show -----------------------------------------------------------------------------
def test_config_show_redacts_and_names_each_source(tmp_path: Path) -> None:
    config = tmp_path / "m.toml"
    config.write_text(
        '[tasks]\ntable = "app.jobs"\n[alerts]\nwebhook_url = "https://hooks.example/T0/B1/s3cr3t"\n'
        '[redis]\ntransport_options = { sentinel_kwargs = { password = "sentinelpw" } }\n'
    )
    env = {
        "MAINTENANCE_CONFIG": str(config),
        "DATABASE_URL": "postgresql://app:dbpassw0rd@db.internal/app",
    }
    done = cli("config", "show", "--json", env=env)
    assert done.returncode == 0, done.stderr
    for secret in ("dbpassw0rd", "s3cr3t", "sentinelpw"):
        assert secret not in done.stdout
    doc = json.loads(done.stdout)
    assert (doc["config_file"], doc["config_file_from"]) == (str(config), "$MAINTENANCE_CONFIG")
    values = {v["key"]: v for v in doc["values"]}
    assert values["database.url"] == {
        "key": "database.url",
        "value": "postgresql://app:***@db.internal/app",
        "source": "$DATABASE_URL",
    }
    assert values["tasks.table"]["source"] == "file"
    assert values["tasks.schema"]["value"] == "app"
    assert values["redis.broker_url"]["source"] == "default"
    text = cli("config", "show", env=env)
    assert text.returncode == 0
    row = r"\ndatabase\.url +postgresql://app:\*\*\*@db\.internal/app +\$DATABASE_URL\n"
    assert re.search(row, text.stdout)
    assert "dbpassw0rd" not in text.stdout


def test_config_show_under_celery_names_the_app(tmp_path: Path, redis_url: str) -> None:
    config = tmp_path / "m.toml"
    config.write_text(f'[redis]\nbroker_url = "redis://127.0.0.1:{free_port()}/0"\n')
    clean = {k: v for k, v in os.environ.items() if k not in URL_VARS}
    done = subprocess.run(
        [sys.executable, "-m", "celery", "-A", "examples.demo.app", "maintenance",
         "--config", str(config), "config", "show", "--json"],
        capture_output=True, text=True, cwd=ROOT, timeout=120,
        env={**clean, "DEMO_BROKER_URL": redis_url, "DEMO_RESULT_URL": redis_url},
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    values = {v["key"]: v for v in json.loads(done.stdout)["values"]}
    assert values["redis.broker_url"] == {
        "key": "redis.broker_url",
        "value": redis_url,
        "source": "the Celery app (-A)",
    }


# -- config example --------------------------------------------------------------------------
def test_config_example_is_the_shipped_file_and_loads(tmp_path: Path) -> None:
    done = cli("config", "example")
    assert done.returncode == 0
    assert done.stdout == example_config()
    assert (ROOT / "config" / "maintenance.example.toml").is_symlink()
    assert done.stdout == (ROOT / "config" / "maintenance.example.toml").read_text()
    saved = tmp_path / "maintenance.toml"
    saved.write_text(done.stdout)
    assert load_settings(saved, env={}).redis.max_connections == 50
    tomllib.loads(done.stdout)


def test_a_missing_config_points_at_config_init(tmp_path: Path) -> None:
    done = cli("--config", str(tmp_path / "none.toml"), "check")
    assert done.returncode == 2
    assert "task-cleanup config init" in done.stderr
    assert "task-cleanup config example > config/maintenance.toml" in done.stderr


# -- config init's rules ---------------------------------------------------------------------
def test_init_without_a_terminal_or_yes_is_a_usage_error(tmp_path: Path) -> None:
    output = tmp_path / "m.toml"
    done = cli("config", "init", "--output", str(output), env={"DATABASE_URL": "sqlite://"})
    assert done.returncode == 2
    assert "not a terminal: use --yes" in done.stderr
    assert not output.exists()
    output.write_text("# mine\n")
    done = cli("config", "init", "--yes", "--output", str(output), env={"DATABASE_URL": "x"})
    assert done.returncode == 2 and "use --force" in done.stderr
    assert output.read_text() == "# mine\n"
    done = cli("config", "init", "--yes", "--output", str(tmp_path / "n.toml"))
    assert done.returncode == 2 and "--database-url" in done.stderr


def test_init_asks_for_the_statuses_and_before_writing(
    tmp_path: Path, redis_url: str, empty_db: str
) -> None:
    plant_uuid_app(empty_db, redis_url)
    output = tmp_path / "asked.toml"
    clean = {k: v for k, v in os.environ.items() if k not in URL_VARS}
    args = ["-m", "maintenance.cli.main", "config", "init", "--output", str(output)]

    def spawn() -> pexpect.spawn[str]:
        return pexpect.spawn(
            sys.executable,
            args,
            cwd=str(ROOT),
            env={**clean, **urls(redis_url, empty_db), "NO_COLOR": "1"},
            encoding="utf-8",
            timeout=60,
        )

    child = spawn()
    child.expect(r"Statuses present in app\.video_jobs\.status and app\.video_job_parts\.status:")
    child.expect(r"2\. pending  \(app\.video_jobs\.status, app\.video_job_parts\.status\)")
    child.expect(r"Still to run .*\[pending,running\]: ")
    child.sendline("1,2")  # numbered as listed: done, pending, running
    child.expect(r"Write it to .*asked\.toml\? \[y/N\]: ")
    assert 'active_statuses = ["done", "pending"]  # chosen: chosen at the prompt' in (
        child.before or ""
    )
    child.sendline("n")
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 1 and not output.exists()

    child = spawn()
    child.expect(r"Still to run .*: ")
    child.sendline("")  # the proposal
    child.expect(r"\[y/N\]: ")
    child.sendline("y")
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 0
    assert load_settings(output, env={}).tasks.active_statuses == ("pending", "running")


# -- help ------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", sorted(config_group.commands))
def test_every_config_command_has_help_with_examples(name: str) -> None:
    done = cli("config", name, "--help")
    assert done.returncode == 0, done.stderr
    assert f"Usage: task-cleanup config {name}" in done.stdout
    assert f"task-cleanup config {name}" in done.stdout.split("Examples:")[1]


# -- the worker without a config -------------------------------------------------------------
@pytest.mark.parametrize("program", ["worker", "beat"])
def test_celery_worker_without_a_config_says_so_in_one_paragraph(
    tmp_path: Path, program: str
) -> None:
    clean = {k: v for k, v in os.environ.items() if k not in URL_VARS}
    done = subprocess.run(
        [sys.executable, "-m", "celery", "-A", "maintenance.worker", program],
        capture_output=True,
        text=True,
        cwd=tmp_path,  # no config/maintenance.toml here
        env={**clean, "PYTHONPATH": str(ROOT)},
        timeout=120,
    )
    assert done.returncode == 2
    assert "Traceback" not in done.stderr
    message = done.stderr.strip()
    assert "\n" not in message
    assert "configuration error: config file not found" in message
    assert "config/maintenance.toml" in message and "task-cleanup config init" in message
