"""Safe cleanup against real Redis, PostgreSQL and Celery workers: dry run, grace re-check,
circuit breaker, lock, and what a worker runs afterwards."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from pathlib import Path

import orjson
import pytest
import redis
import sqlalchemy as sa
from celery import Celery
from celery.result import AsyncResult

from examples.demo.schema import new_id, sub_tasks, tasks, utcnow
from maintenance.adapters.history import HistoryStore
from tests.conftest import ROOT, producer_app, run_cli, wait_for
from tests.servers import PostgresServer
from tests.workers import demo_worker

QUEUE = "video_processing"
QUARANTINE = "task-maintenance:quarantine"


def insert_rows(engine: sa.Engine, ids: list[str], status: str = "pending") -> None:
    if ids:
        with engine.begin() as conn:
            conn.execute(
                sa.insert(tasks), [dict(id=i, status=status, updated_at=utcnow()) for i in ids]
            )


def send(producer: Celery, row_ids: list[str], **options: object) -> dict[str, str]:
    """Row id -> Celery task id of a real `demo.process_video` message."""
    return {
        i: producer.send_task("demo.process_video", args=[i], queue=QUEUE, **options).id
        for i in row_ids
    }


def queued_task_ids(client: redis.Redis, key: str = QUEUE) -> list[str]:
    ids = []
    for start in range(0, client.llen(key), 1000):
        for raw in client.lrange(key, start, start + 999):
            ids.append(orjson.loads(raw)["headers"]["id"])
    return ids


def status_counts(engine: sa.Engine) -> dict[str, int]:
    with engine.connect() as conn:
        rows = conn.execute(sa.select(tasks.c.status, sa.func.count()).group_by(tasks.c.status))
        return {status: count for status, count in rows}


def cleanup(config: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    return run_cli("--config", str(config), "cleanup", "--force", "--json", *extra)


def test_cleanup_then_worker_runs_every_live_task_once_and_no_orphan(
    config_file: Path,
    producer: Celery,
    engine: sa.Engine,
    redis_url: str,
    database_url: str,
    redis_client: redis.Redis,
    tmp_path: Path,
) -> None:
    """After cleanup a real worker runs each live task exactly once, and orphans are REVOKED."""
    # Given live, deleted and finished rows, each with a queued message (some in priority bands)
    live, gone, done = ([new_id() for _ in range(n)] for n in (12, 4, 3))
    insert_rows(engine, live)
    insert_rows(engine, done, status="done")
    ids = send(producer, live[:6] + gone[:2] + done)
    ids |= send(producer, live[6:] + gone[2:], priority=7)
    # When cleanup runs
    result = cleanup(config_file, "--grace", "0", "--max-orphan-ratio", "0.9")
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["done"]["quarantined"] == len(gone) + len(done)
    # Then every orphan is REVOKED and quarantined, and every live message is still queued
    for row in gone + done:
        assert AsyncResult(ids[row], app=producer).state == "REVOKED"
    assert redis_client.hlen(QUARANTINE) == len(gone) + len(done)
    assert not [raw for raw in redis_client.lrange(QUEUE, 0, -1) if b"tombstone" in raw]
    log = tmp_path / "worker.log"
    with demo_worker(redis_url, database_url, log):
        wait_for(
            lambda: status_counts(engine).get("done") == len(live) + len(done),
            what="live tasks to run",
        )
        time.sleep(1)
    text = log.read_text()
    assert "does not exist" not in text
    for row in live:
        assert text.count(f"[{ids[row]}] succeeded") == 1
    for row in gone + done:
        assert ids[row] not in text


def test_dry_run_changes_nothing(
    config_file: Path, producer: Celery, engine: sa.Engine, redis_client: redis.Redis
) -> None:
    """`cleanup --dry-run` shows the plan and leaves every message where it was."""
    gone = [new_id() for _ in range(3)]
    send(producer, gone)
    before = redis_client.lrange(QUEUE, 0, -1)
    result = run_cli("--config", str(config_file), "cleanup", "--dry-run", "-v")
    assert result.returncode == 1
    assert "hold: awaiting_grace" in result.stdout
    assert "a real run waits the grace period" in result.stdout
    assert redis_client.lrange(QUEUE, 0, -1) == before
    assert redis_client.hlen(QUARANTINE) == 0


def test_dry_run_with_no_grace_shows_the_plan_the_real_run_makes(
    config_file: Path, producer: Celery, engine: sa.Engine, redis_client: redis.Redis
) -> None:
    """With `--grace 0` the real run re-checks at once, so the dry run does too: same plan."""
    live, gone = [new_id() for _ in range(3)], [new_id() for _ in range(2)]
    insert_rows(engine, live)
    send(producer, live + gone)
    dry = cleanup(config_file, "--dry-run", "--grace", "0")
    assert dry.returncode == 1, dry.stderr  # findings, nothing done
    assert redis_client.llen(QUEUE) == len(live + gone)
    real = cleanup(config_file, "--grace", "0")
    assert real.returncode == 0, real.stderr
    planned = [json.loads(out.stdout)["planned"] for out in (dry, real)]
    assert planned == [{"quarantine": len(gone)}, {"quarantine": len(gone)}]
    assert json.loads(real.stdout)["done"] == {"quarantined": len(gone)}


def test_missing_row_committed_during_grace_is_never_touched(
    config_file: Path, producer: Celery, engine: sa.Engine, redis_client: redis.Redis
) -> None:
    """An enqueue-before-commit producer: the row appears within the grace period, so it stays."""
    late, gone = new_id(), new_id()
    ids = send(producer, [late, gone])
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "maintenance.cli.main",
            "--config",
            str(config_file),
            "cleanup",
            "--force",
            "--json",
            "--grace",
            "3",
            "--max-orphan-ratio",
            "1",
        ],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stderr is not None
    for line in proc.stderr:  # the scan saw both rows missing; now the grace period runs
        if line.startswith("Waiting"):
            break
    insert_rows(engine, [late])  # the producer's transaction commits late
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    summary = json.loads(out)
    assert summary["planned"].get("held_row_came_back") == 1
    assert queued_task_ids(redis_client) == [ids[late]]
    assert AsyncResult(ids[late], app=producer).state == "PENDING"


def test_sub_task_row_committed_during_grace_is_never_touched(
    config_file: Path, producer: Celery, engine: sa.Engine, redis_client: redis.Redis
) -> None:
    """The grace re-check judges sub-task rows (and their parent) as the scan does."""
    parent, late, gone = new_id(), new_id(), new_id()
    insert_rows(engine, [parent])
    ids = {
        i: producer.send_task("demo.process_segment", args=[i], queue=QUEUE).id
        for i in (late, gone)
    }
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "maintenance.cli.main",
            "--config",
            str(config_file),
            "cleanup",
            "--force",
            "--json",
            "--grace",
            "3",
            "--max-orphan-ratio",
            "1",
        ],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stderr is not None
    for line in proc.stderr:
        if line.startswith("Waiting"):
            break
    with engine.begin() as conn:
        conn.execute(sa.insert(sub_tasks).values(id=late, task_id=parent, status="pending"))
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    assert json.loads(out)["done"] == {"quarantined": 1}
    assert queued_task_ids(redis_client) == [ids[late]]
    assert AsyncResult(ids[gone], app=producer).state == "REVOKED"


def test_database_stopped_during_cleanup_removes_nothing_and_exits_3(
    config_file: Path,
    producer: Celery,
    engine: sa.Engine,
    redis_client: redis.Redis,
    pg_server: PostgresServer,
) -> None:
    """The database dies during the grace wait: exit 3, no message removed."""
    live, gone = [new_id() for _ in range(4)], [new_id() for _ in range(2)]
    insert_rows(engine, live)
    send(producer, live + gone)
    before = redis_client.lrange(QUEUE, 0, -1)
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "maintenance.cli.main",
            "--config",
            str(config_file),
            "cleanup",
            "--force",
            "--grace",
            "4",
        ],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        time.sleep(2.5)  # scan done, waiting out the grace period
        pg_server.stop()
        out, err = proc.communicate(timeout=120)
    finally:
        pg_server.resume()
    assert proc.returncode == 3, (out, err)
    assert "database" in err and "Traceback" not in err
    assert redis_client.lrange(QUEUE, 0, -1) == before
    assert redis_client.hlen(QUARANTINE) == 0


def test_circuit_breaker_refuses_a_plan_of_mostly_orphans(
    config_file: Path, producer: Celery, engine: sa.Engine, redis_client: redis.Redis
) -> None:
    """When most managed messages look orphaned (a wrong database?), nothing is removed."""
    live, gone = [new_id()], [new_id() for _ in range(5)]
    insert_rows(engine, live)
    send(producer, live + gone)
    before = redis_client.lrange(QUEUE, 0, -1)
    result = run_cli("--config", str(config_file), "cleanup", "--force", "--grace", "0")
    assert result.returncode == 1
    assert "max_orphan_ratio" in result.stderr
    assert redis_client.lrange(QUEUE, 0, -1) == before
    history = json.loads(run_cli("--config", str(config_file), "history", "--json").stdout)
    assert history[0]["outcome"] == "refused"


def test_second_cleanup_waits_or_exits_while_the_lock_is_held(
    config_file: Path, producer: Celery, redis_client: redis.Redis
) -> None:
    """Two concurrent cleanups never overlap: the second exits with code 4."""
    send(producer, [new_id()])
    first = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "maintenance.cli.main",
            "--config",
            str(config_file),
            "cleanup",
            "--force",
            "--grace",
            "5",
            "--max-orphan-ratio",
            "1",
        ],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_for(lambda: redis_client.exists("task-maintenance:lock"), what="first run's lock")
        second = cleanup(config_file, "--grace", "0", "--max-orphan-ratio", "1")
        assert second.returncode == 4
        assert "lock" in second.stderr
    finally:
        _out, err = first.communicate(timeout=120)
    assert first.returncode == 0, err
    assert not redis_client.exists("task-maintenance:lock")


def test_producer_enqueuing_during_cleanup_loses_nothing(
    config_file: Path, producer: Celery, engine: sa.Engine, redis_client: redis.Redis
) -> None:
    """Messages pushed while orphans are being quarantined all stay, in order."""
    live = [new_id() for _ in range(3000)]
    gone = [new_id() for _ in range(600)]
    insert_rows(engine, live)
    rows = live + gone
    import random

    random.Random(7).shuffle(rows)
    ids = send(producer, rows)
    produced: list[str] = []
    stop = threading.Event()

    def produce() -> None:
        while not stop.is_set():
            row = new_id()
            insert_rows(engine, [row])
            produced.append(producer.send_task("demo.process_video", args=[row], queue=QUEUE).id)
            time.sleep(0.002)

    thread = threading.Thread(target=produce)
    thread.start()
    try:
        result = cleanup(config_file, "--grace", "0", "--max-orphan-ratio", "0.9", "--no-results")
    finally:
        stop.set()
        thread.join()
    assert result.returncode == 0, result.stderr
    remaining = queued_task_ids(redis_client)
    expected_live = [ids[r] for r in rows if r in set(live)]
    assert len(produced) > 10
    # Every live and newly produced message is there exactly once, in the original order
    assert sorted(remaining) == sorted(expected_live + produced)
    kept_order = [t for t in reversed(remaining) if t in set(expected_live)]
    assert kept_order == [ids[r] for r in rows if r in set(live)]
    assert redis_client.hlen(QUARANTINE) == len(gone)


def test_unacked_orphan_held_by_live_worker_is_revoked_not_pulled(
    config_file: Path,
    producer: Celery,
    engine: sa.Engine,
    redis_url: str,
    database_url: str,
    redis_client: redis.Redis,
    tmp_path: Path,
) -> None:
    """An ETA orphan a live worker holds is revoked; its entry stays until the worker drops it."""
    gone = new_id()
    ids = send(producer, [gone], countdown=300)
    log = tmp_path / "worker.log"
    with demo_worker(redis_url, database_url, log):
        wait_for(lambda: redis_client.hlen("unacked") == 1, what="worker to hold the ETA task")
        result = cleanup(config_file, "--grace", "0", "--max-orphan-ratio", "1")
        assert result.returncode == 0, result.stderr
        assert json.loads(result.stdout)["done"]["revoked"] == 1
        assert AsyncResult(ids[gone], app=producer).state == "REVOKED"
        assert redis_client.hlen(QUARANTINE) == 0
    # With no worker left alive, the next run pulls the entry into the quarantine
    if redis_client.hlen("unacked"):
        result = cleanup(config_file, "--grace", "0", "--max-orphan-ratio", "1")
        assert result.returncode == 0, result.stderr
        assert redis_client.hlen("unacked") == 0
        assert redis_client.hlen(QUARANTINE) == 1


def test_stale_results_are_unlinked_and_lost_rows_marked_failed(
    tmp_path: Path, redis_url: str, database_url: str, engine: sa.Engine, redis_client: redis.Redis
) -> None:
    """Results past retention are deleted; a row stuck with no message is marked failed."""
    from tests.conftest import write_config

    config = write_config(
        tmp_path / "m.toml",
        redis_url,
        database_url,
        extra='[cleanup]\nstuck_action = "mark_failed"\n',
    )
    stale_key = "celery-task-meta-old"
    redis_client.set(
        stale_key,
        json.dumps({"status": "SUCCESS", "task_id": "old", "date_done": "2020-01-01T00:00:00"}),
    )
    redis_client.set(
        "celery-task-meta-fresh",
        json.dumps({"status": "SUCCESS", "task_id": "fresh", "date_done": utcnow().isoformat()}),
        ex=3600,
    )
    stuck = new_id()
    with engine.begin() as conn:
        conn.execute(
            sa.insert(tasks).values(
                id=stuck, status="queued", updated_at=sa.func.now() - sa.text("interval '3 days'")
            )
        )
    result = run_cli("--config", str(config), "cleanup", "--force", "--json", "--grace", "0")
    assert result.returncode == 0, result.stderr
    done = json.loads(result.stdout)["done"]
    assert done == {"results_deleted": 1, "rows_marked": 1}
    assert not redis_client.exists(stale_key) and redis_client.exists("celery-task-meta-fresh")
    assert status_counts(engine) == {"failed": 1}


@pytest.mark.parametrize(
    "task_id",
    ["naïve-tâche-✓", 'with "quotes"', "back\\slash", "tab\tand\nnewline", "слэш/косая"],
)
def test_orphans_whose_ids_json_escapes_are_quarantined(
    config_file: Path, producer: Celery, redis_client: redis.Redis, task_id: str
) -> None:
    """The quarantine finds a message whatever its id looks like inside the raw JSON."""
    producer.send_task("demo.process_video", args=[new_id()], queue=QUEUE, task_id=task_id)
    result = cleanup(config_file, "--grace", "0", "--max-orphan-ratio", "1")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["done"] == {"quarantined": 1}
    assert redis_client.llen(QUEUE) == 0
    assert AsyncResult(task_id, app=producer).state == "REVOKED"


@pytest.mark.parametrize("serializer", ["json", "pickle"])
def test_protocol_1_orphans_are_read_and_quarantined(
    config_file: Path,
    redis_url: str,
    redis_client: redis.Redis,
    engine: sa.Engine,
    serializer: str,
) -> None:
    """Celery protocol-1 messages, JSON or pickle, are judged (never unpickled with globals)
    and their orphans quarantined; the live one stays queued."""
    live, gone = new_id(), new_id()
    insert_rows(engine, [live])
    app = producer_app(redis_url, task_protocol=1, task_serializer=serializer)
    try:
        ids = {
            row: app.send_task("demo.process_video", args=[row], queue=QUEUE).id
            for row in (live, gone)
        }
    finally:
        app.close()
    assert b'"task"' not in (redis_client.lindex(QUEUE, 0) or b"")  # really protocol 1
    check = run_cli("--config", str(config_file), "check", "--json", "--no-results")
    report = json.loads(check.stdout)
    assert (report["counts"]["orphan"], report["counts"]["unreadable"]) == (1, 0)
    result = cleanup(config_file, "--grace", "0", "--max-orphan-ratio", "1")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["done"] == {"quarantined": 1}
    assert queued_task_ids_v1(redis_client) == [ids[live]]


def queued_task_ids_v1(client: redis.Redis) -> list[str]:
    """Task ids of protocol-1 messages: the id is in the body, JSON or pickle."""
    import base64
    import pickle

    out = []
    for raw in client.lrange(QUEUE, 0, -1):
        message = orjson.loads(raw)
        body = base64.b64decode(message["body"])
        if message["content-type"] == "application/json":
            out.append(orjson.loads(body)["id"])
        else:
            out.append(pickle.loads(body)["id"])  # our own test message, not a stranger's
    return out


def test_database_crashed_mid_quarantine_stops_the_run_before_its_next_step(
    config_file: Path,
    producer: Celery,
    redis_client: redis.Redis,
    pg_server: PostgresServer,
    engine: sa.Engine,
) -> None:
    """PostgreSQL dies once quarantining has begun: exit 3, and the next step (deleting stale
    results) never starts; what was quarantined stays restorable (its entry names the run)."""
    gone = [new_id() for _ in range(20_000)]
    with producer.connection_for_write() as conn:  # one connection for all the messages
        for row in gone:
            producer.send_task("demo.process_video", args=[row], queue=QUEUE, connection=conn)
    stale = [f"celery-task-meta-stale-{i}" for i in range(50)]  # no TTL: stale results
    for key in stale:
        redis_client.set(
            key,
            json.dumps(
                {"status": "SUCCESS", "task_id": key[17:], "date_done": "2020-01-01T00:00:00"}
            ),
        )
    command = ["cleanup", "--force", "--grace", "0", "--max-orphan-ratio", "1"]
    proc = subprocess.Popen(
        [sys.executable, "-m", "maintenance.cli.main", "--config", str(config_file), *command],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_for(
            lambda: redis_client.hlen(QUARANTINE) > 0,
            timeout_s=60,
            interval_s=0.005,
            what="the quarantine to begin",
        )
        pg_server.stop("immediate")
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
        pg_server.resume()
    assert proc.returncode == 3, (out, err)
    assert "database failed" in err
    assert all(redis_client.exists(key) for key in stale)  # the step after never ran
    taken = redis_client.hlen(QUARANTINE)
    assert taken > 0 and redis_client.llen(QUEUE) + taken == len(gone)
    assert not [raw for raw in redis_client.lrange(QUEUE, 0, 200) if b"tombstone" in raw]
    # With the database back, the next run finishes the crashed one's record, and its own work
    again = cleanup(config_file, "--grace", "0", "--max-orphan-ratio", "1")
    assert again.returncode == 0, again.stderr
    assert json.loads(again.stdout)["done"]["interrupted_runs_finished"] == 1
    assert redis_client.llen(QUEUE) == 0 and redis_client.hlen(QUARANTINE) == len(gone)
    history = HistoryStore(engine)
    runs = history.recent_runs()
    # its end unrecorded (the database was down): interrupted; recorded just in time: failed
    assert sorted(r["outcome"] for r in runs) in (["interrupted", "ok"], ["failed", "ok"])
    assert sum(history.action_counts(r["id"]).get("quarantined", 0) for r in runs) == len(gone)
