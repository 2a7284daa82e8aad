"""The reconciliation scan: stream Redis in chunks, look rows up in batches, diff, report.

Database look-ups run on a helper thread while the main thread reads and parses the next chunk,
so Redis round trips, parsing and queries overlap. At most two batches are in flight, which keeps
memory bounded by the batch size rather than the queue length.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import replace

import structlog

from maintenance.adapters.database import TaskDatabase
from maintenance.adapters.redis_reader import RedisReader
from maintenance.adapters.workers import WorkerControl
from maintenance.config import Settings
from maintenance.core.bindings import BindingTable
from maintenance.core.diff import Lookup, LostTracker, judge_message, judge_result
from maintenance.core.envelope import parse_list_element, parse_unacked_entry
from maintenance.core.models import Finding, FindingKind, Location, Message, Where
from maintenance.core.report import ScanReport, place_name

log = structlog.get_logger(__name__)
Progress = Callable[[str, int, int | None], None]
MAX_IN_FLIGHT = 2
LOGGED_FINDINGS_MAX = 1000  # one line per orphan in the log file, up to this many


class Reconciler:
    def __init__(self, settings: Settings, reader: RedisReader, db: TaskDatabase,
                 workers: WorkerControl | None = None, *, progress: Progress | None = None,
                 clock: Callable[[], float] = time.time):
        self.settings = settings
        self.reader = reader
        self.db = db
        self.workers = workers
        self.bindings = BindingTable(settings.bindings)
        self.progress = progress or (lambda phase, done, total: None)
        self.clock = clock

    def scan(self, only: str | None = None, results: bool = True) -> ScanReport:
        """Read-only. Raises BrokerUnavailable / DatabaseUnavailable: a failed scan, no verdict."""
        report = ScanReport(started_at=self.clock(), only=only)
        self.db.validate()
        lost = self._lost_tracker(report)
        held = self._scan_workers(report)
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="db-lookup") as pool:
            batcher = _Batcher(self, report, pool, lost, only,
                               held_ids={m.task_id for m in held if m.task_id})
            self._scan_queues(batcher)
            self._scan_unacked(batcher)
            # A task a worker holds is usually also in Redis (unacked, or queued again): judge it
            # once, at its Redis location, which is the one a cleanup can act on.
            for msg in held:
                if msg.task_id not in batcher.seen_held:
                    batcher.add(msg)
            batcher.flush()
        if results:
            self._scan_results(report, only)
        if report.lost_checked:
            report.findings.extend(f for f in lost.findings(self.clock())
                                   if only is None or only in (f.db_id, f.task_id))
        report.finished_at = self.clock()
        self._log(report)
        return report

    def _lost_tracker(self, report: ScanReport) -> LostTracker:
        if not self.settings.tasks.updated_at_column:
            report.notes.append("lost rows not checked: tasks.updated_at_column is not set")
            return LostTracker(())
        if self.settings.scan.inspect_workers is False:
            report.notes.append("lost rows not checked: scan.inspect_workers is off, so running "
                                "tasks cannot be told from lost ones")
            return LostTracker(())
        report.lost_checked = True
        stuck_s = self.settings.scan.stuck_after_h * 3600
        return LostTracker(self.db.iter_stuck(stuck_s, self.clock()))

    def _scan_workers(self, report: ScanReport) -> tuple[Message, ...]:
        if self.workers is None or not self.settings.scan.inspect_workers:
            return ()
        view = self.workers.snapshot(self.bindings)
        report.workers, report.workers_inspected = view.workers, True
        return view.messages

    def _scan_queues(self, batcher: _Batcher) -> None:
        layout = self.reader.layout
        for queue in self.settings.scan.queues:
            keys = layout.queue_keys(queue)
            lengths = self.reader.list_lengths([key for _, key in keys])
            for band, key in keys:
                total, done = lengths[key], 0
                for start, chunk in self.reader.iter_list(key):
                    for offset, raw in enumerate(chunk):
                        location = Location(Where.QUEUE, queue=queue, priority=band, key=key,
                                            index=start + offset)
                        batcher.add(parse_list_element(raw, location, self.bindings))
                    done += len(chunk)
                    self.progress(f"queue {place_name(Where.QUEUE, queue, band)}", done, total)

    def _scan_unacked(self, batcher: _Batcher) -> None:
        layout = self.reader.layout
        done = 0
        for chunk in self.reader.iter_unacked():
            for entry in chunk:
                location = Location(Where.UNACKED, key=layout.unacked,
                                    delivery_tag=entry.delivery_tag)
                msg = parse_unacked_entry(entry.raw, location, self.bindings)
                batcher.add(replace(msg, taken_at=entry.taken_at))
            done += len(chunk)
            self.progress("unacked", done, None)

    def _scan_results(self, report: ScanReport, only: str | None) -> None:
        now, retention_s = self.clock(), self.settings.scan.result_retention_h * 3600
        for chunk in self.reader.iter_results():
            report.results_scanned += len(chunk)
            for meta in chunk:
                if only is not None and meta.task_id != only:
                    continue
                finding = judge_result(meta, now, retention_s)
                if finding is not None:
                    report.findings.append(finding)
                elif only is not None:
                    report.notes.append(f"result {meta.status} at {meta.key}")
            self.progress("results", report.results_scanned, None)

    def _log(self, report: ScanReport) -> None:
        orphans = report.of_kind(FindingKind.ORPHAN)
        for finding in orphans[:LOGGED_FINDINGS_MAX]:
            log.info("⚠️ orphan found", task_id=finding.task_id, task_name=finding.task_name,
                     db_id=finding.db_id, reason=finding.reason.value,
                     location=finding.location.describe())
        if orphans:
            log.warning("⚠️ orphans found", orphans=len(orphans),
                        logged=min(len(orphans), LOGGED_FINDINGS_MAX))
        log.info("scan finished", duration_s=round(report.finished_at - report.started_at, 3),
                 managed=report.managed_messages, results=report.results_scanned,
                 **report.counts())


class _Batcher:
    """Collects managed messages into look-up batches and judges them as look-ups complete."""

    def __init__(self, owner: Reconciler, report: ScanReport, pool: ThreadPoolExecutor,
                 lost: LostTracker, only: str | None, held_ids: set[str] | None = None):
        self.owner = owner
        self.report = report
        self.pool = pool
        self.lost = lost
        self.only = only
        self.held_ids = held_ids or set()  # task ids live workers reported
        self.seen_held: set[str] = set()  # ... of which these were also found in Redis
        self.batch: list[Message] = []
        self.in_flight: deque[tuple[list[Message], Future[Lookup]]] = deque()
        self.batch_size = owner.settings.database.batch_size

    def add(self, msg: Message) -> None:
        self.lost.saw(msg)
        if msg.task_id in self.held_ids and msg.location.where is not Where.WORKER:
            self.seen_held.add(msg.task_id)
        if self.only is not None and self.only not in (msg.task_id, msg.db_id):
            return
        loc = msg.location
        stats = self.report.place(place_name(loc.where, loc.queue, loc.priority))
        stats.messages += 1
        if msg.problem is None and msg.db_id is None:
            stats.unmanaged += 1
            if self.only is not None:
                self.report.notes.append(f"unmanaged task {msg.task_name} at {loc.describe()}")
            return
        stats.managed += 1
        self.batch.append(msg)
        if len(self.batch) >= self.batch_size:
            self._submit()

    def _submit(self) -> None:
        batch, self.batch = self.batch, []
        task_ids = {m.db_id for m in batch if m.db_id and m.row_kind == "task"}
        sub_ids = {m.db_id for m in batch if m.db_id and m.row_kind == "sub_task"}
        future = self.pool.submit(self.owner.db.lookup, task_ids, sub_ids)
        self.in_flight.append((batch, future))
        while len(self.in_flight) > MAX_IN_FLIGHT:
            self._judge(*self.in_flight.popleft())

    def flush(self) -> None:
        if self.batch:
            self._submit()
        while self.in_flight:
            self._judge(*self.in_flight.popleft())

    def _judge(self, batch: Iterable[Message], future: Future[Lookup]) -> None:
        lookup = future.result()  # re-raises DatabaseUnavailable: no verdict on this batch
        now = self.owner.clock()
        for msg in batch:
            finding = judge_message(msg, lookup)
            if finding is None:
                if self.only is not None:
                    self.report.notes.append(f"present at {msg.location.describe()}: row ok")
                continue
            if msg.taken_at is not None:
                finding = replace(finding, age_s=max(0.0, now - msg.taken_at))
            self._count(finding)
            self.report.findings.append(finding)

    def _count(self, finding: Finding) -> None:
        loc = finding.location
        stats = self.report.place(place_name(loc.where, loc.queue, loc.priority))
        if finding.kind is FindingKind.ORPHAN:
            stats.orphans += 1
        elif finding.kind is FindingKind.UNREADABLE:
            stats.unreadable += 1
