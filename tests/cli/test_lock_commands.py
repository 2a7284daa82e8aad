"""`task-cleanup lock` and the lease seen from the command line: a cleanup killed with SIGKILL
leaves a lock the next run gets within one lease, or that `lock --break` frees at once."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from celery import Celery

from examples.demo.schema import new_id
from tests.conftest import ROOT, run_cli, short_lease_config, wait_for, write_config

LOCK = "task-maintenance:lock"


def cleanup_in_background(config: Path) -> subprocess.Popen[bytes]:
    """`cleanup --force` waiting out a 600 s grace period, holding the lock meanwhile."""
    command = ["--config", str(config), "cleanup", "--force", "--grace", "600"]
    return subprocess.Popen(
        [sys.executable, "-m", "maintenance.cli.main", *command],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


@pytest.fixture
def short_lease(tmp_path: Path, redis_url: str, database_url: str) -> Path:
    return short_lease_config(tmp_path / "maintenance.toml", redis_url, database_url)


@pytest.fixture
def cleanup_in_grace(
    short_lease: Path, producer: Celery, redis_client: redis.Redis
) -> Iterator[subprocess.Popen[bytes]]:
    """A cleanup waiting out a long grace period: it holds the lock until killed."""
    producer.send_task("demo.process_video", args=[new_id()], queue="video_processing")
    proc = cleanup_in_background(short_lease)
    wait_for(lambda: redis_client.exists(LOCK), what="the cleanup to take the lock")
    yield proc
    if proc.poll() is None:
        proc.kill()
    proc.wait()


def test_lock_shows_who_holds_it(
    short_lease: Path, cleanup_in_grace: subprocess.Popen[bytes]
) -> None:
    """Held: exit 4 and the holder's mode, process and run; --json for scripts."""
    shown = run_cli("--config", str(short_lease), "lock")
    assert shown.returncode == 4
    assert "cleanup by cli:" in shown.stdout and f"pid {cleanup_in_grace.pid} on" in shown.stdout
    doc = json.loads(run_cli("--config", str(short_lease), "lock", "--json").stdout)
    assert doc["held"] is True and doc["holder"]["pid"] == cleanup_in_grace.pid
    assert "token" not in doc["holder"]


def test_a_killed_cleanup_frees_the_lock_within_one_lease(
    short_lease: Path, cleanup_in_grace: subprocess.Popen[bytes]
) -> None:
    """kill -9 mid-run: the next run meets the lock at once, and runs within one lease."""
    os.kill(cleanup_in_grace.pid, signal.SIGKILL)
    cleanup_in_grace.wait()
    second = run_cli("--config", str(short_lease), "cleanup", "--force", "--grace", "0")
    assert second.returncode == 4, second.stderr  # within the lease: still held
    assert "pid" in second.stderr and "task-cleanup lock" in second.stderr
    wait_for(
        lambda: run_cli("--config", str(short_lease), "lock").returncode == 0,
        timeout_s=5,
        what="the lease to run out",
    )
    third = run_cli(
        "--config",
        str(short_lease),
        "cleanup",
        "--force",
        "--grace",
        "0",
        "--max-orphan-ratio",
        "1",
    )
    assert third.returncode == 0, third.stderr


def test_break_refuses_a_live_holder_and_frees_a_dead_one(
    tmp_path: Path, redis_url: str, database_url: str, producer: Celery
) -> None:
    """`lock --break` frees a lock only when its holder's process is gone from this host."""
    config = write_config(tmp_path / "maintenance.toml", redis_url, database_url)  # 60 s lease
    producer.send_task("demo.process_video", args=[new_id()], queue="video_processing")
    proc = cleanup_in_background(config)
    try:
        wait_for(
            lambda: run_cli("--config", str(config), "lock").returncode == 4,
            what="the cleanup to hold the lock",
        )
        alive = run_cli("--config", str(config), "lock", "--break", "--yes")
        assert alive.returncode == 4 and "may be alive" in alive.stderr
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        broken = run_cli("--config", str(config), "lock", "--break", "--yes")
        assert broken.returncode == 0, broken.stderr
        assert "run lock broken" in broken.stdout
        assert run_cli("--config", str(config), "lock").stdout.strip() == "run lock: free"
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
