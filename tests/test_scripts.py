"""`./start_all_services.sh` and `./stop_all.sh`: real processes started, reported, all stopped."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from tests.conftest import ROOT, wait_for
from tests.service_procs import service_env

pytestmark = pytest.mark.slow


def run_script(name: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(ROOT / name)], env=env, capture_output=True, text=True, timeout=120, cwd=ROOT
    )


def session_members(pid: int) -> set[int]:
    """Every live process in the session that `pid` leads: the celery process and its pool."""
    members = set()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[3]) == pid and fields[0] != "Z":  # field 6: session id
                members.add(int(entry.name))
    return members


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"


def test_start_twice_then_stop_twice_leaves_no_process(tmp_path: Path, config_file: Path) -> None:
    """Start is idempotent, status reports pids, stop removes worker, pool and beat entirely."""
    env = {
        **service_env(config_file),
        "RUN_DIR": str(tmp_path / "run"),
        "LOG_DIR": str(tmp_path / "out"),
        "WORKER_NAME": f"scripts-{os.getpid()}@%h",
        "STOP_TIMEOUT": "30",
    }
    started = run_script("start_all_services.sh", env)
    assert started.returncode == 0, started.stderr + started.stdout
    pids = {
        name: int((tmp_path / "run" / f"{name}.pid").read_text()) for name in ("worker", "beat")
    }
    # The prefork pool appears once the worker is up: wait for it so that it is counted too.
    members = wait_for(
        lambda: (m := session_members(pids["worker"])) and len(m) >= 2 and m,
        timeout_s=30,
        what="the worker's pool process",
    )
    members |= session_members(pids["beat"])
    again = run_script("start_all_services.sh", env)
    assert again.returncode == 0 and again.stdout.count("already running") == 2
    status = subprocess.run(
        [str(ROOT / "scripts/services.sh"), "status"],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert status.returncode == 0 and f"pid {pids['worker']}" in status.stdout
    stopped = run_script("stop_all.sh", env)
    assert stopped.returncode == 0, stopped.stderr
    assert [pid for pid in members if alive(pid)] == []
    assert not list((tmp_path / "run").glob("*.pid"))
    twice = run_script("stop_all.sh", env)
    assert twice.returncode == 0 and twice.stdout.count("not running") == 2
