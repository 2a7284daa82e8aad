"""Real maintenance service processes for tests: `celery -A maintenance.worker worker|beat`."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from tests.conftest import ROOT
from tests.workers import stop_process


def service_env(config: Path) -> dict[str, str]:
    """The config file alone decides: URL overrides from the outer environment are dropped."""
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("REDIS_URL", "RESULT_BACKEND_URL", "DATABASE_URL")
    }
    return {**env, "MAINTENANCE_CONFIG": str(config), "C_FORCE_ROOT": "1"}


def _wait_for_line(
    proc: subprocess.Popen[bytes], out: Path, marker: str, timeout_s: float = 60.0
) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        text = out.read_text(errors="replace") if out.exists() else ""
        if marker in text:
            return
        if proc.poll() is not None:
            raise RuntimeError(f"exited early ({proc.returncode}):\n{text[-3000:]}")
        time.sleep(0.1)
    raise RuntimeError(f"{marker!r} not seen after {timeout_s}s:\n{out.read_text()[-3000:]}")


@contextmanager
def maintenance_worker(
    config: Path, out: Path, name: str = "maintenance"
) -> Iterator[subprocess.Popen[bytes]]:
    """A prefork worker (soft time limits need it) of one child on the `maintenance` queue."""
    cmd = [
        sys.executable,
        "-m",
        "celery",
        "-A",
        "maintenance.worker",
        "worker",
        "-Q",
        "maintenance",
        "-c",
        "1",
        "-n",
        f"{name}-{os.getpid()}@%h",
        "--without-gossip",
        "--without-mingle",
        "-l",
        "INFO",
    ]
    with out.open("ab") as sink:
        proc = subprocess.Popen(
            cmd, env=service_env(config), cwd=ROOT, stdout=sink, stderr=subprocess.STDOUT
        )
    try:
        _wait_for_line(proc, out, "ready.")
        yield proc
    finally:
        stop_process(proc, timeout_s=30)


@contextmanager
def maintenance_beat(config: Path, out: Path, schedule: Path) -> Iterator[subprocess.Popen[bytes]]:
    cmd = [
        sys.executable,
        "-m",
        "celery",
        "-A",
        "maintenance.worker",
        "beat",
        "-s",
        str(schedule),
        "-l",
        "INFO",
    ]
    with out.open("ab") as sink:
        proc = subprocess.Popen(
            cmd, env=service_env(config), cwd=ROOT, stdout=sink, stderr=subprocess.STDOUT
        )
    try:
        _wait_for_line(proc, out, "beat: Starting")
        yield proc
    finally:
        stop_process(proc)
