#!/usr/bin/env python3
"""`make demo`: the seed's story end to end on a local Redis and PostgreSQL, in about a minute.

1. start a throw-away Redis and PostgreSQL (tests/servers.py) under .demo/;
2. the demo app enqueues real Celery messages for its rows; some rows are deleted by hand;
3. `task-cleanup check` shows the orphans;
4. the maintenance worker and Beat start, with the schedule brought forward from 02:00 to every
   few seconds, and clean the orphans (quarantined, restorable, recorded in the history);
5. the demo app's worker starts and runs only the live tasks: not one "does not exist" error.
Everything started here is stopped at the end, by PID.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from examples.demo.schema import create_schema, tasks
from maintenance.adapters.history import HistoryStore
from tests.servers import PostgresServer, RedisServer, free_port

ROOT = Path(__file__).resolve().parent.parent

WORK = ROOT / ".demo"
ROWS, DELETED = 12, 4
CONFIG = """
[redis]
broker_url = "{redis_url}"

[database]
url = "{database_url}"

[tasks]
table = "tasks"
updated_at_column = "updated_at"
celery_id_column = "celery_task_id"

[sub_tasks]
table = "sub_tasks"
status_column = "status"

[[bindings]]
task = "demo.process_video"
id_from = "args[0]"

[[bindings]]
task = "demo.process_segment"
id_from = "args[0]"
kind = "sub_task"

[scan]
queues = ["video_processing", "celery"]
inspect_timeout_s = 1.0

[cleanup]
grace_s = 2.0                 # the default is 60 s: brought forward for the demo

[schedule]
interval_s = 4.0              # the default is crontab "0 2 * * *": brought forward for the demo

[logging]
dir = "{logs}"
"""


def step(text: str) -> None:
    print(f"\n=== {text}", flush=True)


def wait_for(what: str, predicate: Callable[[], Any], timeout_s: float = 90.0) -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if value := predicate():
            return value
        time.sleep(0.2)
    raise RuntimeError(f"timed out after {timeout_s:.0f}s waiting for {what}")


class Processes:
    """Every child this demo starts, each in its own session, stopped by PID at the end."""

    def __init__(self, env: dict[str, str]):
        self.env = env
        self.running: list[tuple[str, subprocess.Popen[bytes]]] = []

    def start(self, name: str, args: list[str], ready: str, out: Path) -> None:
        with out.open("ab") as sink:
            proc = subprocess.Popen(
                [sys.executable, "-m", "celery", *args],
                cwd=ROOT,
                env=self.env,
                stdout=sink,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.running.append((name, proc))
        wait_for(
            f"{name} to start (see {out})",
            lambda: ready in out.read_text(errors="replace") or proc.poll() is not None,
        )
        if proc.poll() is not None:
            raise RuntimeError(f"{name} exited: see {out}")
        print(f"{name} started (pid {proc.pid})", flush=True)

    def stop(self, name: str | None = None) -> None:
        for entry in [e for e in self.running if name in (None, e[0])]:
            label, proc = entry
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(30)
                except subprocess.TimeoutExpired:
                    os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait()
            self.running.remove(entry)
            print(f"{label} stopped", flush=True)


def cli(config: Path, *args: str) -> int:
    """`task-cleanup --config CONFIG ARGS`, its output shown as is."""
    done = subprocess.run(
        [sys.executable, "-m", "maintenance.cli.main", "--config", str(config), *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    print(done.stdout.rstrip() or done.stderr.rstrip(), flush=True)
    return done.returncode


def statuses(engine: sa.Engine) -> dict[str, int]:
    with engine.connect() as conn:
        rows = conn.execute(sa.select(tasks.c.status, sa.func.count()).group_by(tasks.c.status))
        return {status: count for status, count in rows}


def scan_run(engine: sa.Engine) -> dict[str, Any] | None:
    """The first finished scan_orphans run that removed something, if any yet."""
    for run in HistoryStore(engine).recent_runs(limit=50):
        if (
            run["mode"] == "scan_orphans"
            and run["finished_at"]
            and run["counts"].get("done", {}).get("quarantined")
        ):
            return run
    return None


def story(redis_url: str, database_url: str, procs: Processes) -> int:
    config = WORK / "maintenance.toml"
    logs = WORK / "logs"
    config.write_text(CONFIG.format(redis_url=redis_url, database_url=database_url, logs=logs))
    engine = sa.create_engine(database_url)
    create_schema(engine)
    from examples.demo.app import app as demo_app  # reads REDIS_URL from the environment
    from examples.demo.story import enqueue_and_delete

    step(f"The demo app enqueues {ROWS} video tasks; then {DELETED} rows are deleted by hand")
    told = enqueue_and_delete(engine, demo_app, ROWS, DELETED)
    print(f"rows left: {statuses(engine)}; orphaned messages: {sorted(told.deleted.values())}")

    step("task-cleanup check: what is inconsistent (read-only)")
    code = cli(config, "check")
    print(f"(exit code {code}: 1 means inconsistencies found)")

    step("The maintenance worker and Beat (schedule brought forward to every 4 s)")
    procs.start(
        "maintenance worker",
        [
            "-A",
            "maintenance.worker",
            "worker",
            "-Q",
            "maintenance",
            "-n",
            "maintenance-demo@%h",
            "-c",
            "1",
            "-l",
            "INFO",
            "--without-gossip",
            "--without-mingle",
        ],
        "ready.",
        WORK / "maintenance-worker.out",
    )
    procs.start(
        "maintenance beat",
        ["-A", "maintenance.worker", "beat", "-l", "INFO", "-s", str(WORK / "celerybeat-schedule")],
        "beat: Starting",
        WORK / "maintenance-beat.out",
    )
    run = wait_for("Beat's scan_orphans run to clean the orphans", lambda: scan_run(engine))
    print(f"run {run['id']} by {run['started_by']}: {run['outcome']}, done {run['counts']['done']}")
    procs.stop("maintenance beat")
    procs.stop("maintenance worker")
    step("task-cleanup history, then check again")
    cli(config, "history", "--limit", "3")
    code = cli(config, "check")
    print(f"(exit code {code}: 0 means consistent)")

    step("The demo app's worker starts: only live tasks are left to run")
    worker_log = WORK / "demo-worker.log"
    procs.start(
        "demo worker",
        [
            "-A",
            "examples.demo.app",
            "worker",
            "-Q",
            "video_processing,celery",
            "-n",
            "demo@%h",
            "-c",
            "2",
            "-l",
            "INFO",
            "--without-gossip",
            "--without-mingle",
            "-f",
            str(worker_log),
        ],
        "ready.",
        worker_log,
    )
    wait_for("the live tasks to finish", lambda: statuses(engine) == {"done": ROWS - DELETED})
    time.sleep(1.0)  # anything left to run would be picked up by now
    procs.stop("demo worker")
    text = worker_log.read_text(errors="replace")
    errors = text.count("does not exist")
    succeeded = text.count("succeeded in")

    step("Summary")
    print(f"rows deleted by hand:            {DELETED} (their messages: orphans)")
    print(
        f"orphans quarantined by the run:  {run['counts']['done'].get('quarantined', 0)} "
        "(restorable with `task-cleanup restore` for 7 days)"
    )
    print(f"live tasks run by the demo app:  {succeeded} of {ROWS - DELETED}")
    print(f"'does not exist' errors:         {errors}")
    print(f"logs: {logs.relative_to(ROOT)}/task_cleanup.log (JSON), celery_worker.log, app.log")
    ok = errors == 0 and succeeded == ROWS - DELETED
    print(
        "\nOK: the orphans were cleaned before any worker ran them."
        if ok
        else "\nFAILED: see the logs above."
    )
    engine.dispose()
    return 0 if ok else 1


def main() -> int:
    shutil.rmtree(WORK, ignore_errors=True)
    (WORK / "logs").mkdir(parents=True)
    step("Starting a local Redis and PostgreSQL under .demo/")
    redis_server = RedisServer(free_port(), WORK / "redis").start()
    pg_server = PostgresServer(free_port(), WORK / "pg").start()
    env = {
        k: v for k, v in os.environ.items() if k not in ("RESULT_BACKEND_URL", "MAINTENANCE_CONFIG")
    }
    env.update(
        REDIS_URL=f"{redis_server.url}/0",
        DATABASE_URL=pg_server.url,
        MAINTENANCE_CONFIG=str(WORK / "maintenance.toml"),
        C_FORCE_ROOT="1",
    )
    os.environ.update({k: env[k] for k in ("REDIS_URL", "DATABASE_URL")})
    procs = Processes(env)
    try:
        return story(env["REDIS_URL"], env["DATABASE_URL"], procs)
    finally:
        procs.stop()
        pg_server.stop()
        redis_server.stop()


if __name__ == "__main__":
    sys.exit(main())
