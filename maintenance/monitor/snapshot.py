"""One monitor refresh: a handful of O(1) Redis reads, a cached worker ping, the history.

Designed to run every few seconds against production Redis all day: per refresh one pipelined
round trip (LLEN of each queue band, HLEN of unacked, the oldest unacked_index score, the two scan
summaries, the guard-skip hash) and, only every `workers_every_s`, a short ping broadcast. Never a
scan: findings come from the summary the last scan left behind.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import redis

from maintenance.adapters.history_totals import HistoryReader, HistoryView
from maintenance.adapters.redis_layout import BrokerLayout, OwnKeys
from maintenance.adapters.redis_reader import broker_errors
from maintenance.adapters.scan_summary import ScanSummaryStore, decode
from maintenance.adapters.workers import WorkerControl
from maintenance.core.summary import ScanSummary, trend
from maintenance.errors import UnavailableError


@dataclass(frozen=True)
class QueueDepth:
    queue: str
    band: int  # kombu priority band; 0 is the plain list
    messages: int


@dataclass(frozen=True)
class Snapshot:
    taken_at: float
    queues: tuple[QueueDepth, ...] = ()
    unacked: int = 0
    unacked_oldest_age_s: float | None = None
    workers: tuple[str, ...] | None = None  # None: not known (not pinged yet, or ping failed)
    workers_checked_at: float | None = None
    latest: ScanSummary | None = None
    previous: ScanSummary | None = None
    guard_skips: dict[str, int] = field(default_factory=dict)
    history: HistoryView = field(default_factory=lambda: HistoryView((), {}, {}))
    redis_ok: bool = True
    database_ok: bool = True
    errors: tuple[str, ...] = ()

    @property
    def available(self) -> bool:
        return self.redis_ok and self.database_ok

    def as_dict(self) -> dict[str, Any]:
        return {
            "taken_at": self.taken_at,
            "queues": [vars(q) for q in self.queues],
            "unacked": {"messages": self.unacked, "oldest_age_s": _round(
                self.unacked_oldest_age_s)},
            "workers": None if self.workers is None else {
                "online": len(self.workers), "names": list(self.workers),
                "checked_at": self.workers_checked_at},
            "scan": {"latest": self.latest.as_dict() if self.latest else None,
                     "previous_at": self.previous.at if self.previous else None,
                     "previous_counts": self.previous.counts if self.previous else None,
                     "trend": trend(self.latest, self.previous)},
            "runs": [_jsonable_run(run) for run in self.history.recent],
            "actions_total": self.history.action_totals,
            "runs_total": self.history.outcome_totals,
            "guard_skips": self.guard_skips,
            "available": {"redis": self.redis_ok, "database": self.database_ok},
            "errors": list(self.errors),
        }


class SnapshotReader:
    def __init__(self, broker: redis.Redis, layout: BrokerLayout, own_keys: OwnKeys,
                 queues: tuple[str, ...], workers: WorkerControl | None,
                 history: HistoryReader | None, *, workers_every_s: float = 10.0,
                 clock: Callable[[], float] = time.time):
        self.broker = broker
        self.layout = layout
        self.summaries = ScanSummaryStore(broker, own_keys)
        self.guard_skips_key = own_keys.key("guard", "skips")
        self.queues = queues
        self.workers = workers
        self.history = history
        self.workers_every_s = workers_every_s
        self.clock = clock
        self._workers: tuple[str, ...] | None = None
        self._workers_at: float | None = None

    def read(self) -> Snapshot:
        """Never raises for an unavailable backend: the snapshot says what failed."""
        now = self.clock()
        errors: list[str] = []
        parts: dict[str, Any] = {"taken_at": now}
        try:
            parts.update(self._read_redis(now))
            self._refresh_workers(now)
        except UnavailableError as exc:
            parts["redis_ok"] = False
            errors.append(str(exc))
        if self.history is not None:
            try:
                parts["history"] = self.history.read()
            except UnavailableError as exc:
                parts["database_ok"] = False
                errors.append(str(exc))
        return Snapshot(**parts, workers=self._workers, workers_checked_at=self._workers_at,
                        errors=tuple(errors))

    def _read_redis(self, now: float) -> dict[str, Any]:
        bands = [(queue, band, key) for queue in self.queues
                 for band, key in self.layout.queue_keys(queue)]
        with broker_errors("reading the monitor snapshot"):
            pipe = self.broker.pipeline(transaction=False)
            for _, _, key in bands:
                pipe.llen(key)
            pipe.hlen(self.layout.unacked)
            pipe.zrange(self.layout.unacked_index, 0, 0, withscores=True)
            pipe.mget([self.summaries.latest_key, self.summaries.previous_key])
            pipe.hgetall(self.guard_skips_key)
            *lengths, unacked, oldest, (latest, previous), skips = pipe.execute()
        depths = tuple(QueueDepth(queue, band, int(n))
                       for (queue, band, _), n in zip(bands, lengths, strict=True)
                       if band == 0 or n)  # empty priority bands are noise
        oldest_age = max(0.0, now - float(oldest[0][1])) if oldest else None
        return {"queues": depths, "unacked": int(unacked), "unacked_oldest_age_s": oldest_age,
                "latest": decode(latest), "previous": decode(previous),
                "guard_skips": _int_hash(skips)}

    def _refresh_workers(self, now: float) -> None:
        """Ping blocks for its whole timeout, so ask only every `workers_every_s`."""
        if self.workers is None:
            return
        if self._workers_at is not None and now - self._workers_at < self.workers_every_s:
            return
        self._workers = tuple(self.workers.ping())
        self._workers_at = self.clock()


def _int_hash(raw: dict[bytes, bytes]) -> dict[str, int]:
    out: dict[str, int] = {}
    for key, value in raw.items():
        try:
            out[key.decode(errors="replace")] = int(value)
        except ValueError:
            continue
    return dict(sorted(out.items()))


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 3)


def _jsonable_run(run: dict[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in run.items() if key != "error" or value}
