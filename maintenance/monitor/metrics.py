"""Prometheus metrics from the monitor's latest snapshot, in a registry of our own.

A custom collector rather than Gauge objects: each scrape renders exactly the label sets of the
latest snapshot (a queue that disappeared leaves no stale series), and the refresh loop stays the
only thing that reads Redis, whatever the scrape rate.

Names follow the field's conventions so that dashboards join our series with celery-exporter's:
`queue_name` for queues and `name` for task names (its labels), base units (seconds), `_total`
on counters (prometheus_client adds the suffix to counter families).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from maintenance.core.models import Outcome, Reason
from maintenance.monitor.snapshot import Snapshot

PREFIX = "task_maintenance"
# Not a port of Prometheus's list of default exporter ports (9100-9999 is fully allocated; 9808
# there is celery-exporter's), nor Flower's 5555 or Prometheus's own 9090-9094.
DEFAULT_METRICS_PORT = 8758
# Every outcome a finished run can have, always exported (0 until seen): the first failure is
# then an increase of runs_total, and last_run_outcome has a series for each.
RUN_OUTCOMES = tuple(o.value for o in Outcome if o is not Outcome.RUNNING)
# Every reason a guard skips for (guards/policy.py row_problem), exported from 0 so that
# `increase()` and `rate()` see the first skip of each rather than a series appearing at 1.
GUARD_SKIP_REASONS = tuple(
    reason.value
    for reason in (
        Reason.ROW_MISSING,
        Reason.ROW_FINISHED,
        Reason.PARENT_MISSING,
        Reason.PARENT_FINISHED,
    )
)


class SnapshotCollector(Collector):
    def __init__(self, visibility_timeout_s: float | None = None) -> None:
        self._snapshot: Snapshot | None = None
        self._lock = threading.Lock()
        self.visibility_timeout_s = visibility_timeout_s

    def update(self, snapshot: Snapshot) -> None:
        with self._lock:
            self._snapshot = snapshot

    def collect(self) -> Iterator[Metric]:
        with self._lock:
            snap = self._snapshot
        if snap is None:
            return
        yield from _backend_metrics(snap)
        if self.visibility_timeout_s is not None:
            visibility = _gauge(
                "broker_visibility_timeout_seconds",
                "The Redis transport's visibility_timeout: unacked messages older than this are "
                "redelivered",
            )
            visibility.add_metric([], self.visibility_timeout_s)
            yield visibility
        if snap.redis_ok:
            yield from _broker_metrics(snap)
            yield from _scan_metrics(snap)
        if snap.database_ok:
            yield from _history_metrics(snap)


def _gauge(name: str, doc: str, labels: list[str] | None = None) -> GaugeMetricFamily:
    return GaugeMetricFamily(f"{PREFIX}_{name}", doc, labels=labels)


def _counter(name: str, doc: str, labels: list[str] | None = None) -> CounterMetricFamily:
    return CounterMetricFamily(f"{PREFIX}_{name}", doc, labels=labels)


def _backend_metrics(snap: Snapshot) -> Iterator[Metric]:
    up = _gauge("backend_up", "1 if the last monitor refresh could read this backend", ["backend"])
    up.add_metric(["redis"], float(snap.redis_ok))
    up.add_metric(["database"], float(snap.database_ok))
    yield up
    refreshed = _gauge("monitor_refresh_timestamp_seconds", "When the monitor last refreshed")
    refreshed.add_metric([], snap.taken_at)
    yield refreshed


def _broker_metrics(snap: Snapshot) -> Iterator[Metric]:
    waiting = _gauge(
        "queue_messages",
        "Messages waiting in a queue's priority list",
        ["queue_name", "priority"],
    )
    for depth in snap.queues:
        waiting.add_metric([depth.queue, str(depth.band)], depth.messages)
    yield waiting
    unacked = _gauge("unacked_messages", "Messages delivered to workers and not yet acked")
    unacked.add_metric([], snap.unacked)
    yield unacked
    oldest = _gauge(
        "unacked_oldest_age_seconds", "Age of the oldest unacked message (0 when there is none)"
    )
    oldest.add_metric([], snap.unacked_oldest_age_s or 0.0)
    yield oldest
    if snap.workers is not None:
        workers = _gauge("workers_online", "Celery workers that answered the last ping")
        workers.add_metric([], len(snap.workers))
        yield workers
    skips = _counter("guard_skips", "Actions a safety guard skipped, by reason", ["reason"])
    for reason, count in {**dict.fromkeys(GUARD_SKIP_REASONS, 0), **snap.guard_skips}.items():
        skips.add_metric([reason], count)
    yield skips
    held = _gauge("run_lock_held", "1 while a maintenance run holds the run lock")
    held.add_metric([], float(snap.lock_holder is not None))
    yield held


def _scan_metrics(snap: Snapshot) -> Iterator[Metric]:
    latest = snap.latest
    if latest is None:
        return
    findings = _gauge("scan_findings", "Findings of the latest scan, by kind", ["kind"])
    for kind, count in latest.counts.items():
        findings.add_metric([kind], count)
    yield findings
    by_name = _gauge(
        "scan_task_findings",
        "Findings of the latest scan by kind and task name (the most frequent names per kind)",
        ["kind", "name"],
    )
    for kind, names in latest.by_task_name.items():
        for task_name, count in names.items():
            by_name.add_metric([kind, task_name], count)
    yield by_name
    for name, doc, value in (
        ("scan_timestamp_seconds", "When the latest scan finished", latest.at),
        ("scan_duration_seconds", "How long the latest scan took", latest.duration_s),
        (
            "scan_managed_messages",
            "Messages bound to a row in the latest scan",
            latest.managed_messages,
        ),
    ):
        gauge = _gauge(name, doc)
        gauge.add_metric([], value)
        yield gauge


def _history_metrics(snap: Snapshot) -> Iterator[Metric]:
    history = snap.history
    actions = _counter("actions", "Actions taken by finished maintenance runs, by kind", ["action"])
    for action, count in sorted(history.action_totals.items()):
        actions.add_metric([action], count)
    yield actions
    runs = _counter("runs", "Finished maintenance runs, by outcome", ["outcome"])
    totals = {**dict.fromkeys(RUN_OUTCOMES, 0), **history.outcome_totals}
    for outcome, count in sorted(totals.items()):
        runs.add_metric([outcome], count)
    yield runs
    recent = list(history.recent)
    running = _gauge("run_in_progress", "1 while a maintenance run is recorded as running")
    running.add_metric([], float(any(r.get("outcome") == "running" for r in recent)))
    yield running
    last = next((r for r in recent if r.get("finished_at")), None)
    if last is not None:
        yield from _last_run_metrics(last)
    if history.last_ok_at is not None:
        ok = _gauge(
            "last_successful_run_timestamp_seconds", "When the newest run with outcome ok ended"
        )
        ok.add_metric([], history.last_ok_at)
        yield ok


def _last_run_metrics(run: dict[str, Any]) -> Iterator[Metric]:
    stamp = _gauge("last_run_timestamp_seconds", "When the last finished run ended")
    stamp.add_metric([], float(run["finished_at"]))
    yield stamp
    duration = _gauge("last_run_duration_seconds", "How long the last finished run took")
    duration.add_metric([], max(0.0, float(run["finished_at"]) - float(run["started_at"])))
    yield duration
    outcome = _gauge("last_run_outcome", "1 for the outcome of the last finished run", ["outcome"])
    for name in sorted({*RUN_OUTCOMES, str(run.get("outcome"))}):
        outcome.add_metric([name], float(name == run.get("outcome")))
    yield outcome


class ReadOnScrape(SnapshotCollector):
    """A collector that takes its own snapshot when scraped, at most once per `min_interval_s`.

    For the maintenance worker, which has no refresh loop: the reads happen only when Prometheus
    asks, on the HTTP server's thread, and a burst of scrapes costs one snapshot.
    """

    def __init__(
        self,
        read: Callable[[], Snapshot],
        min_interval_s: float = 5.0,
        visibility_timeout_s: float | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__(visibility_timeout_s)
        self._read = read
        self._min_interval_s = min_interval_s
        self._clock = clock
        self._read_at: float | None = None
        self._reading = threading.Lock()

    def collect(self) -> Iterator[Metric]:
        with self._reading:
            now = self._clock()
            if self._read_at is None or now - self._read_at >= self._min_interval_s:
                self.update(self._read())
                self._read_at = now
        yield from super().collect()


def serve_metrics(collector: SnapshotCollector, port: int, addr: str = "0.0.0.0") -> Any:
    """Serve /metrics on a daemon thread; returns the HTTP server (call .shutdown() to stop)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(collector)
    server, _thread = start_http_server(port, addr=addr, registry=registry)
    return server
