"""Hazards against real Redis and Celery: an ETA beyond the visibility timeout (that a real
worker then runs more than once), a duplicated task id, an expired message; and the cleanup of
the last two, restorable."""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import redis
import sqlalchemy as sa
from celery import Celery

from examples.demo.schema import new_id
from tests.conftest import run_cli, wait_for, write_config
from tests.workers import demo_worker

QUEUE = "hazards"
SHORT_VISIBILITY = "[redis.transport_options]\nvisibility_timeout = 2\n"


def hazard_config(tmp_path: Path, redis_url: str, database_url: str) -> Path:
    return write_config(
        tmp_path / "maintenance.toml",
        redis_url,
        database_url,
        extra=SHORT_VISIBILITY,
        bindings="",
        queues=(QUEUE,),
    )


def producer(redis_url: str) -> Celery:
    app = Celery("hazard-producer", broker=redis_url, backend=redis_url, set_as_current=False)
    app.conf.broker_transport_options = {"visibility_timeout": 2}
    return app


def check(config: Path) -> tuple[int, dict[str, object]]:
    done = run_cli("--config", str(config), "check", "--json", "--no-workers")
    assert done.returncode in (0, 1), done.stderr
    return done.returncode, json.loads(done.stdout)


def cleanup(config: Path) -> subprocess.CompletedProcess[str]:
    return run_cli("--config", str(config), "cleanup", "--force", "--grace", "0", "--json")


def queued_labels(client: redis.Redis) -> list[str]:
    return [json.loads(raw)["headers"]["argsrepr"] for raw in client.lrange(QUEUE, 0, -1)]


def test_an_eta_beyond_the_visibility_timeout_is_reported_and_really_runs_again(
    tmp_path: Path, redis_url: str, database_url: str, engine: sa.Engine
) -> None:
    config = hazard_config(tmp_path, redis_url, database_url)
    app = producer(redis_url)
    runs = tmp_path / "runs.txt"
    # An ETA far enough out that the worker below is up and holding the message well before it
    # (a worker that starts after the ETA runs it at once, once: nothing to show)
    task_id = app.send_task("hazard.touch", args=[str(runs), "eta"], queue=QUEUE, countdown=15).id
    code, report = check(config)
    assert code == 1
    (finding,) = [f for f in report["findings"] if f["kind"] == "eta_beyond_visibility"]  # type: ignore[attr-defined]
    assert finding["task_id"] == task_id and finding["reason"] == "eta_too_far"
    # 1 + floor((ETA - now) / 2 s): 8 when checked at once, 7 or 6 when the check started 1-5 s late
    times = int(finding["detail"].split("runs about ")[1].split()[0])
    assert 6 <= times <= 8 and "every 2 s" in finding["detail"]
    assert report["counts"]["eta_beyond_visibility"] == 1  # type: ignore[index]
    # Without a longer visibility timeout, a real worker runs it more than once.
    with demo_worker(
        redis_url,
        database_url,
        tmp_path / "worker.log",
        queues=QUEUE,
        app="tests.hazard_app",
        extra_env={"HAZARD_VISIBILITY_S": "2"},
    ):
        wait_for(
            lambda: runs.exists() and len(runs.read_text().split()) >= 2,
            timeout_s=40,
            what="the ETA task to run twice",
        )
    assert set(runs.read_text().split()) == {"eta"}
    app.close()


def test_a_duplicated_task_id_is_found_and_its_extra_copy_removed_restorably(
    tmp_path: Path, redis_url: str, database_url: str, redis_client: redis.Redis
) -> None:
    config = hazard_config(tmp_path, redis_url, database_url)
    app = producer(redis_url)
    fixed = new_id()
    for label in ("first", "second"):
        app.send_task("hazard.touch", args=["/dev/null", label], queue=QUEUE, task_id=fixed)
    app.send_task("hazard.touch", args=["/dev/null", "other"], queue=QUEUE)
    code, report = check(config)
    assert code == 1 and report["counts"]["duplicate"] == 1  # type: ignore[index]
    assert [f["task_id"] for f in report["findings"]] == [fixed]  # type: ignore[attr-defined]

    dry = run_cli("--config", str(config), "cleanup", "--dry-run", "--grace", "0", "-v")
    assert "quarantine" in dry.stdout and fixed in dry.stdout
    done = cleanup(config)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["done"]["quarantined"] == 1
    # Kept: the copy a worker takes first (the tail: published first); the other one is gone.
    assert queued_labels(redis_client) == ["['/dev/null', 'other']", "['/dev/null', 'first']"]
    assert redis_client.get(f"celery-task-meta-{fixed}") is None  # its task still runs: no state
    assert check(config)[0] == 0

    back = run_cli("--config", str(config), "restore", "--task-id", fixed, "--json")
    assert back.returncode == 0, back.stderr
    assert sorted(queued_labels(redis_client)) == [
        "['/dev/null', 'first']",
        "['/dev/null', 'other']",
        "['/dev/null', 'second']",
    ]
    app.close()


def test_an_expired_message_is_found_and_removed_as_revoked(
    tmp_path: Path, redis_url: str, database_url: str, redis_client: redis.Redis
) -> None:
    config = hazard_config(tmp_path, redis_url, database_url)
    app = producer(redis_url)
    stale = app.send_task("hazard.touch", args=["/dev/null", "late"], queue=QUEUE, expires=1).id
    fresh = app.send_task("hazard.touch", args=["/dev/null", "ok"], queue=QUEUE, expires=600).id
    time.sleep(1.5)
    code, report = check(config)
    assert code == 1
    assert [(f["kind"], f["task_id"]) for f in report["findings"]] == [  # type: ignore[attr-defined]
        ("expired_waiting", stale)
    ]
    done = cleanup(config)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["done"]["quarantined"] == 1
    assert queued_labels(redis_client) == ["['/dev/null', 'ok']"]
    state = json.loads(redis_client.get(f"celery-task-meta-{stale}") or b"{}")
    assert state.get("status") == "REVOKED"
    assert redis_client.get(f"celery-task-meta-{fresh}") is None
    app.close()
