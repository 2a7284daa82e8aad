"""The result-key scan, run beside the queue scan: stale results need no database look-up.

It runs in a forked child where the platform allows (its parsing then uses the second core
instead of sharing the queue scan's), else on a thread. Either way its findings are merged after
the queues', so the report reads in the same order.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field

from maintenance.adapters.redis_reader import RedisReader
from maintenance.core.diff import result_verdict
from maintenance.core.finding_store import Findings, PackedStale, StaleRow, stale_row
from maintenance.core.models import Progress, ResultMeta
from maintenance.scan.forked import CAN_FORK, ForkedCall, Report, only_fork_safe_threads


@dataclass
class ResultScan:
    """What the result-key scan found."""

    findings: Findings = field(default_factory=Findings)
    notes: list[str] = field(default_factory=list)
    scanned: int = 0


def scan_results(
    reader: RedisReader,
    now: float,
    retention_s: float,
    only: str | None,
    report: Report,
    stop: threading.Event | None = None,
) -> list[str]:
    """Reports (keys read, stale rows packed) per SCAN batch as it goes, so that a forked child
    never holds them all; returns the notes of a `--task-id` scan. A stale key travels as a
    tuple of five plain values (`StaleRow`): pickling a Finding dataclass and its Location
    through the pipe, and unpickling it in the parent, cost more than reading the key. The
    batch is pickled here, once (`PackedStale`): the parent files it without unpickling it."""

    def maybe_stale(date_done: float | None, ttl_s: int) -> bool:
        return result_verdict(date_done, ttl_s, now, retention_s) is not None

    notes: list[str] = []
    # A whole scan builds metas only for stale keys; --task-id notes the fine one too.
    keep = maybe_stale if only is None else None
    for read, chunk in reader.iter_result_chunks(keep):
        if stop is not None and stop.is_set():
            break
        rows = []
        for meta in chunk:
            if only is not None and meta.task_id != only:
                continue
            row = judge_result_row(meta, now, retention_s)
            if row is not None:
                rows.append(row)
            elif only is not None:
                notes.append(f"result {meta.status} at {meta.key}")
        report((read, PackedStale.pack(rows)))
        del chunk, rows  # gc is paused: drop the batch before the next one is read
    return notes


def judge_result_row(meta: ResultMeta, now: float, retention_s: float) -> StaleRow | None:
    """`core.diff.judge_result` in compact form: the store makes the same Finding when read."""
    reason = result_verdict(meta.date_done, meta.ttl_s, now, retention_s)
    if reason is None:
        return None
    age = None if meta.date_done is None else max(0.0, now - meta.date_done)
    return stale_row(reason, meta.task_id, meta.key, meta.status, age)


class BackgroundResults:
    """Started before the queue scan (so a fork happens before any thread exists), collected
    after it with `wait`, or abandoned with `cancel` when the scan fails."""

    def __init__(
        self, side: ThreadPoolExecutor, work: Callable[[Report, threading.Event], list[str]]
    ):
        self.found = ResultScan()
        self._stop = threading.Event()
        self._call: ForkedCall[list[str]] | None = None
        # Fork only when no other thread can hold a lock the child needs: one held at the fork
        # (logging, a connection pool) would stay locked forever in the child.
        if CAN_FORK and only_fork_safe_threads():
            self._call = ForkedCall(lambda report: work(report, self._stop))
            self._job: Future[list[str]] = side.submit(self._call.result, self._add)
        else:
            self._job = side.submit(work, self._add, self._stop)

    def _add(self, part: tuple[int, PackedStale]) -> None:
        """On the side thread, per SCAN batch; the main thread reads only `scanned` meanwhile."""
        read, rows = part
        self.found.findings.extend_packed(rows)
        self.found.scanned += read

    def wait(self, progress: Progress) -> ResultScan:
        while True:
            try:
                notes = self._job.result(timeout=0.2)  # re-raises BrokerUnavailable
            except TimeoutError:
                progress("results", self.found.scanned, None)
                continue
            self.found.notes.extend(notes)
            return self.found

    def cancel(self) -> None:
        self._stop.set()  # a thread stops at its next chunk
        if self._call is not None:
            self._call.cancel()
