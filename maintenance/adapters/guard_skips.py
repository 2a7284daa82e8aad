"""The guards' shared skip counter: a Redis hash that `task-cleanup monitor` exports."""

from __future__ import annotations

import os
from typing import Any

import redis

from maintenance.adapters.celery_app import broker_connection
from maintenance.adapters.redis_reader import broker_errors
from maintenance.config import REDIS_SCHEMES, RedisSettings


class SkipCounter:
    """HINCRBY per skip on the broker Redis. Per-process counters die with prefork children;
    this one is shared by every worker. The client is opened on first use in each process."""

    def __init__(self, settings: RedisSettings, key: str):
        self.settings = settings
        self.key = key
        self._client: tuple[int, redis.Redis, Any] | None = None  # pid, client, kombu's

    def count(self, reason: str) -> None:
        """Raises BrokerUnavailable (also for an unusable URL): the caller decides it is best
        effort."""
        with broker_errors(f"counting a guard skip in {self.key}"):
            self._connection().hincrby(self.key, reason, 1)

    def _connection(self) -> redis.Redis:
        """A plain client over kombu's own pool, as `connections.connect_broker` builds one.

        `redis.Redis.from_url` knows neither `sentinel://` URLs (kombu's form: the sentinels'
        addresses, `master_name` in the transport options) nor the `[redis] ssl` files, so the
        counter failed on every skip behind Sentinel; kombu's pool follows the master through a
        failover, and takes TLS from the URL or the settings exactly as the app's broker does.
        """
        pid = os.getpid()
        if self._client is not None and self._client[0] == pid:
            return self._client[1]
        self._client = None  # inherited through fork: the parent's sockets are not ours
        if not self.settings.broker_url.startswith(REDIS_SCHEMES):
            raise redis.RedisError("invalid broker URL: not a Redis URL")
        try:
            # Best effort inside a task: one attempt, not kombu's seconds of reconnecting.
            connection = broker_connection(self.settings, max_retries=0)
        except (ValueError, KeyError) as exc:  # a URL kombu cannot use: not a reason to fail a task
            raise redis.RedisError(f"invalid broker URL: {exc}") from None
        try:
            client = redis.Redis(connection_pool=connection.default_channel.pool)
        except ValueError as exc:  # e.g. a sentinel:// URL without master_name
            connection.release()
            raise redis.RedisError(f"invalid broker URL: {exc}") from None
        except BaseException:
            connection.release()
            raise
        self._client = (pid, client, connection)
        return client

    def close(self) -> None:
        if self._client is not None and self._client[0] == os.getpid():
            self._client[2].release()
        self._client = None
