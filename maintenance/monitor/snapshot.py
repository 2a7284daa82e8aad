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

from maintenance.adapters.history_totals import HistoryReader, HistoryView
from maintenance.adapters.live_state import LiveStateReader, QueueDepth
from maintenance.adapters.run_lock import Holder
from maintenance.adapters.workers import WorkerControl
from maintenance.core.summary import ScanSummary, trend
from maintenance.errors import UnavailableError

__all__ = ["QueueDepth", "Snapshot", "SnapshotReader"]


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
    lock_holder: Holder | None = None
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
            "unacked": {
                "messages": self.unacked,
                "oldest_age_s": _round(self.unacked_oldest_age_s),
            },
            "workers": None
            if self.workers is None
            else {
                "online": len(self.workers),
                "names": list(self.workers),
                "checked_at": self.workers_checked_at,
            },
            "scan": {
                "latest": self.latest.as_dict() if self.latest else None,
                "previous_at": self.previous.at if self.previous else None,
                "previous_counts": self.previous.counts if self.previous else None,
                "trend": trend(self.latest, self.previous),
            },
            "runs": [_jsonable_run(run) for run in self.history.recent],
            "actions_total": self.history.action_totals,
            "runs_total": self.history.outcome_totals,
            "guard_skips": self.guard_skips,
            "lock": None if self.lock_holder is None else self.lock_holder.public(),
            "available": {"redis": self.redis_ok, "database": self.database_ok},
            "errors": list(self.errors),
        }


class SnapshotReader:
    def __init__(
        self,
        live: LiveStateReader,
        queues: tuple[str, ...],
        workers: WorkerControl | None,
        history: HistoryReader | None,
        *,
        workers_every_s: float = 10.0,
        clock: Callable[[], float] = time.time,
    ):
        self.live = live
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
            state = self.live.read(self.queues)
            parts.update(
                queues=state.queues,
                unacked=state.unacked,
                latest=state.latest,
                previous=state.previous,
                guard_skips=state.guard_skips,
                lock_holder=state.lock_holder,
                unacked_oldest_age_s=None
                if state.oldest_taken_at is None
                else max(0.0, now - state.oldest_taken_at),
            )
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
        return Snapshot(
            **parts,
            workers=self._workers,
            workers_checked_at=self._workers_at,
            errors=tuple(errors),
        )

    def _refresh_workers(self, now: float) -> None:
        """Ping blocks for its whole timeout, so ask only every `workers_every_s`."""
        if self.workers is None:
            return
        if self._workers_at is not None and now - self._workers_at < self.workers_every_s:
            return
        self._workers = tuple(self.workers.ping())
        self._workers_at = self.clock()


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 3)


def _jsonable_run(run: dict[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in run.items() if key != "error" or value}
