"""The run lock in Redis: one maintenance run at a time across the CLI, Beat and every worker.

A lease, not a long expiry: the lock expires `lease_s` after its holder last renewed it, and a
thread of the holder renews it every `renew_s` while the run works. A run that dies (kill -9, an
OOM kill, a container stopped) frees the lock within one lease; a run that cannot renew (Redis
gone, or its lock taken over after a long stall) learns it has lost the lease and stops before
its next step. Beside the lock, a key names the holder (what, host, pid, run id, started,
renewed) for the refusal message, `monitor` and `task-cleanup lock`.
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from typing import Any

import redis
import structlog
from redis.exceptions import LockError, LockNotOwnedError

from maintenance.adapters.redis_layout import OwnKeys
from maintenance.adapters.redis_reader import REDIS_ERRORS, broker_errors
from maintenance.adapters.sentinel import follow_master
from maintenance.errors import BrokerUnavailable, LockHeld

log = structlog.get_logger(__name__)
RELEASE_ATTEMPTS = 3
# The holder key goes with the lock: deleted only by the holder whose token it names.
_RELEASE_HOLDER = """
local doc = redis.call('GET', KEYS[1])
if doc and cjson.decode(doc).token == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""
# Breaking a lock: only the very one that was examined, never one taken since.
_BREAK = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1], KEYS[2]) end
return 0
"""


@dataclass(frozen=True)
class Holder:
    """Who holds the lock, as its holder wrote it."""

    what: str  # "cleanup by cli:alice@host"
    host: str
    pid: int
    run_id: str
    started_at: float
    renewed_at: float
    token: str = ""

    @classmethod
    def from_json(cls, raw: bytes | str | None) -> Holder | None:
        try:
            doc = json.loads(raw) if raw else None
            return cls(**doc) if isinstance(doc, dict) else None
        except (ValueError, TypeError):
            return None

    def describe(self, now: float) -> str:
        run = f", run {self.run_id}" if self.run_id else ""
        return (
            f"{self.what}: pid {self.pid} on {self.host}{run}, started "
            f"{time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(self.started_at))}, renewed "
            f"{max(0.0, now - self.renewed_at):.0f}s ago"
        )

    def public(self) -> dict[str, Any]:
        return {k: v for k, v in vars(self).items() if k != "token"}

    def provably_gone(self) -> bool:
        """Its process no longer exists: only knowable on the holder's own host."""
        if self.host != socket.gethostname():
            return False
        try:
            os.kill(self.pid, 0)
        except ProcessLookupError:
            return True
        except PermissionError:  # it exists, under another user
            return False
        return False


class Lease:
    """The held lock, renewed on a thread until `close`; `lost()` once it could not be."""

    def __init__(self, run_lock: RunLock, lock: Any, holder: Holder):
        self.run_lock = run_lock
        self.lock = lock
        self.holder = holder
        self._lost = threading.Event()
        self._stop = threading.Event()
        # Fork-safe by the scan's rule: its Redis pool is the broker's, which the forked result
        # scan never touches (redis-py re-creates pools in a new process anyway).
        self._thread = threading.Thread(
            target=self._renew, name="run-lock-lease (fork-safe)", daemon=True
        )

    def start(self) -> Lease:
        self._thread.start()
        return self

    def lost(self) -> bool:
        return self._lost.is_set()

    def name_run(self, run_id: str) -> None:
        """The history row exists now: name it beside the lock."""
        self.holder = replace(self.holder, run_id=run_id)
        self.run_lock.write_holder(self.holder)

    def _renew(self) -> None:
        rl = self.run_lock
        while not self._stop.wait(rl.renew_s):
            now = rl.clock()
            if now - self.holder.started_at > rl.max_hold_s:
                self._lose("the run held the lock longer than cleanup.lock_ttl_s")
                return  # not renewed again: it expires within one lease
            try:
                self.lock.reacquire()
                self.holder = replace(self.holder, renewed_at=now)
                rl.write_holder(self.holder)
            except LockNotOwnedError:
                self._lose("the run lock was taken over or expired")
                return
            except (*REDIS_ERRORS, BrokerUnavailable) as exc:
                if now - self.holder.renewed_at >= rl.lease_s:
                    self._lose(f"could not renew the run lock's lease: {exc}")
                    return
                log.warning("could not renew the run lock's lease; retrying", error=str(exc))
            except Exception as exc:  # never a silent end: the lease would lapse under the run
                self._lose(f"renewing the run lock failed: {type(exc).__name__}: {exc}")
                return

    def _lose(self, why: str) -> None:
        log.error("lost the run lock: the run stops before its next step", reason=why)
        self._lost.set()

    def close(self) -> None:
        """Stop renewing and release. Retried, and never raised: a failed release must not hide
        how the run ended, and the lock then expires within one lease anyway."""
        self._stop.set()
        self._thread.join()
        for attempt in range(1, RELEASE_ATTEMPTS + 1):
            try:
                self.run_lock.release_holder(self.holder)
                self.lock.release()
                return
            except LockError:  # it expired or was taken over: nothing of ours to release
                log.warning("run lock had expired before release")
                return
            except REDIS_ERRORS as exc:
                if attempt == RELEASE_ATTEMPTS:
                    log.warning(
                        "could not release the run lock; it expires within one lease",
                        lease_s=self.run_lock.lease_s,
                        error=str(exc),
                    )
                    return
                time.sleep(0.2 * attempt)


class RunLock:
    def __init__(
        self,
        client: redis.Redis,
        keys: OwnKeys,
        *,
        lease_s: float,
        renew_s: float,
        max_hold_s: float,
        wait_s: float,
        clock: Callable[[], float] = time.time,
    ):
        self.client = client
        self.keys = keys
        self.lease_s = lease_s
        self.renew_s = renew_s
        self.max_hold_s = max_hold_s
        self.wait_s = wait_s
        self.clock = clock
        self._release_holder = client.register_script(_RELEASE_HOLDER)
        self._break = client.register_script(_BREAK)

    @contextmanager
    def held(self, what: str, wait_s: float | None = None) -> Iterator[Lease]:
        """Raises LockHeld, naming the holder, when another run holds it (after waiting
        `wait_s`, default the configured `lock_wait_s`)."""
        wait_s = self.wait_s if wait_s is None else wait_s
        follow_master(self.client)  # a run begins: on the master the sentinels name now
        with broker_errors("taking the run lock"):
            # Not thread-local: the lease thread renews with the token the run acquired.
            lock = self.client.lock(
                self.keys.lock, timeout=self.lease_s, blocking_timeout=wait_s, thread_local=False
            )
            if not lock.acquire(blocking=wait_s > 0):
                holder = self.holder()
                raise LockHeld(
                    "another maintenance run holds the lock ("
                    + (holder.describe(self.clock()) if holder else "holder unknown")
                    + "); try again when it ends, or see `task-cleanup lock`"
                )
            now = self.clock()
            token = lock.local.token
            holder = Holder(
                what=what,
                host=socket.gethostname(),
                pid=os.getpid(),
                run_id="",
                started_at=now,
                renewed_at=now,
                token=token.decode() if isinstance(token, bytes) else str(token),
            )
            self.write_holder(holder)
        lease = Lease(self, lock, holder).start()
        try:
            yield lease
        finally:
            lease.close()

    def write_holder(self, holder: Holder) -> None:
        with broker_errors("naming the run lock's holder"):
            self.client.set(
                self.keys.lock_holder, json.dumps(vars(holder)), px=int(self.lease_s * 1000)
            )

    def release_holder(self, holder: Holder) -> None:
        self._release_holder(keys=[self.keys.lock_holder], args=[holder.token])

    def holder(self) -> Holder | None:
        """Who holds the lock now; None when it is free (or its holder wrote nothing)."""
        with broker_errors("reading the run lock"):
            locked, raw = self.client.exists(self.keys.lock), self.client.get(self.keys.lock_holder)
        return Holder.from_json(raw) if locked else None

    def break_lock(self, holder: Holder) -> bool:
        """Delete the lock and its holder key if `holder` still holds it (for a holder known to
        be gone); False when the lock changed hands meanwhile."""
        with broker_errors("breaking the run lock"):
            keys = [self.keys.lock, self.keys.lock_holder]
            return bool(self._break(keys=keys, args=[holder.token]))
