"""The guards' shared skip counter: a Redis hash that `task-cleanup monitor` exports."""

from __future__ import annotations

import os

import redis

from maintenance.adapters.redis_reader import broker_errors
from maintenance.config import RedisSettings


class SkipCounter:
    """HINCRBY per skip on the broker Redis. Per-process counters die with prefork children;
    this one is shared by every worker. The client is opened on first use in each process."""

    def __init__(self, settings: RedisSettings, key: str):
        self.settings = settings
        self.key = key
        self._client: tuple[int, redis.Redis] | None = None

    def count(self, reason: str) -> None:
        """Raises BrokerUnavailable (also for an unusable URL): the caller decides it is best
        effort."""
        with broker_errors(f"counting a guard skip in {self.key}"):
            self._connection().hincrby(self.key, reason, 1)

    def _connection(self) -> redis.Redis:
        pid = os.getpid()
        if self._client is not None and self._client[0] == pid:
            return self._client[1]
        try:
            client = redis.Redis.from_url(
                self.settings.broker_url,
                socket_timeout=self.settings.socket_timeout_s,
                socket_connect_timeout=self.settings.socket_timeout_s,
            )
        except ValueError as exc:  # a URL redis-py cannot use: not a reason to fail a task
            raise redis.RedisError(f"invalid broker URL: {exc}") from None
        self._client = (pid, client)
        return client

    def close(self) -> None:
        if self._client is not None and self._client[0] == os.getpid():
            self._client[1].close()
        self._client = None
