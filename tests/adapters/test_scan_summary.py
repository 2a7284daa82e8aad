"""The scan summary's Redis store (real Redis): the last two summaries, corrupt values ignored."""

from __future__ import annotations

import redis

from maintenance.adapters.redis_layout import OwnKeys
from maintenance.adapters.scan_summary import ScanSummaryStore
from maintenance.core.report import ScanReport


def report_with(*, at: float = 100.0) -> ScanReport:
    report = ScanReport(started_at=at - 2, finished_at=at)
    report.place("q").messages = 5
    return report


def test_store_keeps_the_last_two_summaries(redis_client: redis.Redis) -> None:
    """Each save shifts latest to previous; a third save drops the oldest."""
    store = ScanSummaryStore(redis_client, OwnKeys("tm-test"))
    assert store.load() == (None, None)
    for at in (1.0, 2.0, 3.0):
        store.save_report(report_with(at=at), source="check")
    latest, previous = store.load()
    assert latest is not None and previous is not None
    assert (latest.at, previous.at) == (3.0, 2.0)
    assert redis_client.exists("tm-test:scan:latest", "tm-test:scan:previous") == 2


def test_store_ignores_an_unreadable_summary(redis_client: redis.Redis) -> None:
    """A corrupt value reads as no summary rather than crashing the monitor."""
    redis_client.set("tm-test:scan:latest", b"not json")
    assert ScanSummaryStore(redis_client, OwnKeys("tm-test")).load() == (None, None)
