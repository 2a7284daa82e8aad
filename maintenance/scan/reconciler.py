"""The reconciliation scan: stream Redis in chunks, look rows up in batches, diff, report.

The main thread reads and parses the queues while a helper thread looks rows up (`batches`)
and the result keys, which need no database, are read beside both (`results`: in a forked
child, so that their parsing gets the second core rather than a share of the GIL).
"""

from __future__ import annotations

import gc
import time
from collections.abc import Callable, Iterator, Sequence
from collections.abc import Set as AbstractSet
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import closing, contextmanager
from dataclasses import dataclass, replace
from itertools import islice

import structlog

from maintenance.adapters import lost_rows
from maintenance.adapters.database import TaskDatabase
from maintenance.adapters.redis_reader import RedisReader
from maintenance.adapters.workers import WorkerControl, WorkerView
from maintenance.config import Settings
from maintenance.core.bindings import BindingTable
from maintenance.core.diff import LostCheck, LostTracker
from maintenance.core.envelope import parse_unacked_entry
from maintenance.core.hazards import HazardWatch
from maintenance.core.inventory import Inventory
from maintenance.core.models import FindingKind, Location, Progress, Where
from maintenance.core.report import ScanReport, place_name
from maintenance.scan.batches import LookupBatcher
from maintenance.scan.results import BackgroundResults, ResultScan, scan_results
from maintenance.scan.seen_hashes import SpillingHashes

log = structlog.get_logger(__name__)
LOGGED_FINDINGS_MAX = 1000  # one line per orphan in the log file, up to this many
LOST_NOT_IN_PARTS = (
    "lost rows not checked: a fan-out part sees only its share of the ids, and a row is lost "
    "only when no part saw it"
)


@dataclass(frozen=True)
class _Scope:
    """Which part of the whole scan to read (all of it by default): see `Reconciler.scan`."""

    queues: tuple[str, ...]
    results_shard: tuple[str, ...] | None
    unacked: bool
    workers: bool
    held: WorkerView | None
    seen_held: AbstractSet[str]
    judge_held: bool
    lost: bool
    skip_tasks: AbstractSet[str]
    validate: bool


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
        self.seen_held: set[str] = set()  # after a scan: the held task ids it saw in Redis

    def scan(
        self,
        only: str | None = None,
        results: bool = True,
        inventory: Inventory | None = None,
        *,
        queues: Sequence[str] | None = None,
        results_shard: Sequence[str] | None = None,
        unacked: bool = True,
        workers: bool = True,
        held: WorkerView | None = None,
        seen_held: AbstractSet[str] = frozenset(),
        judge_held: bool = True,
        lost: bool = True,
        skip_tasks: AbstractSet[str] = frozenset(),
        validate: bool = True,
    ) -> ScanReport:
        """Read-only. Raises BrokerUnavailable / DatabaseUnavailable: a failed scan, no verdict.
        With an `inventory`, also counts what sits in the queues (the `queues` view).

        The keywords scan one part of it (scan/fanout.py): `queues` (default: all configured),
        `results_shard` (SCAN MATCH patterns; default: every result key), the unacked store,
        asking live `workers`, or a `held` view taken by another part; `judge_held` judges what
        they hold unless seen here or in `seen_held`; `lost` off: no lost rows (they need every
        part's ids); `skip_tasks`: task names left out of the unacked store (the fan-out's own
        parts, in flight only because of this scan). `seen_held` afterwards: the held task ids
        this scan saw in Redis. `validate` off: the schema was checked by this same database
        adapter for this run already (a fan-out part after the first in its process)."""
        scope = _Scope(
            tuple(self.settings.scan.queues if queues is None else queues),
            None if results_shard is None else tuple(results_shard),
            unacked,
            workers,
            held,
            seen_held,
            judge_held,
            lost,
            skip_tasks,
            validate,
        )
        with _gc_paused():
            return self._scan(only, results, inventory, scope)

    def _scan(
        self, only: str | None, results: bool, inventory: Inventory | None, scope: _Scope
    ) -> ScanReport:
        report = ScanReport(started_at=self.clock(), only=only)
        self.reader.begin_scan()
        if scope.validate:
            self.db.validate()
        lost = self._lost_tracker(report) if scope.lost else _no_lost_check(report)
        seen = SpillingHashes()
        # Exits run in reverse: the look-up thread finishes before its connection closes.
        with (
            closing(seen),
            lost.closed_on_error(),
            self.db.pinned_verdicts() as verdicts,
            ThreadPoolExecutor(max_workers=1, thread_name_prefix="results") as side,
            ThreadPoolExecutor(max_workers=1, thread_name_prefix="db-lookup") as pool,
            ThreadPoolExecutor(max_workers=1, thread_name_prefix="workers") as aside,
        ):
            background = self._start_results(side, only, scope.results_shard) if results else None
            try:
                # Workers answer within the inspect timeout: scan the queues meanwhile.
                asked = aside.submit(self._worker_view, scope)
                batcher = LookupBatcher(
                    verdicts,
                    self.bindings,
                    report,
                    pool,
                    lost,
                    only,
                    batch_size=self.settings.database.batch_size,
                    clock=self.clock,
                    hazards=self._hazard_watch(report, seen),
                    inventory=inventory,
                )
                self._scan_queues(batcher, report, asked, inventory, scope.queues)
                self._take_held(report, batcher, asked)
                if scope.unacked:
                    self._scan_unacked(batcher, scope.skip_tasks)
                self._judge_held(batcher, scope)
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
                f"{report.tombstones_seen} tombstones of earlier quarantines are still queued "
                "(workers discard them as expired); the next cleanup removes those within "
                "cleanup.compact_depth of either end, `cleanup --compact` all of them"
            )
        if only is not None and not (report.places or report.findings or report.notes):
            report.notes.append(
                f"{only} was found nowhere: not in the scanned queues, unacked, "
                "live workers or result keys"
            )
        report.finished_at = self.clock()
        self._log(report)
        return report

    def _hazard_watch(self, report: ScanReport, seen: SpillingHashes) -> HazardWatch | None:
        if not self.settings.scan.hazards:
            return None
        return HazardWatch(
            now=report.started_at,
            visibility_timeout_s=self.reader.layout.visibility_timeout_s,
            scan_started_at=report.started_at,
            seen=seen,
        )

    def _lost_tracker(self, report: ScanReport) -> LostCheck:
        """The candidates are read now, before Redis is: a row that becomes stuck during the
        scan is judged by the next one. On the database side where it can (memory flat in
        the number of rows), else in memory."""
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
        now = self.clock()
        if lost_rows.supports(self.db):
            try:
                return lost_rows.ServerLostRows.open(self.db, stuck_s, now)
            except lost_rows.TempTableRefused as exc:
                report.notes.append(
                    "lost rows checked in memory (it grows with the rows still to run): "
                    f"the database refused a temporary table ({exc})"
                )
        return LostTracker(self.db.iter_stuck(stuck_s, now))

    def _worker_view(self, scope: _Scope) -> WorkerView | None:
        """On its own thread: what live workers hold, None when not inspecting."""
        if scope.held is not None:
            return scope.held
        if self.workers is None or not self.settings.scan.inspect_workers or not scope.workers:
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

    def _judge_held(self, batcher: LookupBatcher, scope: _Scope) -> None:
        """A task a worker holds is usually also in Redis (unacked, or queued again): judge it
        once, at its Redis location, which is the one a cleanup can act on."""
        self.seen_held = set(batcher.seen_held)
        batcher.seen_held |= scope.seen_held
        for msg in batcher.held if scope.judge_held and batcher.held else ():
            if msg.task_id not in batcher.seen_held:
                batcher.add(msg)

    def _scan_queues(
        self,
        batcher: LookupBatcher,
        report: ScanReport,
        asked: Future[WorkerView | None],
        inventory: Inventory | None,
        queues: Sequence[str],
    ) -> None:
        layout = self.reader.layout
        for queue in queues:
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

    def _scan_unacked(self, batcher: LookupBatcher, skip_tasks: AbstractSet[str]) -> None:
        layout = self.reader.layout
        done = 0
        for chunk in self.reader.iter_unacked():
            for entry in chunk:
                location = Location(
                    Where.UNACKED, key=layout.unacked, delivery_tag=entry.delivery_tag
                )
                msg = parse_unacked_entry(entry.raw, location, self.bindings)
                if msg.task_name not in skip_tasks:
                    batcher.add(replace(msg, taken_at=entry.taken_at))
            done += len(chunk)
            self.progress("unacked", done, None)

    def _start_results(
        self, side: ThreadPoolExecutor, only: str | None, shard: Sequence[str] | None
    ) -> BackgroundResults:
        now, retention_s = self.clock(), self.settings.scan.result_retention_h * 3600
        reader = self.reader
        if shard is not None:  # a fan-out shard: about 1/16 of the keys match
            reader = reader.with_result_match(shard, scan_count=8 * reader.chunk_size)
        return BackgroundResults(
            side,
            lambda report, stop: scan_results(reader, now, retention_s, only, report, stop),
        )

    def _merge_results(self, report: ScanReport, found: ResultScan) -> None:
        """The result keys' findings go after the queues', as when they were read in order."""
        report.results_scanned = found.scanned
        report.findings.absorb(found.findings)  # takes over its batches: nothing re-read
        report.notes.extend(found.notes)

    def _log(self, report: ScanReport) -> None:
        orphans = report.of_kind(FindingKind.ORPHAN)
        for finding in islice(orphans, LOGGED_FINDINGS_MAX):
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


def _no_lost_check(report: ScanReport) -> LostTracker:
    report.notes.append(LOST_NOT_IN_PARTS)
    return LostTracker(())


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
