"""`Maintenance`: the one front door. Every operation the CLI, the Celery tasks and the Python
API offer is a method here, over adapters built once (`services.open_adapters`).

    with Maintenance.open(settings) as maintenance:
        report = maintenance.check()
        result = maintenance.cleanup(RunOptions(dry_run=True))
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from celery import Celery

from maintenance.actions.expiry import cleanup_expired
from maintenance.actions.fanout import (
    SCAN_MERGE,
    SCAN_PART,
    SCAN_WORKERS_PART,
    FanOutScan,
    PartSessions,
    merge_parts,
    run_part,
    run_workers_part,
)
from maintenance.actions.operator import OperatorActions, OperatorResult
from maintenance.actions.recorder import RunRecorder
from maintenance.actions.roll_forward import RollForward
from maintenance.actions.run import CleanupRun, RunOptions, RunResult
from maintenance.adapters.history import HistoryStore
from maintenance.adapters.run_lock import Holder
from maintenance.advisor import ChooseStatuses, ConfigAdvisor, StatusQuestion
from maintenance.alerts import maybe_alert
from maintenance.config import Settings
from maintenance.core.bindings import BindingTable
from maintenance.core.envelope import is_tombstone, parse_list_element, parse_unacked_entry
from maintenance.core.inventory import (
    Described,
    Inventory,
    PurgeSelection,
    name_matcher,
    operator_finding,
)
from maintenance.core.models import Finding, Location, Message, Outcome, Progress, RunMode, Where
from maintenance.core.report import ScanReport, place_name
from maintenance.core.where import Where as WhereFilter
from maintenance.errors import LockHeld
from maintenance.monitor.snapshot import SnapshotReader
from maintenance.scan.browse import browse
from maintenance.scan.reconciler import Reconciler
from maintenance.services import Adapters, open_adapters, open_history

__all__ = [
    "SCAN_MERGE",
    "SCAN_PART",
    "SCAN_WORKERS_PART",
    "ChooseStatuses",
    "ConfigAdvisor",
    "FanOutParts",
    "Holder",
    "Maintenance",
    "OperatorResult",
    "Outcome",
    "RunHistory",
    "RunMode",
    "RunOptions",
    "RunResult",
    "StatusQuestion",
]


class Maintenance:
    def __init__(
        self,
        adapters: Adapters,
        *,
        clock: Callable[[], float] = time.time,
        sleep: Callable[[float], None] = time.sleep,
    ):
        self.adapters = adapters
        self.settings = adapters.settings
        self.clock = clock
        self.sleep = sleep
        self.recorder = RunRecorder(
            self.settings,
            adapters.run_lock,
            adapters.history,
            RollForward(adapters.history, adapters.quarantine, adapters.results),
        )

    @classmethod
    def open(
        cls,
        settings: Settings,
        app: Celery | None = None,
        *,
        clock: Callable[[], float] = time.time,
        sleep: Callable[[float], None] = time.sleep,
    ) -> Maintenance:
        """Connect (Redis, the database) for these settings; `close` releases it all."""
        return cls(open_adapters(settings, app, clock=clock), clock=clock, sleep=sleep)

    def close(self) -> None:
        self.adapters.close()

    def __enter__(self) -> Maintenance:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- reading ------------------------------------------------------------------------------
    def scan(
        self,
        only: str | None = None,
        *,
        results: bool = True,
        progress: Progress | None = None,
        record_as: str | None = None,
    ) -> ScanReport:
        """Read-only for the app's state. A whole scan (no `only`, results read) given a
        `record_as` source saves the summary `monitor` shows: the one place that rule lives."""
        a = self.adapters
        report = Reconciler(
            self.settings, a.reader, a.db, a.workers, progress=progress, clock=self.clock
        ).scan(only=only, results=results)
        if record_as is not None and only is None and results:
            a.summaries.save_report(report, record_as)
        return report

    def queues(self, progress: Progress | None = None) -> tuple[Inventory, ScanReport]:
        """`task-cleanup queues`: the scan of the queues and `unacked` (no result keys), counting
        what sits there by task name; orphans are judged as `check` judges them."""
        a = self.adapters
        inventory = Inventory(self.clock())
        report = Reconciler(
            self.settings, a.reader, a.db, a.workers, progress=progress, clock=self.clock
        ).scan(results=False, inventory=inventory)
        return inventory, report

    def browse(
        self, task_name: str | None = None, *, sample: int | None = None
    ) -> Iterator[Described]:
        """`queues --task-name`: the messages waiting (and unacked), read one by one; nothing is
        looked up in the database. `sample`: only each band's last messages."""
        return browse(
            self.adapters.reader,
            BindingTable(self.settings.bindings),
            self.settings.scan.queues,
            name=name_matcher(task_name),
            sample=sample,
        )

    def purge_selection(
        self,
        task_name: str,
        *,
        queues: Sequence[str] = (),
        where: WhereFilter | None = None,
        older_than_s: float | None = None,
        sample: int = 10,
    ) -> PurgeSelection:
        """What `purge` would take: every message of these queues (default: the scanned ones)
        whose task name matches, whose arguments match `where`, and (`older_than_s`) whose row
        was last updated, or which a worker took, that long ago. Read-only."""
        selection = PurgeSelection()
        seen: set[tuple[str, str, str]] = set()
        now = self.clock()
        aged: list[Finding] = []
        for described in browse(
            self.adapters.reader,
            BindingTable(self.settings.bindings),
            tuple(queues) or self.settings.scan.queues,
            name=name_matcher(task_name),
        ):
            msg = described.msg
            loc = msg.location
            message = (loc.key, loc.delivery_tag, msg.task_id)
            if is_tombstone(msg) or not msg.task_id or message in seen:
                continue  # ours, unreadable, or a message a moving list showed twice
            seen.add(message)
            if where is not None and not where.matches(described.fields):
                continue
            finding = operator_finding(msg)
            if older_than_s is not None:
                if loc.where is Where.UNACKED:
                    if msg.taken_at is None or now - msg.taken_at < older_than_s:
                        continue
                elif msg.db_id and msg.row_kind == "task":
                    aged.append(finding)
                    continue
                else:
                    selection.skipped_unknown_age += 1
                    continue
            self._select(selection, finding, described, sample)
        if aged:
            old = self.adapters.stuck_rows.updated_before(
                {f.db_id for f in aged if f.db_id}, now - (older_than_s or 0.0)
            )
            for finding in aged:
                if finding.db_id in old:
                    self._select(selection, finding, None, 0)
        return selection

    @staticmethod
    def _select(
        selection: PurgeSelection, finding: Finding, described: Described | None, sample: int
    ) -> None:
        loc = finding.location
        selection.findings.append(finding)
        selection.by_place[place_name(loc.where, loc.queue, loc.priority)] += 1
        if described is not None and len(selection.sample) < sample:
            selection.sample.append(described)

    def purge(self, selection: PurgeSelection, *, started_by: str = "api") -> OperatorResult:
        """Quarantine what `purge_selection` chose, under the run lock, recorded as a run."""
        return self._operator().purge(selection.findings, started_by=started_by)

    def check(
        self, only: str | None = None, *, results: bool = True, progress: Progress | None = None
    ) -> ScanReport:
        """`task-cleanup check`: a scan whose summary `monitor` shows."""
        return self.scan(only, results=results, progress=progress, record_as="check")

    def monitor_scan(self) -> ScanReport:
        """The live view's `--scan`: saved for the view, alerted on per [alerts]."""
        report = self.scan(record_as="monitor")
        maybe_alert(self.settings, report, Outcome.OK)
        return report

    def snapshots(
        self, *, workers: bool = True, ping_timeout_s: float, workers_every_s: float
    ) -> SnapshotReader:
        """The monitor's cheap reads; the worker ping waits at most `ping_timeout_s`."""
        a = self.adapters
        control = a.workers.with_timeout(min(ping_timeout_s, self.settings.scan.inspect_timeout_s))
        return SnapshotReader(
            a.live_state,
            self.settings.scan.queues,
            control if workers else None,
            a.history_totals(),
            workers_every_s=workers_every_s,
            clock=self.clock,
        )

    @property
    def visibility_timeout_s(self) -> float:
        """The Redis transport's: an unacked message older than this is redelivered."""
        return self.adapters.layout.visibility_timeout_s

    def active_rows(self) -> Iterator[dict[str, Any]]:
        """Rows in a "still to run" status, streamed from the database."""
        return self.adapters.db.iter_active_rows()

    def redis_messages(self) -> Iterator[Message]:
        """Every message waiting in the scanned queues, then every unacked one, parsed."""
        a = self.adapters
        bindings = BindingTable(self.settings.bindings)
        for queue in self.settings.scan.queues:
            for band, key in a.layout.queue_keys(queue):
                for start, chunk in a.reader.iter_list(key):
                    for offset, raw in enumerate(chunk):
                        loc = Location(
                            Where.QUEUE, queue=queue, priority=band, key=key, index=start + offset
                        )
                        yield parse_list_element(raw, loc, bindings)
        for entries in a.reader.iter_unacked():
            for entry in entries:
                loc = Location(Where.UNACKED, key=a.layout.unacked, delivery_tag=entry.delivery_tag)
                yield parse_unacked_entry(entry.raw, loc, bindings)

    def lock_holder(self) -> Holder | None:
        """Who holds the run lock now, None when it is free."""
        return self.adapters.run_lock.holder()

    def break_lock(self) -> Holder | None:
        """Break the run lock if its holder is provably gone (its process no longer exists on
        this host); returns the holder it broke. Raises LockHeld when that cannot be proven."""
        holder = self.adapters.run_lock.holder()
        if holder is None:
            return None
        if not holder.provably_gone():
            raise LockHeld(
                "not breaking the run lock: its holder may be alive "
                f"({holder.describe(self.clock())}); a dead holder's lock expires by itself "
                f"within cleanup.lock_lease_s = {self.settings.cleanup.lock_lease_s:.0f}s"
            )
        if not self.adapters.run_lock.break_lock(holder):
            raise LockHeld("not breaking the run lock: it changed hands meanwhile")
        return holder

    # -- acting: every operation runs under the run recorder ----------------------------------
    def cleanup(
        self, options: RunOptions, progress: Progress | None = None, *, fan_out: bool = False
    ) -> RunResult:
        """Scan, grace re-check, plan, confirm, apply; a dry run stops after the plan.
        `fan_out`: the scan is split into parts maintenance workers run (actions/fanout.py);
        only a recorded run can, since every part verifies the run's lease."""
        fan_out_scan = None
        if fan_out and not options.dry_run:
            fan_out_scan = FanOutScan(
                self.adapters, should_stop=options.should_stop, clock=self.clock
            )
        return self._cleanup_run(progress, fan_out_scan).run(options)

    def fan_out_scan(self, *, results: bool = True, record_as: str | None = None) -> ScanReport:
        """The fan-out scan alone, for a caller that holds the run lock under a named run."""
        return FanOutScan(self.adapters, clock=self.clock, sleep=self.sleep).scan(
            results, record_as
        )

    def expire(self, options: RunOptions) -> dict[str, Any]:
        """Stale results and lost rows, then the quarantine past retention and reply lists."""
        return cleanup_expired(self.adapters, self._cleanup_run(None), options)

    def revoke(
        self, task_ids: Sequence[str], *, force: bool = False, started_by: str = "api"
    ) -> OperatorResult:
        return self._operator().revoke(task_ids, force=force, started_by=started_by)

    def restore(
        self, task_ids: Sequence[str] | None = None, *, started_by: str = "api"
    ) -> OperatorResult:
        """Put quarantined messages back (all of them when `task_ids` is None)."""
        return self._operator().restore(task_ids, started_by=started_by)

    # -----------------------------------------------------------------------------------------
    def _cleanup_run(
        self, progress: Progress | None, fan_out: FanOutScan | None = None
    ) -> CleanupRun:
        def scan(results: bool, record_as: str | None) -> ScanReport:
            if fan_out is not None:
                return fan_out.scan(results, record_as)
            return self.scan(results=results, progress=progress, record_as=record_as)

        return CleanupRun(
            self.adapters,
            scan,
            self.recorder,
            progress=progress,
            clock=self.clock,
            sleep=self.sleep,
        )

    def _operator(self) -> OperatorActions:
        return OperatorActions(
            self.adapters,
            lambda task_id: self.scan(task_id, results=False),
            self.recorder,
            clock=self.clock,
        )


class FanOutParts:
    """The fan-out scan's parts and its merge as a maintenance worker runs them, each under the
    run's lease (actions/fanout.py); a run's parts in one process share its connections."""

    def __init__(self, settings: Settings, app: Celery):
        self.sessions = PartSessions(lambda: open_adapters(settings, app))

    def workers_part(self, run_id: str) -> dict[str, Any]:
        with self.sessions.of(run_id) as session:
            return run_workers_part(session, run_id)

    def part(
        self, run_id: str, part: dict[str, Any], held_ids: list[str], ttl_s: float
    ) -> dict[str, Any]:
        with self.sessions.of(run_id) as session:
            return run_part(session, run_id, part, held_ids, ttl_s)

    def merge(
        self,
        parts: list[dict[str, Any]],
        run_id: str,
        view: dict[str, Any],
        record_as: str | None,
        ttl_s: float,
    ) -> dict[str, Any]:
        """The chord callback; the run's last step in this process: its session is closed."""
        with self.sessions.of(run_id, last=True) as session:
            return merge_parts(session, parts, run_id, view, record_as, ttl_s)


class RunHistory:
    """The history alone (`history`, `init-db`): it needs the database, not Redis."""

    def __init__(self, store: HistoryStore, close: Callable[[], None]):
        self.store = store
        self._close = close

    @classmethod
    def open(cls, settings: Settings) -> RunHistory:
        return cls(*open_history(settings))

    def init(self) -> None:
        self.store.init()

    def recent_runs(self, limit: int = 20) -> list[dict[str, Any]]:
        return self.store.recent_runs(limit)

    def run_actions(self, run_id: str) -> list[dict[str, Any]]:
        return self.store.actions_of(run_id)

    def close(self) -> None:
        self._close()

    def __enter__(self) -> RunHistory:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
