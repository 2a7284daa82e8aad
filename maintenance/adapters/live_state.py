"""The monitor's cheap read: one pipelined round trip of O(1) commands, never a scan."""

from __future__ import annotations

from dataclasses import dataclass, field

import redis

from maintenance.adapters.redis_layout import BrokerLayout, OwnKeys
from maintenance.adapters.redis_reader import broker_errors
from maintenance.adapters.run_lock import Holder
from maintenance.adapters.scan_summary import ScanSummaryStore, decode
from maintenance.adapters.sentinel import follow_master
from maintenance.core.summary import ScanSummary


@dataclass(frozen=True)
class QueueDepth:
    queue: str
    band: int  # kombu priority band; 0 is the plain list
    messages: int


@dataclass(frozen=True)
class LiveState:
    """What Redis says right now; `oldest_taken_at` is the oldest unacked entry's score."""

    queues: tuple[QueueDepth, ...] = ()
    unacked: int = 0
    oldest_taken_at: float | None = None
    latest: ScanSummary | None = None
    previous: ScanSummary | None = None
    guard_skips: dict[str, int] = field(default_factory=dict)
    lock_holder: Holder | None = None  # None: no maintenance run holds the lock


class LiveStateReader:
    """LLEN of each queue band, HLEN of unacked, the oldest unacked_index score, the two scan
    summaries, the guard-skip hash and the run lock's holder, in one pipelined round trip."""

    def __init__(
        self,
        client: redis.Redis,
        layout: BrokerLayout,
        own_keys: OwnKeys,
        summaries: ScanSummaryStore,
    ):
        self.client = client
        self.layout = layout
        self.summaries = summaries
        self.guard_skips_key = own_keys.guard_skips
        self.lock_keys = (own_keys.lock, own_keys.lock_holder)

    def read(self, queues: tuple[str, ...]) -> LiveState:
        bands = [
            (queue, band, key) for queue in queues for band, key in self.layout.queue_keys(queue)
        ]
        follow_master(self.client)  # each refresh reads the master the sentinels name now
        with broker_errors("reading the monitor snapshot"):
            pipe = self.client.pipeline(transaction=False)
            for _, _, key in bands:
                pipe.llen(key)
            pipe.hlen(self.layout.unacked)
            pipe.zrange(self.layout.unacked_index, 0, 0, withscores=True)
            pipe.mget([self.summaries.latest_key, self.summaries.previous_key])
            pipe.hgetall(self.guard_skips_key)
            pipe.exists(self.lock_keys[0])
            pipe.get(self.lock_keys[1])
            *lengths, unacked, oldest, (latest, previous), skips, locked, holder = pipe.execute()
        depths = tuple(
            QueueDepth(queue, band, int(n))
            for (queue, band, _), n in zip(bands, lengths, strict=True)
            if band == 0 or n
        )  # empty priority bands are noise
        return LiveState(
            queues=depths,
            unacked=int(unacked),
            oldest_taken_at=float(oldest[0][1]) if oldest else None,
            latest=decode(latest),
            previous=decode(previous),
            guard_skips=_int_hash(skips),
            lock_holder=Holder.from_json(holder) if locked else None,
        )


def _int_hash(raw: dict[bytes, bytes]) -> dict[str, int]:
    out: dict[str, int] = {}
    for key, value in raw.items():
        try:
            out[key.decode(errors="replace")] = int(value)
        except ValueError:
            continue
    return dict(sorted(out.items()))
