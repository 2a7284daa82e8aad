"""One master per unit of work behind Redis Sentinel: a failover during a run fails the run.

kombu's and Celery's Sentinel pools ask the sentinels for the master again on every reconnect,
so a failover in the middle of a scan or a cleanup silently sent the rest of it to the promoted
replica: some calls failed (a pipeline that timed out on the hung master), others were retried
on the new master and went on (a quarantine script call). The run then judged and acted on two
servers' data, the second possibly without the writes the first had not yet replicated (its
quarantine moves, the run lock). Pinned, a run talks to the master the sentinels named when it
began: after a failover its next call fails (`BrokerUnavailable`: exit 3, no verdict), and the
next unit of work starts on the new master.

A unit of work begins with `follow_master`: taking the run lock (every acting run), starting a
scan, a monitor refresh. Until then the pin holds, so a long-lived service (the monitor, the
worker's metrics server, the Python API) follows a failover at its next unit of work. It asks
the sentinels then, which drops the idle connections to a former master: redis-py (8.x)
reconnects a dropped Sentinel connection to the address it had, so after a graceful failover
(the old master still up, now a replica) a long-lived pool kept writing to it and failed with
"The previous master is now a slave" for good.
"""

from __future__ import annotations

import contextlib
from typing import Any

import redis
from redis.sentinel import SentinelConnectionPool


class MasterChanged(redis.ConnectionError):
    """The sentinels name another master than the one this unit of work began on."""


class MasterPin:
    """The master address each Sentinel service had when the current unit of work began,
    shared by every pool of one composition (the broker's and the result backend's)."""

    def __init__(self) -> None:
        # No lock: setdefault and clear are atomic under the GIL, and a lock held by another
        # thread when the result scan forks would stay held in the child forever.
        self._pinned: dict[str, tuple[str, int]] = {}
        self._pools: list[SentinelConnectionPool] = []

    def attach(self, client: redis.Redis) -> redis.Redis:
        """Pin `client`'s pool if it is a Sentinel pool (kombu's, Celery's); others as they are."""
        pool = client.connection_pool
        if isinstance(pool, SentinelConnectionPool):
            manager = _PinnedManager(pool.sentinel_manager, self)
            pool.sentinel_manager = manager
            proxy = getattr(pool, "proxy", None)  # redis-py >= 5.0.2 asks its proxy
            if proxy is not None:
                proxy.sentinel_manager = manager
            self._pools.append(pool)
        return client

    def check(self, service: str, address: tuple[str, int]) -> None:
        first = self._pinned.setdefault(service, address)
        if first != address:
            raise MasterChanged(
                f"the Sentinel master {service!r} changed during the run "
                f"({_host(first)} -> {_host(address)}): a failover; the next run uses the new one"
            )

    def follow(self) -> None:
        """A new unit of work: pin whichever master the sentinels name now, and drop the idle
        connections to any other. Best effort: if the sentinels do not answer, the unit's first
        call says so."""
        self._pinned.clear()
        for pool in self._pools:
            with contextlib.suppress(redis.RedisError, OSError):
                # a changed address disconnects the idle connections
                pool.get_master_address()  # type: ignore[no-untyped-call]


class _PinnedManager:
    """A `redis.sentinel.Sentinel` whose `discover_master` refuses a changed master."""

    def __init__(self, manager: Any, pin: MasterPin):
        self._manager = manager
        self.pin = pin

    def discover_master(self, service_name: str) -> tuple[str, int]:
        host, port = self._manager.discover_master(service_name)
        address = (str(host), int(port))
        self.pin.check(service_name, address)
        return address

    def __getattr__(self, name: str) -> Any:
        return getattr(self._manager, name)


def follow_master(client: redis.Redis) -> None:
    """Begin a unit of work on `client` (a no-op unless its pool is a pinned Sentinel pool)."""
    manager = getattr(client.connection_pool, "sentinel_manager", None)
    if isinstance(manager, _PinnedManager):
        manager.pin.follow()


def _host(address: tuple[str, int]) -> str:
    return f"{address[0]}:{address[1]}"
