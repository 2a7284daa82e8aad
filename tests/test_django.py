"""Django support: `settings_from_django` (unit tests with stand-in models), then the test project
tests/django_project in subprocesses, as a Django user runs it: `manage.py migrate`,
`manage.py task_cleanup …` against real PostgreSQL and Redis, a producer that enqueues before its
commit, and the project's guarded tasks in a real `celery -A proj worker`.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import redis
import sqlalchemy as sa
from celery import Celery
from celery.result import AsyncResult
from django.core.exceptions import FieldDoesNotExist

from maintenance.cli.base import run_standalone
from maintenance.cli.main import make_group
from maintenance.config import Settings, settings_from_mapping
from maintenance.contrib.django.management.commands.task_cleanup import without_django_options
from maintenance.contrib.django.settings import database_url, settings_from_django
from maintenance.errors import ConfigError
from maintenance.guards import runtime
from tests.conftest import ROOT, wait_for
from tests.workers import stop_process

PROJECT = ROOT / "tests" / "django_project"
QUEUE = "celery"
QUARANTINE = "task-maintenance:quarantine"
# The outer environment must not steer the subprocesses: these would win over Django's settings.
OVERRIDES = (
    "DATABASE_URL",
    "REDIS_URL",
    "RESULT_BACKEND_URL",
    "MAINTENANCE_CONFIG",
    "DJANGO_SETTINGS_MODULE",
)


# -- stand-ins for Django models: what settings_from_django reads of `_meta` -------------------
@dataclass
class FakeField:
    name: str
    column: str | None
    related_model: Any = None


@dataclass
class FakeMeta:
    label: str
    db_table: str
    fields: list[FakeField]
    pk: FakeField = field(default_factory=lambda: FakeField("id", "id"))

    def get_field(self, name: str) -> FakeField:
        for candidate in [self.pk, *self.fields]:
            if name == candidate.name:
                return candidate
        raise FieldDoesNotExist(f"{self.label} has no field named {name!r}")

    def get_fields(self) -> list[FakeField]:
        return [self.pk, *self.fields]


@dataclass
class FakeModel:
    _meta: FakeMeta


TASK = FakeModel(
    FakeMeta(
        "videos.Task",
        "videos_task",
        [
            FakeField("status", "state"),  # a db_column: the column name is followed
            FakeField("updated_at", "updated_at"),
            FakeField("celery_task_id", "celery_task_id"),
            FakeField("segments", None),  # the reverse relation: no column
        ],
    )
)
SEGMENT = FakeModel(
    FakeMeta(
        "videos.Segment",
        "videos_segment",
        [FakeField("task", "task_id", related_model=TASK), FakeField("status", "status")],
    )
)
OTHER = FakeModel(FakeMeta("videos.Other", "videos_other", [FakeField("status", "status")]))
MODELS = {"videos.Task": TASK, "videos.Segment": SEGMENT, "videos.Other": OTHER}


def get_model(label: str) -> Any:
    if "." not in label:
        raise ValueError("Model label must be of the form 'app_label.ModelName'.")
    if label not in MODELS:
        raise LookupError(f"App 'videos' doesn't have a '{label}' model.")
    return MODELS[label]


#: For the `celery_app` form: any object with a `conf` mapping stands in for a Celery app.
CELERY_APP = SimpleNamespace(
    conf={
        "broker_url": "redis://app-broker:6379/3",
        "result_backend": "redis://app-broker:6379/4",
        "broker_transport_options": {"global_keyprefix": "proj:"},
    }
)


def django_settings(**overrides: Any) -> SimpleNamespace:
    """A Django settings object as a Celery project has it."""
    values: dict[str, Any] = {
        "DATABASES": {
            "default": {
                "ENGINE": "django.db.backends.postgresql",
                "NAME": "videos",
                "USER": "app",
                "PASSWORD": "p@ss/w:rd",
                "HOST": "db.internal",
                "PORT": 5433,
            }
        },
        "CELERY_BROKER_URL": "redis://broker:6379/1",
        "CELERY_RESULT_BACKEND": "redis://broker:6379/2",
        "CELERY_BROKER_TRANSPORT_OPTIONS": {"visibility_timeout": 7200},
        "TASK_MAINTENANCE": {
            "tasks": {
                "model": "videos.Task",
                "active_statuses": ["pending", "processing"],
                "updated_at_field": "updated_at",
                "celery_id_field": "celery_task_id",
            },
            "sub_tasks": {"model": "videos.Segment", "status_field": "status"},
            "bindings": [{"task": "videos.tasks.process_video", "id_from": "args[0]"}],
        },
    }
    values.update(overrides)
    return SimpleNamespace(**values)


def with_section(name: str, **values: Any) -> dict[str, Any]:
    """TASK_MAINTENANCE of `django_settings()` with one section's keys changed."""
    raw: dict[str, Any] = json.loads(json.dumps(django_settings().TASK_MAINTENANCE))
    raw[name] = {**raw.get(name, {}), **values}
    return raw


def translate(env: dict[str, str] | None = None, **overrides: Any) -> Settings:
    return settings_from_django(django_settings(**overrides), env or {}, get_model=get_model)


def config_error(**overrides: Any) -> str:
    with pytest.raises(ConfigError) as caught:
        translate(**overrides)
    return str(caught.value)


# -- settings_from_django ---------------------------------------------------------------------
def test_models_give_the_tables_and_columns_and_django_the_urls() -> None:
    """Model and field names become table and column names (the FK's column is the parent);
    DATABASES gives the database URL, the CELERY_* settings the broker and transport options."""
    settings = translate()
    tasks, sub_tasks = settings.tasks, settings.sub_tasks
    assert (tasks.table, tasks.id_column, tasks.status_column) == ("videos_task", "id", "state")
    assert (tasks.updated_at_column, tasks.celery_id_column) == ("updated_at", "celery_task_id")
    assert tasks.active_statuses == ("pending", "processing")
    assert (sub_tasks.table, sub_tasks.parent_column, sub_tasks.status_column) == (
        "videos_segment",
        "task_id",  # the one foreign key to videos.Task, found without parent_field
        "status",
    )
    url = sa.engine.make_url(settings.database.url)
    assert (url.drivername, url.username, url.password) == (
        "postgresql+psycopg2",
        "app",
        "p@ss/w:rd",
    )
    assert (url.host, url.port, url.database) == ("db.internal", 5433, "videos")
    assert settings.redis.broker_url == "redis://broker:6379/1"
    assert settings.redis.result_backend_url == "redis://broker:6379/2"
    assert settings.redis.transport_options == {"visibility_timeout": 7200}
    assert settings.source == "settings.TASK_MAINTENANCE"
    assert [b.task for b in settings.bindings] == ["videos.tasks.process_video"]


def test_the_environment_overrides_still_win() -> None:
    """DATABASE_URL, REDIS_URL and RESULT_BACKEND_URL win over DATABASES and CELERY_*; with
    DATABASE_URL set, an engine we could not translate does not matter."""
    env = {
        "DATABASE_URL": "postgresql+psycopg2://env@envdb/envname",
        "REDIS_URL": "redis://env-broker:6379/0",
        "RESULT_BACKEND_URL": "redis://env-results:6379/0",
    }
    odd = {"default": {"ENGINE": "django.db.backends.oracle", "NAME": "x"}}
    settings = translate(env=env, DATABASES=odd, CELERY_BROKER_URL="amqp://guest@rabbit//")
    assert settings.database.url == env["DATABASE_URL"]
    assert settings.redis.broker_url == env["REDIS_URL"]
    assert settings.redis.result_backend_url == env["RESULT_BACKEND_URL"]


def test_explicit_sections_win_over_django_and_celery() -> None:
    """What TASK_MAINTENANCE sets itself (a database URL or alias, a broker, transport options,
    plain columns) wins over what is read from Django and Celery."""
    raw = with_section(
        "redis", broker_url="redis://mine:6379/0", transport_options={"visibility_timeout": 60}
    )
    raw["database"] = {"alias": "jobs", "batch_size": 100}
    raw["sub_tasks"] = {"model": "videos.Segment", "parent_column": "task_id"}
    databases = {
        "default": {"ENGINE": "django.db.backends.sqlite3", "NAME": "/srv/app.db"},
        "jobs": {"ENGINE": "django.db.backends.mysql", "NAME": "jobs", "USER": "j", "HOST": "m"},
    }
    settings = translate(TASK_MAINTENANCE=raw, DATABASES=databases)
    assert settings.redis.broker_url == "redis://mine:6379/0"
    assert settings.redis.result_backend_url == "redis://broker:6379/2"  # not set: Celery's
    assert settings.redis.transport_options == {"visibility_timeout": 60}
    assert (settings.database.url, settings.database.batch_size) == (
        "mysql+pymysql://j@m/jobs",
        100,
    )
    assert settings.sub_tasks.parent_column == "task_id"
    plain = {"tasks": {"table": "jobs", "status_column": "state"}, "database": {"url": "sqlite://"}}
    settings = translate(TASK_MAINTENANCE=plain)
    assert (settings.tasks.table, settings.tasks.status_column) == ("jobs", "state")


@pytest.mark.parametrize(
    ("database", "expected"),
    [
        (
            {"ENGINE": "django.db.backends.sqlite3", "NAME": "/srv/db.sqlite3"},
            "sqlite:////srv/db.sqlite3",
        ),
        (
            {"ENGINE": "django.db.backends.postgresql", "NAME": "app", "HOST": "/run/pg"},
            "postgresql+psycopg2:///app?host=%2Frun%2Fpg",
        ),
        (
            {
                "ENGINE": "django_prometheus.db.backends.postgresql",
                "NAME": "app",
                "USER": "u",
                "HOST": "pg",
                "OPTIONS": {"sslmode": "require", "pool": True},  # pool is Django's own
            },
            "postgresql+psycopg2://u@pg/app?sslmode=require",
        ),
        (
            {
                "ENGINE": "django.db.backends.mysql",
                "NAME": "app",
                "USER": "u",
                "PASSWORD": "pw",
                "HOST": "/run/mysqld/mysqld.sock",
                "OPTIONS": {"charset": "utf8mb4"},
            },
            "mysql+pymysql://u:pw@/app?charset=utf8mb4&unix_socket=%2Frun%2Fmysqld%2Fmysqld.sock",
        ),
    ],
)
def test_database_url_from_each_engine(database: dict[str, Any], expected: str) -> None:
    assert database_url(database) == expected


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        (
            {"TASK_MAINTENANCE": with_section("tasks", status_field="state")},
            "model videos.Task has no field 'state'; its fields: celery_task_id, id, status, "
            "updated_at (key 'tasks.status_field', in settings.TASK_MAINTENANCE)",
        ),
        (
            {"TASK_MAINTENANCE": with_section("tasks", model="videos.Nope")},
            "no model 'videos.Nope'",
        ),
        (
            {"TASK_MAINTENANCE": with_section("tasks", model="Task")},
            "no model 'Task': Model label must be of the form",
        ),
        (
            {"TASK_MAINTENANCE": with_section("tasks", updated_at_field="segments")},
            "videos.Task.segments has no column of its own",
        ),
        (
            {"TASK_MAINTENANCE": with_section("tasks", table="tasks")},
            "given twice: by the model videos.Task and here (key 'tasks.table'",
        ),
        (
            {"TASK_MAINTENANCE": {"tasks": {"table": "t", "status_field": "status"}}},
            "needs 'model' (app_label.Model) (key 'tasks.status_field'",
        ),
        (
            {"TASK_MAINTENANCE": with_section("sub_tasks", model="videos.Other")},
            "videos.Other has 0 foreign keys to videos.Task",
        ),
        (
            {"TASK_MAINTENANCE": with_section("database", alias="jobs")},
            "DATABASES has no alias 'jobs' (it has ['default'])",
        ),
        ({"TASK_MAINTENANCE": with_section("tasks", colour="red")}, "key 'tasks.colour'"),
        (
            {"CELERY_BROKER_URL": "amqp://guest@rabbit//"},
            "the Celery broker is not Redis (amqp://); this tool reads Celery's Redis state only "
            "(key 'CELERY_BROKER_URL', in the Django settings)",
        ),
        (
            {"DATABASES": {"default": {"ENGINE": "django.db.backends.oracle"}}},
            "ENGINE 'django.db.backends.oracle' is not supported",
        ),
        ({"TASK_MAINTENANCE": None}, "not set: add TASK_MAINTENANCE to your Django settings"),
        ({"TASK_MAINTENANCE": ["tasks"]}, "must be a dict, got list"),
        (
            {"TASK_MAINTENANCE": {"config": "m.toml", "tasks": {}}},
            "with 'config' the file holds the whole configuration; move ['tasks'] into it",
        ),
        (
            {"TASK_MAINTENANCE": {**with_section("tasks"), "celery_app": "proj.celery.app"}},
            "must be 'package.module:app'",
        ),
    ],
)
def test_bad_settings_name_what_is_wrong(overrides: dict[str, Any], expected: str) -> None:
    """Every mistake is a ConfigError naming the model, field or key (exit 2 on the CLI)."""
    assert expected in config_error(**overrides)


def test_a_sub_task_parent_must_refer_to_the_task_model() -> None:
    raw = {
        "tasks": {"model": "videos.Other"},
        "sub_tasks": {"model": "videos.Segment", "parent_field": "task"},
    }
    message = config_error(TASK_MAINTENANCE=raw)
    assert "videos.Segment.task refers to videos.Task, not to the tasks model videos.Other" in (
        message
    )


def test_the_config_form_reads_the_toml_file(tmp_path: Path) -> None:
    """`{"config": path}`: the file describes everything, Django's settings add nothing."""
    path = tmp_path / "maintenance.toml"
    path.write_text('[redis]\nbroker_url = "redis://file:6379/0"\n[tasks]\ntable = "jobs"\n')
    settings = translate(TASK_MAINTENANCE={"config": str(path)})
    assert (settings.tasks.table, settings.redis.broker_url) == ("jobs", "redis://file:6379/0")
    assert settings.source == str(path)
    missing = config_error(TASK_MAINTENANCE={"config": str(tmp_path / "none.toml")})
    assert "config file not found" in missing


def test_the_celery_app_form_reads_the_app_conf() -> None:
    """`"celery_app": "module:app"`: that app's broker, results and transport options."""
    raw = {**with_section("tasks"), "celery_app": "tests.test_django:CELERY_APP"}
    settings = translate(TASK_MAINTENANCE=raw)
    assert settings.redis.broker_url == "redis://app-broker:6379/3"
    assert settings.redis.result_backend_url == "redis://app-broker:6379/4"
    assert settings.redis.transport_options == {"global_keyprefix": "proj:"}
    raw["celery_app"] = "tests.test_django:NOT_THERE"
    assert "cannot import tests.test_django:NOT_THERE" in config_error(TASK_MAINTENANCE=raw)


def test_django_global_options_are_not_passed_to_the_group() -> None:
    """manage.py already applied --settings/--pythonpath; the click group would refuse them."""
    argv = ["--settings", "proj.settings", "check", "--pythonpath=.", "--json", "--", "--settings"]
    assert without_django_options(argv) == ["check", "--json", "--", "--settings"]


def test_the_group_takes_its_settings_from_the_loader(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """make_group(load=...): the loader replaces the config file, its errors exit 2 under the
    given program name; an explicit --config still reads the file."""

    def broken() -> Settings:
        raise ConfigError("model videos.Task has no field 'state'", source="settings.X")

    group = make_group("task_cleanup", load=broken, prog="manage.py task_cleanup")
    assert run_standalone(group, ["check"], "manage.py task_cleanup") == 2
    err = capsys.readouterr().err
    assert err == (
        "manage.py task_cleanup: configuration error: model videos.Task has no field 'state' "
        "(in settings.X)\n"
    )
    missing = str(tmp_path / "none.toml")
    assert run_standalone(group, ["--config", missing, "check"], "manage.py task_cleanup") == 2
    assert "config file not found" in capsys.readouterr().err


def test_the_guards_use_the_registered_loader(monkeypatch: pytest.MonkeyPatch) -> None:
    """The Django app's ready() registers a loader: the first guarded task's settings come from
    it, not from $MAINTENANCE_CONFIG (which names a file that does not exist here)."""
    monkeypatch.setattr(runtime, "_runtime", None)
    monkeypatch.setattr(runtime, "_loader", None)
    monkeypatch.setenv("MAINTENANCE_CONFIG", "/nonexistent/maintenance.toml")
    loaded = settings_from_mapping({"tasks": {"table": "videos_task"}}, source="loader")
    runtime.set_settings_loader(lambda: loaded)
    try:
        assert runtime.guard_runtime().settings is loaded
    finally:
        runtime.guard_runtime().close()
        runtime.set_settings_loader(None)


# -- the Django test project, in subprocesses --------------------------------------------------
def project_env(
    tmp_path: Path, database: str = "", broker: str = "", **extra: str
) -> dict[str, str]:
    """The environment the test project's settings read (VIDEOS_*), nothing that overrides."""
    env = {k: v for k, v in os.environ.items() if k not in OVERRIDES}
    env["VIDEOS_LOG_DIR"] = str(tmp_path / "logs")
    if database:
        url = sa.engine.make_url(database)
        env |= {
            "VIDEOS_DB_NAME": url.database or "",
            "VIDEOS_DB_USER": url.username or "",
            "VIDEOS_DB_PASSWORD": url.password or "",
            "VIDEOS_DB_HOST": url.host or "",
            "VIDEOS_DB_PORT": str(url.port or ""),
        }
    if broker:
        env["VIDEOS_BROKER_URL"] = broker
    return env | extra


def manage(
    *args: str, env: dict[str, str], timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(PROJECT / "manage.py"), *args],
        cwd=PROJECT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.fixture
def project(tmp_path: Path, database_url: str, redis_url: str) -> dict[str, str]:
    """The test project's environment, its tables migrated into a fresh database."""
    env = project_env(tmp_path, database_url, redis_url)
    migrated = manage("migrate", "--no-input", env=env)
    assert migrated.returncode == 0, migrated.stderr
    return env


def plant(env: dict[str, str], **counts: int) -> dict[str, dict[str, str]]:
    """Rows and real messages through the project's Celery app: kind -> row id -> Celery id."""
    done = manage("plant", *(f"--{kind}={n}" for kind, n in counts.items()), env=env)
    assert done.returncode == 0, done.stderr
    planted: dict[str, dict[str, str]] = json.loads(done.stdout)
    return planted


def queued_ids(client: redis.Redis) -> set[str]:
    return {json.loads(raw)["headers"]["id"] for raw in client.lrange(QUEUE, 0, -1)}


@pytest.fixture
def results(redis_url: str) -> Iterator[Celery]:
    """Reads task states from the project's result backend."""
    app = Celery("reader", broker=redis_url, backend=redis_url, set_as_current=False)
    yield app
    app.close()


def test_manage_py_task_cleanup_help_is_the_cli_help(tmp_path: Path) -> None:
    """`--help` needs no database or broker, and is task-cleanup's, under manage.py's name."""
    env = project_env(tmp_path)
    group = manage("task_cleanup", "--help", env=env)
    assert group.returncode == 0, group.stderr
    assert group.stdout.startswith("Usage: manage.py task_cleanup [OPTIONS] COMMAND [ARGS]...")
    for name in ("check", "cleanup", "revoke", "restore", "history", "init-db", "monitor", "lock"):
        assert f"\n  {name} " in group.stdout
    command = manage("task_cleanup", "cleanup", "--help", env=env)
    assert command.returncode == 0 and "--grace S" in command.stdout
    typo = manage("task_cleanup", "chek", env=env)
    assert typo.returncode == 2 and "No such command 'chek'" in typo.stderr
    assert "Did you mean" in typo.stderr and "check" in typo.stderr


def test_a_bad_task_maintenance_exits_2_with_one_line(tmp_path: Path) -> None:
    """A field the model lacks: exit 2, one line naming the model, the field and the key."""
    env = project_env(tmp_path, VIDEOS_TM_OVERRIDE='{"tasks": {"status_field": "state"}}')
    done = manage("task_cleanup", "check", env=env)
    assert done.returncode == 2, done.stderr
    assert done.stderr.startswith(
        "manage.py task_cleanup: configuration error: model videos.Task has no field 'state'"
    )
    assert "key 'tasks.status_field', in settings.TASK_MAINTENANCE" in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1 and done.stdout == ""


def test_check_then_cleanup_act_on_exactly_the_planted_orphans(
    project: dict[str, str], redis_client: redis.Redis, results: Celery
) -> None:
    """Messages for live, deleted and finished rows: check finds the deleted and finished ones,
    cleanup quarantines exactly those (REVOKED) and leaves the live ones queued."""
    planted = plant(project, live=4, deleted=2, finished=1)
    orphans = planted["deleted"] | planted["finished"]
    check = manage("task_cleanup", "check", "--json", env=project)
    assert check.returncode == 1, check.stderr
    report = json.loads(check.stdout)
    assert sorted(f["db_id"] for f in report["findings"]) == sorted(orphans)
    assert report["counts"]["orphan"] == len(orphans)

    cleanup = manage("task_cleanup", "cleanup", "--force", "--grace", "0", "--json", env=project)
    assert cleanup.returncode == 0, cleanup.stderr
    assert json.loads(cleanup.stdout)["done"] == {"quarantined": len(orphans)}
    assert queued_ids(redis_client) == set(planted["live"].values())
    assert redis_client.hlen(QUARANTINE) == len(orphans)
    for celery_id in orphans.values():
        assert AsyncResult(celery_id, app=results).state == "REVOKED"
    runs = manage("task_cleanup", "history", "--json", env=project)
    assert runs.returncode == 0, runs.stderr
    assert [run["outcome"] for run in json.loads(runs.stdout)] == ["ok"]


def test_a_row_committed_within_the_grace_period_is_never_touched(
    project: dict[str, str], redis_client: redis.Redis, tmp_path: Path
) -> None:
    """A producer that enqueues inside `transaction.atomic()`, before its commit: a cleanup that
    sees the message while the row is still invisible waits the grace period, finds the row
    committed meanwhile and leaves the message alone."""
    release = tmp_path / "commit-now"
    grace = ["--grace", "3", "--json"]
    producer = subprocess.Popen(
        [sys.executable, str(PROJECT / "manage.py"), "produce_before_commit", str(release)],
        cwd=PROJECT,
        env=project,
        stdout=subprocess.PIPE,
        text=True,
    )
    cleanup: subprocess.Popen[str] | None = None
    try:
        assert producer.stdout is not None
        sent = json.loads(producer.stdout.readline())  # the message is out, the row uncommitted
        cleanup = subprocess.Popen(
            [
                sys.executable,
                str(PROJECT / "manage.py"),
                "task_cleanup",
                "cleanup",
                "--force",
                *grace,
            ],
            cwd=PROJECT,
            env=project,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        assert cleanup.stderr is not None
        seen: list[str] = []
        while not any("grace period" in line for line in seen):  # the row was seen missing
            line = cleanup.stderr.readline()
            assert line, f"cleanup ended without waiting for the grace period: {seen}"
            seen.append(line)
        release.touch()  # the producer commits now, well within the 3 s grace period
        assert producer.wait(30) == 0
        out, err = cleanup.communicate(timeout=60)
    finally:
        for proc in (producer, cleanup):
            if proc is not None:
                stop_process(proc)
    assert cleanup.returncode == 0, err
    assert json.loads(out)["done"] == {}
    assert queued_ids(redis_client) == {sent["celery_id"]}
    assert redis_client.hlen(QUARANTINE) == 0


@contextmanager
def project_worker(env: dict[str, str], log: Path) -> Iterator[subprocess.Popen[bytes]]:
    """`celery -A proj worker` from the project directory, as Celery's Django guide runs it."""
    cmd = [sys.executable, "-m", "celery", "-A", "proj", "worker", "-P", "prefork", "-c", "1"]
    cmd += ["-n", f"videos-{os.getpid()}@%h", "--without-gossip", "--without-mingle"]
    cmd += ["--without-heartbeat", "-l", "INFO", "-f", str(log)]
    proc = subprocess.Popen(
        cmd,
        cwd=PROJECT,
        env={**env, "C_FORCE_ROOT": "1"},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.STDOUT,
    )
    try:
        yield proc
    finally:
        stop_process(proc)


def test_guarded_tasks_in_the_projects_worker(
    project: dict[str, str], results: Celery, database_url: str, tmp_path: Path
) -> None:
    """The project's `@validate_task_exists` task in a real worker, configured from
    TASK_MAINTENANCE by the app's ready(): a deleted row's task ends REVOKED without running,
    a live one runs (SUCCESS, its row done)."""
    planted = plant(project, live=1, deleted=1)
    (live_id, live_celery), (gone_id, gone_celery) = (
        next(iter(planted[kind].items())) for kind in ("live", "deleted")
    )
    log = tmp_path / "worker.log"

    def finished() -> bool:
        states = {AsyncResult(i, app=results).state for i in (live_celery, gone_celery)}
        return states <= {"SUCCESS", "REVOKED", "FAILURE"}

    with project_worker(project, log):
        wait_for(finished, timeout_s=40, what=f"both tasks to finish:\n{log}")
    assert AsyncResult(live_celery, app=results).state == "SUCCESS", log.read_text()
    assert AsyncResult(gone_celery, app=results).state == "REVOKED", log.read_text()
    engine = sa.create_engine(database_url)
    with engine.connect() as conn:
        rows = {i: s for i, s in conn.execute(sa.text("SELECT id, status FROM videos_task"))}
    engine.dispose()
    assert rows == {int(live_id): "done"}
    assert f"video {gone_id} done" not in log.read_text()
