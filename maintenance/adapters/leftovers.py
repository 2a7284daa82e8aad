"""Broker leftovers that never expire: control reply lists whose reader is gone.

`celery inspect`/`control` clients (and health checks that run `celery inspect ping`) declare a
reply queue `<oid>.reply.<namespace>.pidbox` (kombu's `Mailbox.get_reply_queue`, with
`reply_exchange_fmt = 'reply.%s.pidbox'`) and bind it in the set
`_kombu.binding.reply.<namespace>.pidbox` (kombu's `keyprefix_queue`). When a client dies or
stops listening before a late worker answers, the worker still `LPUSH`es its reply: the list has
no TTL (only the declaring channel knows the queue's `x-expires`), and nobody ever reads it.

A live client pops its replies within milliseconds, so a reply list that nobody touched for
`min_idle_s` has no reader. Such lists are unlinked and their binding members removed; the
binding members of clients that never received a reply are left alone (we cannot date them).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import redis

from maintenance.adapters.redis_layout import BrokerLayout, _glob_escape
from maintenance.adapters.redis_reader import broker_errors


@dataclass(frozen=True)
class ReplyLeftovers:
    """Found and removed reply lists: counts for the run summary."""

    scanned: int = 0
    removed: int = 0
    expiring: int = 0  # idle time unknown (LFU eviction policy): given a TTL instead


class ReplyListSweeper:
    def __init__(
        self,
        client: redis.Redis,
        layout: BrokerLayout,
        reply_exchange: str,
        *,
        chunk_size: int = 1000,
    ):
        """`reply_exchange` comes from the app (`app.control.mailbox.reply_exchange.name`)."""
        self.client = client
        self.layout = layout
        self.reply_exchange = reply_exchange
        self.chunk_size = chunk_size

    @property
    def match(self) -> str:
        return f"{_glob_escape(self.layout.global_keyprefix)}*.{_glob_escape(self.reply_exchange)}"

    @property
    def binding_key(self) -> str:
        return f"{self.layout.global_keyprefix}_kombu.binding.{self.reply_exchange}"

    def sweep(self, min_idle_s: float) -> ReplyLeftovers:
        """SCAN in bounded chunks (never KEYS); judge each chunk with one pipelined round trip."""
        scanned = removed = expiring = 0
        with broker_errors("sweeping control reply lists"):
            for keys in self._chunks():
                scanned += len(keys)
                stale, unknown = self._judge(keys, min_idle_s)
                if stale:
                    self._remove(stale)
                    removed += len(stale)
                for key in unknown:
                    # Redis will drop it after min_idle_s unless a reader pops it first.
                    if self.client.expire(key, max(1, int(min_idle_s)), nx=True):
                        expiring += 1
        return ReplyLeftovers(scanned, removed, expiring)

    def _chunks(self) -> Iterator[list[Any]]:
        cursor = 0
        while True:
            cursor, keys = self.client.scan(cursor, match=self.match, count=self.chunk_size)
            if keys:
                yield keys
            if cursor == 0:
                return

    def _judge(self, keys: list[bytes], min_idle_s: float) -> tuple[list[bytes], list[bytes]]:
        """(idle past the limit, idle time unknown) among lists with no TTL."""
        pipe = self.client.pipeline(transaction=False)
        for key in keys:
            pipe.type(key)
            pipe.ttl(key)
        meta = pipe.execute()
        candidates = [
            key for i, key in enumerate(keys) if meta[2 * i] == b"list" and meta[2 * i + 1] == -1
        ]
        if not candidates:
            return [], []
        pipe = self.client.pipeline(transaction=False)
        for key in candidates:
            pipe.object("idletime", key)
        idle = pipe.execute(raise_on_error=False)
        stale = [
            k
            for k, s in zip(candidates, idle, strict=True)
            if isinstance(s, int) and s >= min_idle_s
        ]
        unknown = [k for k, s in zip(candidates, idle, strict=True) if not isinstance(s, int)]
        return stale, unknown

    def _remove(self, keys: list[bytes]) -> None:
        prefix = self.layout.global_keyprefix.encode()
        sep = self.layout.sep.encode()
        pipe = self.client.pipeline(transaction=False)
        for key in keys:
            queue = key[len(prefix) :]
            oid = queue[: -len(self.reply_exchange) - 1]
            pipe.unlink(key)
            pipe.srem(self.binding_key, sep.join((oid, b"", queue)))
        pipe.execute()
