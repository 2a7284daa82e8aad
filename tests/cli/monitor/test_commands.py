"""`task-cleanup monitor` end to end: real Redis, PostgreSQL, Celery producer and worker."""

from __future__ import annotations

import io
import json
import os
import re
import subprocess
import sys
import urllib.request
from pathlib import Path

import pexpect
import pytest
import redis
import sqlalchemy as sa
from celery import Celery
from prometheus_client.parser import text_string_to_metric_families

from examples.demo.schema import new_id, tasks, utcnow
from maintenance.adapters.history import HistoryStore
from tests.alert_servers import Hook, hook_fixture  # noqa: F401  # a fixture, used by name
from tests.conftest import ROOT, run_cli, wait_for, write_config
from tests.servers import free_port
from tests.workers import demo_worker, stop_process

pytestmark = pytest.mark.slow


def add_rows(engine: sa.Engine, *ids: str) -> None:
    with engine.begin() as conn:
        conn.execute(
            sa.insert(tasks), [{"id": i, "status": "pending", "updated_at": utcnow()} for i in ids]
        )


def delete_row(engine: sa.Engine, row_id: str) -> None:
    with engine.begin() as conn:
        conn.execute(sa.delete(tasks).where(tasks.c.id == row_id))


def queue_work(producer: Celery, engine: sa.Engine) -> dict[str, str]:
    """Live and orphaned messages in the `celery` queue (no worker consumes it), two bands."""
    live, gone = new_id(), new_id()
    add_rows(engine, live, gone)
    producer.send_task("demo.process_video", args=[live], queue="celery")
    producer.send_task("demo.process_video", args=[live], queue="celery", priority=5)
    producer.send_task("demo.process_video", args=[gone], queue="celery")
    delete_row(engine, gone)
    return {"live": live, "gone": gone}


def scrape(port: int) -> dict[str, dict[tuple[tuple[str, str], ...], float]]:
    """Every sample of the endpoint, by sample name and sorted labels."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        text = response.read().decode()
    samples: dict[str, dict[tuple[tuple[str, str], ...], float]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples.setdefault(sample.name, {})[tuple(sorted(sample.labels.items()))] = sample.value
    return samples


def test_once_json_and_metrics_see_queued_unacked_and_orphaned_messages(
    config_file: Path,
    producer: Celery,
    engine: sa.Engine,
    redis_url: str,
    database_url: str,
    redis_client: redis.Redis,
    tmp_path: Path,
) -> None:
    """Queue depths per band, unacked age, workers, findings with trend, runs and guard skips."""
    # Given: queued messages, an ETA task held unacked by a real worker, then its row deleted
    queue_work(producer, engine)
    held = new_id()
    add_rows(engine, held)
    with demo_worker(redis_url, database_url, tmp_path / "worker.log", queues="video_processing"):
        producer.send_task(
            "demo.process_video", args=[held], queue="video_processing", countdown=3600
        )
        wait_for(lambda: redis_client.hlen("unacked") == 1, what="the ETA task taken unacked")
        assert run_cli("--config", str(config_file), "check").returncode == 1
        delete_row(engine, held)
        assert run_cli("--config", str(config_file), "check").returncode == 1
        history = HistoryStore(engine)
        run = history.start_run("test", "cleanup")
        history.finish_run(run, "ok", {"quarantined": 2, "revoked": 1})
        redis_client.hincrby("task-maintenance:guard:skips", "row_missing", 3)

        # When: one snapshot as JSON
        once = run_cli("--config", str(config_file), "monitor", "--once", "--json")
        # and: the exporter, refreshing, scraped over HTTP
        port = free_port()
        exporter = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "maintenance.cli.main",
                "--config",
                str(config_file),
                "monitor",
                "--json",
                "--interval",
                "0.5",
                "--metrics-port",
                str(port),
                "--metrics-addr",
                "127.0.0.1",
            ],
            stdout=subprocess.PIPE,
            text=True,
            cwd=ROOT,
        )
        try:
            assert exporter.stdout is not None
            json.loads(exporter.stdout.readline())  # one refresh done: metrics are filled
            metrics = scrape(port)
        finally:
            stop_process(exporter)

    # Then: the JSON snapshot
    assert once.returncode == 1, once.stderr
    snap = json.loads(once.stdout)
    depths = {(q["queue"], q["band"]): q["messages"] for q in snap["queues"]}
    assert depths[("celery", 0)] == 2 and depths[("celery", 3)] == 1
    assert depths[("video_processing", 0)] == 0
    assert snap["unacked"]["messages"] == 1 and 0 <= snap["unacked"]["oldest_age_s"] < 120
    assert snap["workers"]["online"] == 1
    latest = snap["scan"]["latest"]
    assert latest["counts"]["orphan"] >= 2 and latest["source"] == "check"
    assert snap["scan"]["trend"]["orphan"] >= 1
    assert any(f["db_id"] == held for f in latest["top_findings"])
    assert snap["actions_total"] == {"quarantined": 2, "revoked": 1}
    assert snap["guard_skips"] == {"row_missing": 3}
    # Then: the metrics
    queue_series = metrics["task_maintenance_queue_messages"]
    assert queue_series[(("priority", "3"), ("queue_name", "celery"))] == 1  # celery-exporter's
    assert metrics["task_maintenance_unacked_messages"][()] == 1
    assert metrics["task_maintenance_unacked_oldest_age_seconds"][()] >= 0
    assert metrics["task_maintenance_workers_online"][()] == 1
    assert metrics["task_maintenance_scan_findings"][(("kind", "orphan"),)] >= 2
    assert metrics["task_maintenance_actions_total"][(("action", "quarantined"),)] == 2
    assert metrics["task_maintenance_guard_skips_total"][(("reason", "row_missing"),)] == 3
    # every other reason a guard skips for is exported from 0, before its first skip
    assert metrics["task_maintenance_guard_skips_total"][(("reason", "parent_finished"),)] == 0
    assert metrics["task_maintenance_last_run_outcome"][(("outcome", "ok"),)] == 1
    assert metrics["task_maintenance_last_run_duration_seconds"][()] >= 0
    assert metrics["task_maintenance_backend_up"][(("backend", "redis"),)] == 1
    assert metrics["task_maintenance_broker_visibility_timeout_seconds"][()] > 0
    assert metrics["task_maintenance_run_lock_held"][()] == 0
    assert metrics["task_maintenance_last_successful_run_timestamp_seconds"][()] > 0
    by_name = metrics["task_maintenance_scan_task_findings"]
    assert {label for key in by_name for label, _ in key} == {"kind", "name"}
    assert sum(v for key, v in by_name.items() if ("kind", "orphan") in key) >= 2


def test_once_without_a_scan_and_with_redis_down(
    config_file: Path, tmp_path: Path, redis_url: str
) -> None:
    """No summary yet: exit 0 and a hint; Redis unreachable: exit 3, no verdict."""
    first = run_cli("--config", str(config_file), "monitor", "--no-workers")
    assert first.returncode == 0, first.stderr
    assert "latest scan: none yet" in first.stdout and "celery" in first.stdout
    dead = run_cli(
        "--config",
        str(config_file),
        "monitor",
        "--once",
        env={"REDIS_URL": f"redis://127.0.0.1:{free_port()}/0"},
    )
    assert dead.returncode == 3


def test_scan_option_saves_its_summary_and_alerts(
    tmp_path: Path,
    redis_url: str,
    database_url: str,
    producer: Celery,
    engine: sa.Engine,
    hook: Hook,
) -> None:
    """`--scan` runs a full scan first, shows it as the latest, and posts the orphan alert."""
    config = write_config(
        tmp_path / "scan.toml",
        redis_url,
        database_url,
        extra=f'[alerts]\nwebhook_url = "{hook.url}"\nmin_orphans = 1\n',
    )
    gone = queue_work(producer, engine)["gone"]
    result = run_cli(
        "--config", str(config), "monitor", "--once", "--json", "--scan", "--no-workers"
    )
    assert result.returncode == 1, result.stderr
    latest = json.loads(result.stdout)["scan"]["latest"]
    assert latest["source"] == "monitor" and latest["counts"]["orphan"] == 1
    ((_, body),) = hook.requests
    alert = json.loads(body)
    assert alert["event"] == ["orphans"] and alert["top_findings"][0]["db_id"] == gone


def test_live_view_in_a_terminal_refreshes_and_quits_on_q(
    config_file: Path, producer: Celery, engine: sa.Engine
) -> None:
    """In a pseudo-terminal the view redraws in place, follows the queue, and `q` ends it."""
    queue_work(producer, engine)
    child = pexpect.spawn(
        sys.executable,
        [
            "-m",
            "maintenance.cli.main",
            "--config",
            str(config_file),
            "monitor",
            "--interval",
            "0.5",
            "--no-workers",
        ],
        cwd=str(ROOT),
        env={**os.environ, "TERM": "xterm"},
        dimensions=(40, 120),
        encoding="utf-8",
        timeout=30,
    )
    try:
        child.expect_exact("\x1b[?1049h")  # the alternate screen, like htop
        child.expect(r"celery\s+2\s")
        for _ in range(3):  # a new message shows on a later refresh
            producer.send_task("demo.send_email", args=["a@b"], queue="celery")
        child.expect(r"celery\s+5\s")
        child.expect_exact("task-cleanup monitor")  # and it keeps redrawing
        child.send("q")
        child.expect(pexpect.EOF)
    finally:
        child.close(force=True)
    assert child.exitstatus == 0


def test_live_view_draws_rich_tables_and_restores_the_terminal_on_q(
    config_file: Path, producer: Celery, engine: sa.Engine
) -> None:
    """The live view shows the queue and findings tables, the bad verdict in red; `q` exits 1
    (the latest scan found orphans) and leaves the terminal's modes and screen as they were."""
    queue_work(producer, engine)
    assert run_cli("--config", str(config_file), "check", "--no-workers").returncode == 1
    monitor = " ".join(
        f"'{arg}'"
        for arg in (sys.executable, "-m", "maintenance.cli.main", "--config", str(config_file))
    )
    # The shell prints the terminal's modes before and after the monitor, then exits with its code
    script = f"stty -g; {monitor} monitor --interval 0.5 --no-workers; code=$?; stty -g; exit $code"
    child = pexpect.spawn(
        "sh",
        ["-c", script],
        cwd=str(ROOT),
        env={**os.environ, "TERM": "xterm-256color"},
        dimensions=(40, 120),
        encoding="utf-8",
        timeout=30,
    )
    seen = io.StringIO()
    child.logfile_read = seen
    try:
        child.expect_exact("\x1b[?1049h")
        child.expect(r"celery\s+2\s")  # the queue table's cells, unstyled
        child.expect_exact("\x1b[1;31m1 findings")  # the verdict in bold red
        child.send("q")
        child.expect(pexpect.EOF)
    finally:
        child.close(force=True)
    assert child.exitstatus == 1
    output = seen.getvalue()
    text = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", output)
    assert re.search(r"queue\s+waiting\s+─+", text) and re.search(r"finding\s+count\s+trend", text)
    assert re.search(r"orphan\s+1\s+new", text) and "redis up" in text
    # Then: back on the normal screen with the cursor shown, after the last draw
    last_draw = output.rindex("1 findings")
    assert "\x1b[?25h" in output[last_draw:] and "\x1b[?1049l" in output[last_draw:]
    modes = re.findall(r"[0-9a-f]+(?::[0-9a-f]+){8,}", text)  # `stty -g`, before and after
    assert len(modes) == 2 and modes[0] == modes[1], modes  # cbreak undone, echo back
