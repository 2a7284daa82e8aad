"""The fan-out scan's Celery half: the parts as maintenance workers run them, the chord callback
that merges them, and the run's side that dispatches them and waits (issue 12).

    run (holds the run lock)  ->  workers part (the live-worker view, first: the Redis parts need
                                  its task ids to tell which held tasks they saw)
                              ->  chord(queue parts, unacked, result shards) -> merge callback
                              ->  the merged report, planned and applied by the run as usual

The run keeps its lease renewed itself (its lease thread); every part and the callback verify,
before and while they work, that the lock is still held by the run id they were given, and stop
with an error otherwise. A part never raises: it answers `ok: false` naming its error, so the
callback can name every failed part; the run then fails (nothing is planned or applied).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Collection, Iterable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import orjson
import structlog
from celery import chord
from celery.result import AsyncResult

from maintenance.adapters.redis_layout import OwnKeys
from maintenance.adapters.redis_reader import broker_errors
from maintenance.adapters.workers import WorkerView
from maintenance.core.bindings import BindingTable
from maintenance.core.models import Finding, Location, Message, Where
from maintenance.core.report import ScanReport
from maintenance.errors import UnavailableError
from maintenance.scan import fanout
from maintenance.scan.reconciler import Reconciler
from maintenance.services import Adapters

log = structlog.get_logger(__name__)
SCAN_PART = "maintenance.scan_part"
SCAN_WORKERS_PART = "maintenance.scan_workers_part"
SCAN_MERGE = "maintenance.scan_merge"
PART_TASKS = (SCAN_PART, SCAN_WORKERS_PART, SCAN_MERGE)
INLINE_FINDINGS = 200  # more findings than this go to a Redis list, the answer names it
STORE_CHUNK = 1000
LEASE_CHECK_S = 1.0  # a part re-reads the lock holder at most this often while it works
POLL_S = 0.05
IDLE_CLOSE_S = 30.0  # a worker process closes a run's connections this long after its last part


class FanOutFailed(UnavailableError):
    """A part failed, or never ran: the merged report would be incomplete, so there is none."""


class LeaseLost(UnavailableError):
    """The run lock is no longer held by the run a part works for."""


class LeaseGuard:
    """Is the run lock still held by `run_id`? Checked before a part works and, through the
    scan's progress callback, every `LEASE_CHECK_S` while it works."""

    def __init__(self, adapters: Adapters, run_id: str, clock: Callable[[], float] = time.time):
        self.run_lock = adapters.run_lock
        self.run_id = run_id
        self.clock = clock
        self._checked_at = 0.0

    def check(self) -> None:
        holder = self.run_lock.holder()
        if holder is None or holder.run_id != self.run_id:
            held = "nobody" if holder is None else f"run {holder.run_id or '?'}"
            raise LeaseLost(
                f"the run lock is no longer held by run {self.run_id} ({held} holds it)"
            )
        self._checked_at = self.clock()

    def progress(self, _phase: str, _done: int, _total: int | None) -> None:
        if self.clock() - self._checked_at >= LEASE_CHECK_S:
            self.check()


class PartFindingsList:
    """A part's findings, when many: a Redis list under our own prefix, expiring with the run."""

    def __init__(self, adapters: Adapters, run_id: str, ttl_s: float):
        self.client = adapters.summaries.client  # the broker, where our own keys live
        self.keys = OwnKeys(adapters.settings.cleanup.key_prefix)
        self.run_id = run_id
        self.ttl_s = int(max(60.0, ttl_s))

    def key(self, part: str) -> str:
        return self.keys.key("fanout", self.run_id, part)

    def put(self, part: str, findings: Collection[Finding]) -> dict[str, Any]:
        """Read once, in order (the report's store may hold them in a file)."""
        if len(findings) <= INLINE_FINDINGS:
            return {"inline": [fanout.finding_doc(f) for f in findings]}
        key = self.key(part)
        with broker_errors("storing a fan-out part's findings"):
            self.client.delete(key)
            chunk: list[bytes] = []
            for finding in findings:
                chunk.append(orjson.dumps(fanout.finding_doc(finding)))
                if len(chunk) == STORE_CHUNK:
                    self.client.rpush(key, *chunk)
                    chunk = []
            if chunk:
                self.client.rpush(key, *chunk)
            self.client.expire(key, self.ttl_s)
        return {"key": key, "count": len(findings)}

    def load(self, ref: dict[str, Any]) -> Iterator[Finding]:
        if "inline" in ref:
            yield from (fanout.finding_from(doc) for doc in ref["inline"])
            return
        key, count = ref["key"], int(ref["count"])
        for start in range(0, count, STORE_CHUNK):
            with broker_errors("reading a fan-out part's findings"):
                raws = self.client.lrange(key, start, start + STORE_CHUNK - 1)
            yield from (fanout.finding_from(orjson.loads(raw)) for raw in raws)
        if count and not raws:
            raise FanOutFailed(f"the findings of a fan-out part expired before the merge ({key})")

    def drop(self, parts: Iterable[dict[str, Any]]) -> None:
        keys = [p["findings"]["key"] for p in parts if "key" in p.get("findings", {})]
        if keys:
            with broker_errors("deleting the fan-out parts' findings"):
                self.client.delete(*keys)


class PartSession:
    """A run's connections in one worker process, and whether its schema check was done."""

    def __init__(self, adapters: Adapters, run_id: str):
        self.adapters = adapters
        self.run_id = run_id
        self.validated = False  # the database adapter reflected the tables for this run
        self.broken = False  # a part failed on it: not reused


class PartSessions:
    """Per worker process: the session of the run whose parts it runs, reused by that run's next
    parts (opening the adapters and reflecting the schema cost most of a small part). Closed when
    another run's part comes, after the merge, after a failure, or `IDLE_CLOSE_S` after the last
    part, so that a worker holds nothing between two runs. One part at a time per process."""

    def __init__(self, open_adapters: Callable[[], Adapters]):
        self._open = open_adapters
        self._lock = threading.Lock()
        self._session: PartSession | None = None
        self._timer: threading.Timer | None = None

    @contextmanager
    def of(self, run_id: str, *, last: bool = False) -> Iterator[PartSession]:
        with self._lock:
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None
            if self._session is not None and self._session.run_id != run_id:
                self._close()
            if self._session is None:
                self._session = PartSession(self._open(), run_id)
            try:
                yield self._session
            finally:
                if last or self._session.broken:
                    self._close()
                else:
                    self._timer = threading.Timer(IDLE_CLOSE_S, self._close_idle)
                    # It only waits and, when idle, closes: a fork meanwhile copies nothing it
                    # holds in use (the scan forks its result reader only while no part waits).
                    self._timer.name = "fan-out-session-close (fork-safe)"
                    self._timer.daemon = True
                    self._timer.start()

    def _close_idle(self) -> None:
        with self._lock:
            self._close()

    def _close(self) -> None:
        if self._session is not None:
            self._session.adapters.close()
            self._session = None


def _held_ids_view(task_ids: Iterable[str]) -> WorkerView:
    """Only the held task ids, which a Redis part needs to say which of them it saw."""
    where = Location(Where.WORKER)
    return WorkerView((), tuple(Message(t, "", where) for t in task_ids))


# -- on a maintenance worker ------------------------------------------------------------------
def run_workers_part(session: PartSession, run_id: str) -> dict[str, Any]:
    """The live-worker view: who is alive and what they hold (our own fan-out parts left out:
    they exist only because of this scan, which a single-process scan would not see)."""
    adapters = session.adapters
    try:
        LeaseGuard(adapters, run_id).check()
        if not adapters.settings.scan.inspect_workers:
            return {"part": fanout.WORKERS_PART, "ok": True, "inspected": False}
        view = adapters.workers.snapshot(BindingTable(adapters.settings.bindings))
        held = [m for m in view.messages if m.task_name not in PART_TASKS]
        return {
            "part": fanout.WORKERS_PART,
            "ok": True,
            "inspected": True,
            "workers": list(view.workers),
            "held": [fanout.message_doc(m) for m in held],
        }
    except Exception as exc:  # answered, never raised: the merge names the failed part
        log.error("fan-out part failed", part=fanout.WORKERS_PART, error=str(exc))
        session.broken = True
        return fanout.part_failed(fanout.WORKERS_PART, exc)


def run_part(
    session: PartSession,
    run_id: str,
    part_doc: dict[str, Any],
    held_ids: Sequence[str],
    ttl_s: float,
    clock: Callable[[], float] = time.time,
) -> dict[str, Any]:
    """One Redis part: its queue, the unacked store or a result shard, under the run's lease."""
    part = fanout.Part.from_dict(part_doc)
    adapters = session.adapters
    try:
        guard = LeaseGuard(adapters, run_id, clock)
        guard.check()
        reconciler = Reconciler(
            adapters.settings,
            adapters.reader,
            adapters.db,
            None,
            progress=guard.progress,
            clock=clock,
        )
        report = reconciler.scan(
            results=part.results_shard is not None,
            queues=part.queues,
            results_shard=part.results_shard,
            unacked=part.unacked,
            workers=False,
            held=_held_ids_view(held_ids),
            judge_held=False,
            lost=False,
            skip_tasks=frozenset(PART_TASKS),
            validate=not session.validated,
        )
        session.validated = True
        try:
            guard.check()  # what it found counts only if the run still held the lock at the end
            stored = PartFindingsList(adapters, run_id, ttl_s).put(part.name, report.findings)
            return fanout.part_result(part.name, report, reconciler.seen_held, stored)
        finally:
            report.close()
    except Exception as exc:  # answered, never raised: the merge names the failed part
        log.error("fan-out part failed", part=part.name, error=str(exc))
        session.broken = True
        return fanout.part_failed(part.name, exc)


def merge_parts(
    session: PartSession,
    parts: Sequence[dict[str, Any]],
    run_id: str,
    view: dict[str, Any],
    record_as: str | None,
    ttl_s: float,
    clock: Callable[[], float] = time.time,
) -> dict[str, Any]:
    """The chord callback: refuse when a part failed or the lease is lost; else judge what
    workers hold that no part saw, merge, and save the summary as a normal scan would."""
    failed = fanout.failures([view, *parts])
    if failed:
        return {"ok": False, "failed": failed}
    adapters = session.adapters
    try:
        guard = LeaseGuard(adapters, run_id, clock)
        guard.check()
        held = _judge_held(session, view, parts, guard, clock)
        store = PartFindingsList(adapters, run_id, ttl_s)
        try:
            stored = store.put(fanout.HELD_PART, held.findings)
            held_doc = fanout.part_result(fanout.HELD_PART, held, (), stored)
        finally:
            held.close()
        ordered = _in_report_order([*parts, held_doc])
        report = fanout.merge(ordered, store.load)
        try:
            guard.check()
            if record_as is not None:
                adapters.summaries.save_report(report, record_as)
        finally:
            report.close()
        return {"ok": True, "parts": ordered}
    except Exception as exc:
        log.error("fan-out merge failed", error=str(exc))
        session.broken = True
        return {"ok": False, "failed": [f"merge ({type(exc).__name__}: {exc})"]}


def _judge_held(
    session: PartSession,
    view: dict[str, Any],
    parts: Sequence[dict[str, Any]],
    guard: LeaseGuard,
    clock: Callable[[], float],
) -> ScanReport:
    """What workers hold and no Redis part saw, judged at the worker: the single scan's rule."""
    seen = {task_id for p in parts for task_id in p["seen_held"]}
    held = None
    if view.get("inspected"):
        messages = tuple(fanout.message_from(m) for m in view["held"])
        held = WorkerView(tuple(view["workers"]), messages)
    a = session.adapters
    reconciler = Reconciler(a.settings, a.reader, a.db, None, progress=guard.progress, clock=clock)
    report = reconciler.scan(
        results=False,
        queues=(),
        unacked=False,
        workers=False,
        held=held,
        seen_held=seen,
        judge_held=True,
        lost=False,
        validate=not session.validated,
    )
    session.validated = True
    if held is not None and not held.workers:
        report.workers_inspected = True  # asked, and nobody answered: as the single scan says
    return report


def _in_report_order(parts: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Queues, unacked, what workers hold, result keys: the single scan's order."""
    rank = {"queue": 0, "unacked": 1, fanout.HELD_PART: 2, "results": 3}
    return sorted(parts, key=lambda p: rank.get(p["part"].split(":")[0], 4))


# -- on the run's side --------------------------------------------------------------------------
class FanOutScan:
    """Dispatch the parts, wait for the merge, rebuild the one report the run plans from."""

    def __init__(
        self,
        adapters: Adapters,
        *,
        should_stop: Callable[[], bool] = lambda: False,
        clock: Callable[[], float] = time.time,
        sleep: Callable[[float], None] = time.sleep,
    ):
        self.adapters = adapters
        self.settings = adapters.settings
        self.should_stop = should_stop
        self.clock = clock
        self.sleep = sleep

    def scan(self, results: bool, record_as: str | None) -> ScanReport:
        """Under the run lock (its holder names the run every part verifies)."""
        holder = self.adapters.run_lock.holder()
        if holder is None or not holder.run_id:
            raise FanOutFailed("a fan-out scan runs under a recorded run's lock; none is held")
        run_id, cfg = holder.run_id, self.settings
        ttl_s = float(cfg.schedule.time_limit_s)
        queue = cfg.schedule.queue
        app = self.adapters.app
        started = self.clock()
        guard = LeaseGuard(self.adapters, run_id, self.clock)
        view_result = app.signature(SCAN_WORKERS_PART, args=(run_id,), queue=queue).apply_async()
        view = self._wait({view_result.id: fanout.WORKERS_PART}, view_result, started, guard)
        if not view["ok"]:
            raise FanOutFailed(f"fan-out part failed: {', '.join(fanout.failures([view]))}")
        held_ids = sorted({m["task_id"] for m in view.get("held", ()) if m["task_id"]})
        parts = fanout.split(
            cfg.scan.queues,
            unacked=True,
            results=results,
            task_keyprefix=self.adapters.reader.result_layout.task_keyprefix,
            shards=cfg.scan.fan_out_result_shards,
        )
        header = [
            app.signature(SCAN_PART, args=(run_id, p.as_dict(), held_ids, ttl_s), queue=queue)
            for p in parts
        ]
        body = app.signature(SCAN_MERGE, args=(run_id, view, record_as, ttl_s), queue=queue)
        merged = chord(header, app=app)(body)
        names = {
            child.id: part.name
            for child, part in zip(
                merged.parent.results if merged.parent else (), parts, strict=False
            )
        }
        doc = self._wait({merged.id: "merge", **names}, merged, started, guard, pending_ok=True)
        if not doc["ok"]:
            raise FanOutFailed(f"fan-out part failed: {', '.join(doc['failed'])}")
        store = PartFindingsList(self.adapters, run_id, ttl_s)
        report = fanout.merge(doc["parts"], store.load)
        store.drop(doc["parts"])
        log.info("fan-out scan merged", parts=len(parts) + 1, **report.counts())
        return report

    def _wait(
        self,
        names: dict[str, str],
        result: AsyncResult,
        started: float,
        guard: LeaseGuard,
        pending_ok: bool = False,
    ) -> dict[str, Any]:
        """Poll until `result` is ready: a part no worker takes within the start timeout, a run
        told to stop or whose lease is lost, or a part killed mid-way fails the run, naming the
        part."""
        start_timeout_s = self.settings.scan.fan_out_start_timeout_s
        deadline = started + self.settings.schedule.soft_time_limit_s
        while not result.ready():
            now = self.clock()
            if not pending_ok and result.state == "PENDING" and now - started > start_timeout_s:
                raise FanOutFailed(
                    f"no maintenance worker took fan-out part {names[result.id]!r} within "
                    f"{start_timeout_s:.0f}s: the run itself holds one worker slot, so a fan-out "
                    "scan needs another free one on the maintenance queue"
                )
            if self.should_stop() or now > deadline:
                raise FanOutFailed(
                    "fan-out scan stopped: the run was told to stop (time limit or lease)"
                )
            guard.progress("fan-out", 0, None)  # raises LeaseLost
            self.sleep(POLL_S)
        if result.failed():  # killed, or a chord dependency raised: name whom
            error = str(result.result)
            part = next((name for tid, name in names.items() if tid in error), names[result.id])
            raise FanOutFailed(f"fan-out part failed: {part} ({error})")
        # `.result` reads the stored answer; `.get()` would also subscribe to the backend.
        doc: dict[str, Any] = result.result
        return doc
