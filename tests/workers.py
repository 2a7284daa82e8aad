"""Real Celery worker subprocesses for the tests: started on loopback servers, stopped by PID."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any


@contextmanager
def demo_worker(
    redis_url: str,
    database_url: str,
    log_path: Path,
    *,
    queues: str = "video_processing,celery",
    pool: str = "solo",
    name: str = "demo",
    extra_env: dict[str, str] | None = None,
    app: str = "examples.demo.app",
) -> Iterator[subprocess.Popen[bytes]]:
    """Run `celery -A <app> worker` until the block ends; its log goes to `log_path`."""
    env = {
        **os.environ,
        "REDIS_URL": redis_url,
        "DATABASE_URL": database_url,
        "C_FORCE_ROOT": "1",
        **(extra_env or {}),
    }
    cmd = [
        sys.executable,
        "-m",
        "celery",
        "-A",
        app,
        "worker",
        "-Q",
        queues,
        "-P",
        pool,
        "-c",
        "1",
        "-n",
        f"{name}-{os.getpid()}-{time.monotonic_ns()}@%h",
        "--without-gossip",
        "--without-mingle",
        "-l",
        "INFO",
        "-f",
        str(log_path),
    ]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if log_path.exists() and "ready." in log_path.read_text(errors="replace"):
                break
            if proc.poll() is not None:
                raise RuntimeError(f"worker exited early:\n{_tail(log_path)}")
            time.sleep(0.1)
        else:
            raise RuntimeError(f"worker not ready after 60s:\n{_tail(log_path)}")
        yield proc
    finally:
        stop_process(proc)


def stop_process(proc: subprocess.Popen[Any], timeout_s: float = 20.0) -> None:
    if proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def _tail(path: Path, lines: int = 40) -> str:
    if not path.exists():
        return "(no log)"
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
