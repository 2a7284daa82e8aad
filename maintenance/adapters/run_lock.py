"""The run lock in Redis: one maintenance run at a time across the CLI, Beat and every worker."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import redis
import structlog
from redis.exceptions import LockError

from maintenance.adapters.redis_layout import OwnKeys
from maintenance.adapters.redis_reader import broker_errors
from maintenance.core.models import as_text
from maintenance.errors import LockHeld

log = structlog.get_logger(__name__)


class RunLock:
    """A redis-py lock with an expiry, plus a key naming its holder for the refusal message."""

    def __init__(self, client: redis.Redis, keys: OwnKeys, *, ttl_s: float, wait_s: float):
        self.client = client
        self.keys = keys
        self.ttl_s = ttl_s
        self.wait_s = wait_s

    @contextmanager
    def held(self, holder: str, wait_s: float | None = None) -> Iterator[None]:
        """Raises LockHeld when another run holds it (after waiting `wait_s`, default the
        configured `lock_wait_s`)."""
        wait_s = self.wait_s if wait_s is None else wait_s
        with broker_errors("taking the run lock"):
            lock = self.client.lock(self.keys.lock, timeout=self.ttl_s, blocking_timeout=wait_s)
            if not lock.acquire(blocking=wait_s > 0):
                other = self.client.get(self.keys.lock_holder)
                raise LockHeld(
                    "another maintenance run holds the lock "
                    f"({as_text(other or b'unknown')}); try again when it ends"
                )
            self.client.set(self.keys.lock_holder, holder, ex=int(self.ttl_s))
        try:
            yield
        finally:
            with broker_errors("releasing the run lock"):
                try:
                    lock.release()
                except LockError:  # it expired (run longer than lock_ttl_s): nothing to release
                    log.warning("run lock had expired before release")
