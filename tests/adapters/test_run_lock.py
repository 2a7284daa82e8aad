"""The run lock's lease on a real Redis: renewed while the run works, free within one lease
after its holder dies, lost when it cannot be renewed, and a failed release never raises."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator

import pytest
import redis

from maintenance.adapters.redis_layout import OwnKeys
from maintenance.adapters.run_lock import Holder, RunLock
from maintenance.errors import LockHeld
from tests.conftest import ROOT, wait_for
from tests.servers import RedisServer, free_port, remove_dir, temp_dir

KEYS = OwnKeys("tm-test")

# A holder in its own process, to be killed with SIGKILL while it holds the lock.
HOLDER = """
import sys, time, redis
from maintenance.adapters.redis_layout import OwnKeys
from maintenance.adapters.run_lock import RunLock
lock = RunLock(redis.Redis.from_url(sys.argv[1]), OwnKeys("tm-test"), lease_s=float(sys.argv[2]),
               renew_s=float(sys.argv[2]) / 4, max_hold_s=3600, wait_s=0)
with lock.held("cleanup by a doomed process") as lease:
    lease.name_run("run-1")
    print("held", flush=True)
    time.sleep(600)
"""


def run_lock(client: redis.Redis, lease_s: float = 1.0, renew_s: float = 0.25) -> RunLock:
    return RunLock(client, KEYS, lease_s=lease_s, renew_s=renew_s, max_hold_s=3600, wait_s=0)


@pytest.fixture
def doomed_holder(redis_url: str) -> Iterator[tuple[subprocess.Popen[str], float]]:
    """Start a process holding the lock with a 2 s lease; yields it and its lease."""
    lease_s = 2.0
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLDER, redis_url, str(lease_s)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None and proc.stdout.readline().strip() == "held"
    yield proc, lease_s
    if proc.poll() is None:
        proc.kill()
    proc.wait()


def test_the_lease_is_renewed_while_the_run_works(redis_client: redis.Redis) -> None:
    """A run longer than its lease keeps the lock, and names itself beside it; release frees it."""
    with run_lock(redis_client).held("cleanup by test") as lease:
        lease.name_run("run-42")
        time.sleep(2.5)  # ten renewals of a 1 s lease
        assert redis_client.exists(KEYS.lock) and not lease.lost()
        holder = Holder.from_json(redis_client.get(KEYS.lock_holder))
        assert holder is not None
        assert (holder.what, holder.pid, holder.run_id) == (
            "cleanup by test",
            os.getpid(),
            "run-42",
        )
        assert holder.renewed_at > holder.started_at
    assert not redis_client.exists(KEYS.lock) and not redis_client.exists(KEYS.lock_holder)


def test_a_second_run_is_refused_with_the_holder_named(
    redis_client: redis.Redis, doomed_holder: tuple[subprocess.Popen[str], float]
) -> None:
    """Exit 4's message says which process on which host holds the lock, for which run."""
    proc, _ = doomed_holder
    with pytest.raises(LockHeld) as refused, run_lock(redis_client).held("second"):
        pass  # pragma: no cover - never entered
    assert f"pid {proc.pid} on " in str(refused.value) and "run run-1" in str(refused.value)


def test_a_killed_holders_lock_is_free_within_one_lease(
    redis_client: redis.Redis, doomed_holder: tuple[subprocess.Popen[str], float]
) -> None:
    """kill -9 leaves the lock behind for at most one lease; the holder is provably gone."""
    proc, lease_s = doomed_holder
    holder = run_lock(redis_client).holder()
    assert holder is not None and not holder.provably_gone()
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert holder.provably_gone()
    killed_at = time.monotonic()

    def acquired() -> bool:
        try:
            with run_lock(redis_client).held("next run"):
                return True
        except LockHeld:
            return False

    wait_for(acquired, timeout_s=lease_s + 2, interval_s=0.1, what="the dead holder's lock")
    assert time.monotonic() - killed_at <= lease_s + 0.5


def test_a_run_whose_lock_was_taken_over_learns_it_has_lost_the_lease(
    redis_client: redis.Redis,
) -> None:
    """When the lock is no longer ours, the next renewal says so: the run must stop."""
    with run_lock(redis_client, lease_s=1.0, renew_s=0.1).held("cleanup by test") as lease:
        redis_client.set(KEYS.lock, "someone else")
        wait_for(lease.lost, timeout_s=2, what="the lease to be lost")
    assert redis_client.get(KEYS.lock) == b"someone else"  # never released: it is not ours


def test_a_failed_release_never_replaces_the_real_error() -> None:
    """Redis gone at the end of a run: the run's own exception is what the caller sees."""
    server = RedisServer(free_port(), temp_dir("tm-lock-redis-")).start()
    client = redis.Redis.from_url(f"{server.url}/0", socket_timeout=1)
    try:
        with (
            pytest.raises(RuntimeError, match="the run's own failure"),
            run_lock(client).held("cleanup by test"),
        ):
            server.stop()
            raise RuntimeError("the run's own failure")
    finally:
        client.close()
        server.stop()
        remove_dir(server.directory)
