"""The operator's actions against real Redis, PostgreSQL and Celery workers: `restore` brings a
quarantined message back, `revoke` refuses a live task unless forced."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import redis
import sqlalchemy as sa
from celery import Celery
from celery.result import AsyncResult

from examples.demo.schema import new_id
from tests.actions.test_run import (
    QUARANTINE,
    QUEUE,
    cleanup,
    insert_rows,
    queued_task_ids,
    send,
    status_counts,
)
from tests.conftest import run_cli, wait_for
from tests.workers import demo_worker


def test_restore_puts_message_back_and_worker_runs_it(
    config_file: Path,
    producer: Celery,
    engine: sa.Engine,
    redis_url: str,
    database_url: str,
    redis_client: redis.Redis,
    tmp_path: Path,
) -> None:
    """A quarantined message comes back intact; once its row exists, a worker runs it."""
    row = new_id()
    ids = send(producer, [row])
    original = redis_client.lindex(QUEUE, 0)
    assert cleanup(config_file, "--grace", "0", "--max-orphan-ratio", "1").returncode == 0
    assert redis_client.llen(QUEUE) == 0
    result = run_cli("--config", str(config_file), "restore", "--task-id", ids[row])
    assert result.returncode == 0, result.stderr
    assert redis_client.lrange(QUEUE, 0, -1) == [original]
    assert AsyncResult(ids[row], app=producer).state == "PENDING"
    insert_rows(engine, [row])
    log = tmp_path / "worker.log"
    with demo_worker(redis_url, database_url, log):
        wait_for(lambda: status_counts(engine).get("done") == 1, what="restored task to run")
    assert f"[{ids[row]}] succeeded" in log.read_text()


@pytest.mark.parametrize("command", ["revoke"])
def test_revoke_refuses_a_live_task_without_force(
    command: str, config_file: Path, producer: Celery, engine: sa.Engine, redis_client: redis.Redis
) -> None:
    """`revoke` will not kill a task whose row is still to run unless told --force."""
    live, gone = new_id(), new_id()
    insert_rows(engine, [live])
    ids = send(producer, [live, gone])
    refused = run_cli("--config", str(config_file), command, "--task-id", ids[live])
    assert refused.returncode == 1 and "--force" in refused.stderr
    assert redis_client.llen(QUEUE) == 2
    ok = run_cli("--config", str(config_file), command, "--task-id", ids[gone])
    assert ok.returncode == 0, ok.stderr
    assert queued_task_ids(redis_client) == [ids[live]]
    assert AsyncResult(ids[gone], app=producer).state == "REVOKED"


def revoke(config: Path, *args: str) -> tuple[int, dict[str, object]]:
    done = run_cli("--config", str(config), "revoke", "--json", *args)
    assert done.stdout, done.stderr
    return done.returncode, json.loads(done.stdout)


def test_forced_revoke_takes_a_live_queued_task_out_of_play_until_restored(
    config_file: Path,
    producer: Celery,
    engine: sa.Engine,
    redis_url: str,
    database_url: str,
    redis_client: redis.Redis,
    tmp_path: Path,
) -> None:
    """With no worker running, `revoke --force` quarantines the queued copy: a worker started
    afterwards does not run it, and `restore` brings it back to run."""
    target, sentinel = new_id(), new_id()
    insert_rows(engine, [target, sentinel])
    ids = send(producer, [target])
    code, doc = revoke(config_file, "--force", "--task-id", ids[target])
    assert (code, doc["done"]) == (0, {"quarantined": 1})
    assert redis_client.llen(QUEUE) == 0
    assert AsyncResult(ids[target], app=producer).state == "REVOKED"
    log = tmp_path / "worker.log"
    with demo_worker(redis_url, database_url, log):
        ids |= send(producer, [sentinel])  # it runs after anything queued before it
        wait_for(lambda: status_counts(engine).get("done") == 1, what="the sentinel task")
        assert ids[target] not in log.read_text()
        restored = run_cli("--config", str(config_file), "restore", "--task-id", ids[target])
        assert restored.returncode == 0, restored.stderr
        wait_for(lambda: status_counts(engine).get("done") == 2, what="the restored task")
    assert f"[{ids[target]}] succeeded" in log.read_text()


def test_revoke_of_an_id_found_nowhere_counts_nothing(
    config_file: Path, producer: Celery, redis_client: redis.Redis
) -> None:
    """An unknown id is reported as not found (exit 1), and no REVOKED state is written."""
    code, doc = revoke(config_file, "--task-id", "no-such-task")
    assert (code, doc["done"]) == (1, {"not_found": 1})
    assert any("not found anywhere: no-such-task" in line for line in doc["details"])  # type: ignore[attr-defined]  # a JSON list
    assert AsyncResult("no-such-task", app=producer).state == "PENDING"
    assert redis_client.hlen(QUARANTINE) == 0


def test_revoke_of_a_running_task_counts_once_its_worker_acknowledged(
    config_file: Path,
    producer: Celery,
    engine: sa.Engine,
    redis_url: str,
    database_url: str,
    tmp_path: Path,
) -> None:
    """A task a live worker is running is revoked by a broadcast that worker acknowledges."""
    row = new_id()
    insert_rows(engine, [row])
    log = tmp_path / "worker.log"
    with demo_worker(
        redis_url, database_url, log, pool="threads", extra_env={"DEMO_TASK_SECONDS": "6"}
    ):
        ids = send(producer, [row])
        wait_for(lambda: status_counts(engine).get("processing") == 1, what="the task to start")
        code, doc = revoke(config_file, "--force", "--task-id", ids[row])
    assert (code, doc["done"]) == (0, {"revoked": 1})


def test_revoke_of_an_eta_task_a_worker_holds_survives_that_workers_restart(
    config_file: Path,
    producer: Celery,
    engine: sa.Engine,
    redis_url: str,
    database_url: str,
    redis_client: redis.Redis,
    tmp_path: Path,
) -> None:
    """An ETA task a live worker holds unacked: the acknowledged revoke also takes the unacked
    entry, so the worker's shutdown puts nothing back and a fresh worker never runs it."""
    row, sentinel = new_id(), new_id()
    insert_rows(engine, [row, sentinel])
    with demo_worker(redis_url, database_url, tmp_path / "first.log", pool="threads"):
        ids = send(producer, [row], countdown=20)
        wait_for(lambda: redis_client.hlen("unacked") == 1, what="the worker to hold it")
        code, doc = revoke(config_file, "--force", "--task-id", ids[row])
        assert (code, doc["done"]) == (0, {"revoked": 1})
        assert redis_client.hlen("unacked") == 0 and redis_client.hlen(QUARANTINE) == 1
    assert redis_client.llen(QUEUE) == 0  # its warm shutdown restored nothing
    log = tmp_path / "fresh.log"
    with demo_worker(redis_url, database_url, log):
        ids |= send(producer, [sentinel])
        wait_for(lambda: status_counts(engine).get("done") == 1, what="the sentinel task")
        assert ids[row] not in log.read_text()
        restored = run_cli("--config", str(config_file), "restore", "--task-id", ids[row])
        assert restored.returncode == 0 and "revoked by a broadcast" in restored.stdout
        wait_for(
            lambda: status_counts(engine).get("done") == 2,
            timeout_s=60,
            what="the restored task at its ETA",
        )
