"""Live workers through Celery's remote control: what they hold, and revoke broadcasts."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any, TypeVar

import redis
from celery import Celery
from kombu.pidbox import Mailbox

from maintenance.adapters.redis_reader import broker_errors
from maintenance.core.bindings import BindingTable
from maintenance.core.models import Location, Message, Reason, Where

T = TypeVar("T")
# Limited pings before the last, unlimited one: each limited one that ends early lost a place
# to a stray reply; a few such are plenty, the last waits the timeout out.
_LIMITED_PINGS = 3


@dataclass(frozen=True)
class WorkerView:
    """What live workers reported. `answered` is False when nobody replied within the timeout."""

    workers: tuple[str, ...]
    messages: tuple[Message, ...]

    @property
    def answered(self) -> bool:
        return bool(self.workers)


class WorkerControl:
    def __init__(self, app: Celery, timeout_s: float = 2.0):
        self.app = app
        self.timeout_s = timeout_s

    def with_timeout(self, timeout_s: float) -> WorkerControl:
        """The same control with a shorter wait (the live view pings every few seconds)."""
        return WorkerControl(self.app, timeout_s)

    def ping(self) -> list[str]:
        """The names of the workers that answer a broadcast ping.

        Each live worker binds its `<hostname>.<namespace>.pidbox` queue to the mailbox's fanout
        exchange, so kombu's binding table names the workers to expect: the ping ends as soon as
        all of them have answered, `timeout_s` being only the upper bound. A binding a dead
        worker left behind costs the whole timeout (as every ping did before); a worker that
        answers without a binding (the table was wiped) makes the table untrusted, and the ping
        then waits the timeout out for anyone else.
        """
        with broker_errors("pinging workers"):
            return _after_failover(self._ping)

    def expected_workers(self) -> set[str]:
        """The workers the binding table names (a stale binding included)."""
        with (
            broker_errors("reading the workers' bindings"),
            self.app.connection_or_acquire() as connection,
        ):
            return _after_failover(partial(self._bound, connection))

    def _bound(self, connection: Any) -> set[str]:
        # The channel's own client: its global_keyprefix, database, Sentinel and TLS settings.
        mailbox = self.app.control.mailbox
        table = connection.default_channel.get_table(mailbox.exchange.name)
        return bound_workers(table, pidbox_suffix(mailbox))

    def _ping(self) -> list[str]:
        control = self.app.control
        deadline = time.monotonic() + self.timeout_s
        with self.app.connection_or_acquire() as connection:
            expected = self._bound(connection)
            answered: set[str] = set()
            for attempt in range(_LIMITED_PINGS + 1):
                trusted = bool(expected) and answered <= expected
                limit = len(expected) if trusted and attempt < _LIMITED_PINGS else None
                remaining = max(deadline - time.monotonic(), 0.01)  # 0 would mean no expiry
                replies = control.ping(timeout=remaining, limit=limit, connection=connection)
                answered.update(name for reply in replies or () for name in reply)
                if limit is None or answered == expected or time.monotonic() >= deadline:
                    break
                # Returned early without everyone: a stray reply (one to an earlier, timed-out
                # ping of this process) took a place, or an unbound worker answered.
        return sorted(answered)

    def snapshot(self, bindings: BindingTable) -> WorkerView:
        """Active, reserved and scheduled tasks of every worker that answers in time.

        The ping returns once every bound worker has answered (see `ping`); the three
        inspections then return as soon as every worker that answered the ping has replied.
        """
        alive = self.ping()
        if not alive:
            return WorkerView((), ())
        with broker_errors("inspecting workers"):
            inspect = self.app.control.inspect(
                timeout=self.timeout_s, destination=alive, limit=len(alive)
            )
            active = _after_failover(inspect.active) or {}
            reserved = _after_failover(inspect.reserved) or {}
            scheduled = _after_failover(inspect.scheduled) or {}
        workers = set(alive) | set(active) | set(reserved) | set(scheduled)
        messages: list[Message] = []
        for state, replies in (
            ("active", active),
            ("reserved", reserved),
            ("scheduled", scheduled),
        ):
            for worker, entries in replies.items():
                for entry in entries or ():
                    request = entry.get("request", entry) if state == "scheduled" else entry
                    messages.append(_message(request, worker, state, bindings))
        return WorkerView(tuple(sorted(workers)), tuple(messages))

    def revoke(
        self, task_ids: Sequence[str], batch_size: int = 500, expect: Sequence[str] = ()
    ) -> set[str]:
        """Broadcast revokes in batches (one control message per batch, not one per task) and
        return the ids some live worker acknowledged: only those will not run on the workers
        that exist now. `expect` names the workers known to be alive; the replies are awaited
        until each has answered, at most the timeout. With none known, the broadcast still
        goes out (a worker may have missed the ping) but nothing counts as acknowledged."""
        acknowledged: set[str] = set()
        with broker_errors("broadcasting revokes"):
            for start in range(0, len(task_ids), batch_size):
                batch = list(task_ids[start : start + batch_size])
                if not expect:
                    _after_failover(partial(self.app.control.revoke, batch))
                    continue
                replies = _after_failover(
                    partial(
                        self.app.control.revoke,
                        batch,
                        destination=list(expect),
                        reply=True,
                        timeout=self.timeout_s,
                        limit=len(expect),
                    )
                )
                if any("ok" in answer for reply in replies or () for answer in reply.values()):
                    acknowledged.update(batch)
        return acknowledged


def pidbox_suffix(mailbox: Mailbox) -> str:
    """What follows the hostname in a worker's pidbox queue name, from kombu's own naming."""
    queue = mailbox.get_queue("")  # type: ignore[no-untyped-call]  # kombu ships no hints here
    return str(queue.name)


def bound_workers(table: Iterable[Sequence[str]], suffix: str) -> set[str]:
    """The hostnames of the pidbox queues in a fanout exchange's binding table (kombu's
    `(routing_key, pattern, queue)` rows, `_kombu.binding.<exchange>` on Redis)."""
    return {
        row[-1][: -len(suffix)]
        for row in table
        if row and row[-1].endswith(suffix) and row[-1] != suffix
    }


def _after_failover(call: Callable[[], T]) -> T:
    """`call`, once more if its pooled connection was to a master that a Sentinel failover
    demoted (a replica now: READONLY, "The previous master is now a slave").

    redis-py (8.x) reconnects a Sentinel connection to the address it had, so kombu's pooled
    control connections kept failing on the old master after a graceful failover; kombu drops
    the failed connection, and the second attempt asks the sentinels. Broadcasts are idempotent
    (a ping, an inspection, a revoke a worker already has), so a repeat is harmless.
    """
    try:
        return call()
    except redis.ConnectionError as exc:
        if not _demoted_master(exc):
            raise
        return call()


def _demoted_master(exc: BaseException | None) -> bool:
    for _ in range(10):
        if exc is None:
            return False
        if isinstance(exc, redis.ReadOnlyError):
            return True
        exc = exc.__cause__ or exc.__context__
    return False


def _message(request: dict[str, Any], worker: str, state: str, bindings: BindingTable) -> Message:
    location = Location(
        Where.WORKER,
        worker=worker,
        state=state,
        queue=str((request.get("delivery_info") or {}).get("routing_key") or ""),
    )
    task_id, name = request.get("id"), request.get("name") or request.get("type")
    if not isinstance(task_id, str) or not isinstance(name, str):
        return Message(
            "",
            "",
            location,
            problem=Reason.BAD_ENVELOPE,
            detail="worker reported a task without id or name",
        )
    binding = bindings.lookup(name)
    if binding is None:
        return Message(task_id, name, location)
    db_id = binding.extract(task_id, request.get("args"), request.get("kwargs"))
    return Message(
        task_id, name, location, db_id=None if db_id is None else str(db_id), row_kind=binding.kind
    )
