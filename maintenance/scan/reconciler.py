"""The reconciliation scan: stream Redis in chunks, look rows up in batches, diff, report.

The main thread reads and parses the queues while a helper thread looks rows up (`batches`)
and the result keys, which need no database, are read beside both (`results`: in a forked
child, so that their parsing gets the second core rather than a share of the GIL).
"""

from __future__ import annotations

import gc
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import replace

import structlog

from maintenance.adapters.database import TaskDatabase
from maintenance.adapters.redis_reader import RedisReader
from maintenance.adapters.workers import WorkerControl, WorkerView
from maintenance.config import Settings
from maintenance.core.bindings import BindingTable
from maintenance.core.diff import LostTracker
from maintenance.core.envelope import parse_unacked_entry
from maintenance.core.hazards import HazardWatch
from maintenance.core.inventory import Inventory
from maintenance.core.models import FindingKind, Location, Progress, Where
from maintenance.core.report import ScanReport, place_name
from maintenance.scan.batches import LookupBatcher
from maintenance.scan.results import BackgroundResults, ResultScan, scan_results

log = structlog.get_logger(__name__)
LOGGED_FINDINGS_MAX = 1000  # one line per orphan in the log file, up to this many


class Reconciler:
    def __init__(
        self,
        settings: Settings,
        reader: RedisReader,
        db: TaskDatabase,
        workers: WorkerControl | None = None,
        *,
        progress: Progress | None = None,
        clock: Callable[[], float] = time.time,
    ):
        self.settings = settings
        self.reader = reader
        self.db = db
        self.workers = workers
        self.bindings = BindingTable(settings.bindings)
        self.progress = progress or (lambda phase, done, total: None)
        self.clock = clock

    def scan(
        self, only: str | None = None, results: bool = True, inventory: Inventory | None = None
    ) -> ScanReport:
        """Read-only. Raises BrokerUnavailable / DatabaseUnavailable: a failed scan, no verdict.
        With an `inventory`, also counts what sits in the queues (the `queues` view)."""
        with _gc_paused():
            return self._scan(only, results, inventory)

    def _scan(self, only: str | None, results: bool, inventory: Inventory | None) -> ScanReport:
        report = ScanReport(started_at=self.clock(), only=only)
        self.reader.begin_scan()
        self.db.validate()
        lost = self._lost_tracker(report)
        # Exits run in reverse: the look-up thread finishes before its connection closes.
        with (
            self.db.pinned_verdicts() as verdicts,
            ThreadPoolExecutor(max_workers=1, thread_name_prefix="results") as side,
            ThreadPoolExecutor(max_workers=1, thread_name_prefix="db-lookup") as pool,
            ThreadPoolExecutor(max_workers=1, thread_name_prefix="workers") as aside,
        ):
            background = self._start_results(side, only) if results else None
            try:
                # Workers answer within the inspect timeout: scan the queues meanwhile.
                asked = aside.submit(self._worker_view)
                batcher = LookupBatcher(
                    verdicts,
                    self.bindings,
                    report,
                    pool,
                    lost,
                    only,
                    batch_size=self.settings.database.batch_size,
                    clock=self.clock,
                    hazards=self._hazard_watch(report),
                    inventory=inventory,
                )
                self._scan_queues(batcher, report, asked, inventory)
                self._take_held(report, batcher, asked)
                self._scan_unacked(batcher)
                # A task a worker holds is usually also in Redis (unacked, or queued again):
                # judge it once, at its Redis location, which is the one a cleanup can act on.
                for msg in batcher.held or ():
                    if msg.task_id not in batcher.seen_held:
                        batcher.add(msg)
                batcher.flush()
                if background is not None:
                    self._merge_results(report, background.wait(self.progress))
            except BaseException:
                if background is not None:
                    background.cancel()
                raise
        if report.lost_checked:
            report.findings.extend(
                f
                for f in lost.findings(self.clock())
                if only is None or only in (f.db_id, f.task_id)
            )
        if inventory is not None:
            for finding in report.of_kind(FindingKind.ORPHAN):
                inventory.orphan(finding.location, finding.task_name)
        if report.tombstones_seen:
            report.notes.append(
                f"{report.tombstones_seen} tombstones of a quarantine that was cut short are "
                "still queued (workers discard them); the next cleanup removes them"
            )
        if only is not None and not (report.places or report.findings or report.notes):
            report.notes.append(
                f"{only} was found nowhere: not in the scanned queues, unacked, "
                "live workers or result keys"
            )
        report.finished_at = self.clock()
        self._log(report)
        return report

    def _hazard_watch(self, report: ScanReport) -> HazardWatch | None:
        if not self.settings.scan.hazards:
            return None
        return HazardWatch(
            now=report.started_at,
            visibility_timeout_s=self.reader.layout.visibility_timeout_s,
            scan_started_at=report.started_at,
        )

    def _lost_tracker(self, report: ScanReport) -> LostTracker:
        if not self.settings.tasks.updated_at_column:
            report.notes.append("lost rows not checked: tasks.updated_at_column is not set")
            return LostTracker(())
        if self.settings.scan.inspect_workers is False:
            report.notes.append(
                "lost rows not checked: scan.inspect_workers is off, so running "
                "tasks cannot be told from lost ones"
            )
            return LostTracker(())
        report.lost_checked = True
        stuck_s = self.settings.scan.stuck_after_h * 3600
        return LostTracker(self.db.iter_stuck(stuck_s, self.clock()))

    def _worker_view(self) -> WorkerView | None:
        """On its own thread: what live workers hold, None when not inspecting."""
        if self.workers is None or not self.settings.scan.inspect_workers:
            return None
        return self.workers.snapshot(self.bindings)

    def _take_held(
        self, report: ScanReport, batcher: LookupBatcher, asked: Future[WorkerView | None]
    ) -> None:
        if batcher.held is None:
            view = asked.result()  # re-raises BrokerUnavailable: no verdict
            if view is not None:
                report.workers, report.workers_inspected = view.workers, True
            batcher.know_held(() if view is None else view.messages)

    def _scan_queues(
        self,
        batcher: LookupBatcher,
        report: ScanReport,
        asked: Future[WorkerView | None],
        inventory: Inventory | None,
    ) -> None:
        layout = self.reader.layout
        for queue in self.settings.scan.queues:
            keys = layout.queue_keys(queue)
            lengths = self.reader.list_lengths([key for _, key in keys])
            for band, key in keys:
                total, done = lengths[key], 0
                place = Location(Where.QUEUE, queue=queue, priority=band, key=key)
                if inventory is not None:
                    inventory.band(place).length = total
                for start, chunk in self.reader.iter_list(key):
                    batcher.add_queued(chunk, start, place)
                    if asked.done():
                        self._take_held(report, batcher, asked)
                    done += len(chunk)
                    self.progress(f"queue {place_name(Where.QUEUE, queue, band)}", done, total)

    def _scan_unacked(self, batcher: LookupBatcher) -> None:
        layout = self.reader.layout
        done = 0
        for chunk in self.reader.iter_unacked():
            for entry in chunk:
                location = Location(
                    Where.UNACKED, key=layout.unacked, delivery_tag=entry.delivery_tag
                )
                msg = parse_unacked_entry(entry.raw, location, self.bindings)
                batcher.add(replace(msg, taken_at=entry.taken_at))
            done += len(chunk)
            self.progress("unacked", done, None)

    def _start_results(self, side: ThreadPoolExecutor, only: str | None) -> BackgroundResults:
        now, retention_s = self.clock(), self.settings.scan.result_retention_h * 3600
        return BackgroundResults(
            side,
            lambda report, stop: scan_results(self.reader, now, retention_s, only, report, stop),
        )

    def _merge_results(self, report: ScanReport, found: ResultScan) -> None:
        """The result keys' findings go after the queues', as when they were read in order."""
        report.results_scanned = found.scanned
        report.findings.extend(found.findings)
        report.notes.extend(found.notes)

    def _log(self, report: ScanReport) -> None:
        orphans = report.of_kind(FindingKind.ORPHAN)
        for finding in orphans[:LOGGED_FINDINGS_MAX]:
            log.info(
                "⚠️ orphan found",
                task_id=finding.task_id,
                task_name=finding.task_name,
                db_id=finding.db_id,
                reason=finding.reason.value,
                location=finding.location.describe(),
            )
        if orphans:
            log.warning(
                "⚠️ orphans found",
                orphans=len(orphans),
                logged=min(len(orphans), LOGGED_FINDINGS_MAX),
            )
        log.info(
            "scan finished",
            duration_s=round(report.finished_at - report.started_at, 3),
            managed=report.managed_messages,
            results=report.results_scanned,
            **report.counts(),
        )


@contextmanager
def _gc_paused() -> Iterator[None]:
    """The scan allocates millions of short-lived containers and keeps a growing list of
    findings; the cyclic GC would walk that list again and again (a third of the CPU time at a
    million messages) to find cycles the scan does not make. Reference counting still frees
    everything as usual."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()
