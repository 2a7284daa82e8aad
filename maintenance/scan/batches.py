"""Look-up batches of the scan: collect managed messages, look their rows up on a helper thread,
judge each batch when its look-up completes.

Database look-ups run on the helper thread while the main thread reads and parses the next chunk,
so Redis round trips, parsing and queries overlap. At most two batches are in flight, which keeps
memory bounded by the batch size rather than the queue length.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable
from collections.abc import Set as AbstractSet
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import replace
from itertools import compress, count, repeat
from operator import eq, itemgetter
from typing import cast

from maintenance.core.bindings import BindingTable
from maintenance.core.diff import LostCheck, Verdicts, judge_message
from maintenance.core.envelope import (
    Quick,
    is_tombstone,
    parse_list_element,
    quick_message,
    quick_read,
)
from maintenance.core.hazards import HazardWatch
from maintenance.core.inventory import Inventory
from maintenance.core.models import Finding, FindingKind, Location, Message, Where
from maintenance.core.report import ScanReport, place_name

MAX_IN_FLIGHT = 2
# Consecutive queued messages read the quick way: (place, list index of the first, what
# quick_read said of each, whether every bound id among them was looked up). Only the few that
# turn out not fine become a Message, for a finding.
Segment = tuple[Location, int, list[Quick], bool]
LookUp = Callable[[AbstractSet[str], AbstractSet[str]], Verdicts]  # (task ids, sub-task ids)
# A look-up batch in flight: its items, the task and sub-task ids looked up, the look-up.
InFlight = tuple[list[Message | Segment], set[str], set[str], Future[Verdicts]]
_TASK_ID, _ROW_KIND, _DB_ID = itemgetter(0), itemgetter(1), itemgetter(2)


class LookupBatcher:
    """Collects managed messages into look-up batches and judges them as look-ups complete."""

    def __init__(
        self,
        verdicts: LookUp,
        bindings: BindingTable,
        report: ScanReport,
        pool: ThreadPoolExecutor,
        lost: LostCheck,
        only: str | None,
        *,
        batch_size: int,
        clock: Callable[[], float],
        hazards: HazardWatch | None = None,
        inventory: Inventory | None = None,
    ):
        self.verdicts = verdicts  # runs on the `pool` thread
        self.bindings = bindings
        self.report = report
        self.pool = pool
        self.lost = lost
        lost.run_on(pool)  # crossing off, if it leaves the process, rides the look-up thread
        self.only = only
        self.batch_size = batch_size
        self.clock = clock
        self.hazards = hazards
        self.inventory = inventory
        # What live workers hold, and the task ids of it also found in Redis. Until the
        # workers have answered (None), the task ids read so far are kept to be matched then.
        self.held: tuple[Message, ...] | None = None
        self.held_ids: set[str] | None = None
        self.seen_held: set[str] = set()
        self._seen_early: set[str] = set()
        self.batch: list[Message | Segment] = []
        self.managed = 0  # managed messages in `batch`, and their ids to look up
        self.task_ids: set[str] = set()
        self.sub_ids: set[str] = set()
        self.in_flight: deque[InFlight] = deque()

    def add(self, msg: Message) -> None:
        if is_tombstone(msg):  # one a worker took or holds: it discards it, nothing to judge
            return
        self.lost.saw(msg)
        if msg.location.where is not Where.WORKER:
            self._saw_task_ids((msg.task_id,))
        if self.only is not None:
            if self.only not in (msg.task_id, msg.db_id):
                return
            self.report.sightings.append(msg)
        loc = msg.location
        stats = self.report.place(place_name(loc.where, loc.queue, loc.priority))
        stats.messages += 1
        if self.hazards is not None:
            self.report.findings.extend(self.hazards.message(msg))
        if self.inventory is not None:
            self.inventory.message(msg)
        if msg.problem is None and msg.db_id is None:
            stats.unmanaged += 1
            if self.only is not None:
                self.report.notes.append(f"unmanaged task {msg.task_name} at {loc.describe()}")
            return
        stats.managed += 1
        self._append(msg, msg.row_kind, msg.db_id)

    def add_queued(self, chunk: list[bytes], start: int, place: Location) -> None:
        """One chunk of a queue list, `start` being the list index of its first element.

        Ordinary messages take the quick path: no Message or Location per message, which would
        cost more than reading them. Anything unusual, and every message of a `--task-id` scan,
        goes through `add` exactly as before.
        """
        if self.only is not None:
            for offset, raw in enumerate(chunk):
                self._add_full(raw, place, start + offset)
            return
        bindings = self.bindings
        reads = [quick_read(raw, bindings) for raw in chunk]
        if None in reads:  # some need the full reading: keep them in order with the rest
            for offset, (raw, read) in enumerate(zip(chunk, reads, strict=True)):
                if read is None:
                    self._add_full(raw, place, start + offset)
                else:
                    self._add_reads([read], start + offset, place)
        else:
            self._add_reads(cast("list[Quick]", reads), start, place)  # no None among them

    def _add_reads(self, reads: list[Quick], start: int, place: Location) -> None:
        """Consecutive quickly-read messages, a chunk at a time: per-message calls add up, so
        the usual chunk (every bound id of one row kind) is counted and collected in C loops."""
        self.lost.saw_many(reads)
        if self.held_ids is None or self.held_ids:
            self._saw_task_ids(map(_TASK_ID, reads))
        db_ids = list(map(_DB_ID, reads))
        managed = len(db_ids) - db_ids.count(None)  # unmanaged: no id
        stats = self.report.place(place_name(place.where, place.queue, place.priority))
        stats.messages += len(reads)
        stats.managed += managed
        stats.unmanaged += len(reads) - managed
        if self.hazards is not None:
            self.report.findings.extend(self.hazards.queued(reads, place, start))
        if self.inventory is not None:
            self.inventory.queued(reads, place, start)
        if not managed:
            return
        kinds = list(map(_ROW_KIND, reads))
        looked_up = 0
        for row_kind, ids in (("task", self.task_ids), ("sub_task", self.sub_ids)):
            if row_kind in kinds:  # the non-empty ids of this kind (an empty id is not an id)
                of_kind = list(filter(None, compress(db_ids, map(eq, kinds, repeat(row_kind)))))
                ids.update(of_kind)
                looked_up += len(of_kind)
        self.batch.append((place, start, reads, looked_up == managed))
        self._grew(managed)

    def know_held(self, held: tuple[Message, ...]) -> None:
        """The workers answered: match what was read before they did."""
        self.held = held
        self.held_ids = {m.task_id for m in held if m.task_id}
        self.seen_held |= self.held_ids & self._seen_early
        self._seen_early = set()

    def _saw_task_ids(self, task_ids: Iterable[str]) -> None:
        if self.held_ids is None:
            self._seen_early.update(task_ids)
        elif self.held_ids:
            self.seen_held.update(t for t in task_ids if t in self.held_ids)

    def _add_full(self, raw: bytes, place: Location, index: int) -> None:
        """A message read the full way; a tombstone of ours is set aside as a leftover."""
        msg = parse_list_element(raw, replace(place, index=index), self.bindings)
        if is_tombstone(msg):
            self.report.tombstones.setdefault(place.key, set()).add(raw)
            self.report.tombstones_seen += 1
            return
        self.add(msg)

    def _append(self, msg: Message, row_kind: str, db_id: str | None) -> None:
        self.batch.append(msg)
        if db_id and row_kind == "task":
            self.task_ids.add(db_id)
        elif db_id and row_kind == "sub_task":
            self.sub_ids.add(db_id)
        self._grew(1)

    def _grew(self, managed: int) -> None:
        self.managed += managed
        if self.managed >= self.batch_size:
            self._submit()

    def _submit(self) -> None:
        batch, self.batch, self.managed = self.batch, [], 0
        task_ids, sub_ids, self.task_ids, self.sub_ids = self.task_ids, self.sub_ids, set(), set()
        future = self.pool.submit(self.verdicts, task_ids, sub_ids)
        self.in_flight.append((batch, task_ids, sub_ids, future))
        while len(self.in_flight) > MAX_IN_FLIGHT:
            self._judge(*self.in_flight.popleft())

    def flush(self) -> None:
        if self.batch:
            self._submit()
        while self.in_flight:
            self._judge(*self.in_flight.popleft())

    def _judge(
        self,
        batch: Iterable[Message | Segment],
        task_ids: AbstractSet[str],
        sub_ids: AbstractSet[str],
        future: Future[Verdicts],
    ) -> None:
        """Judge a batch whose look-up of `task_ids` and `sub_ids` is `future`.

        A segment whose bound ids were all looked up visits only the reads whose id is one the
        look-up did not find fine (for either row kind), found by C-level set look-ups: asking
        `fine` of each of a million messages cost more than the look-ups. Those few are asked
        `fine` as before, so the answers are the same; any other segment is asked per read."""
        verdicts = future.result()  # re-raises DatabaseUnavailable: no verdict on this batch
        now = self.clock()
        fine = verdicts.fine
        suspects = verdicts.not_fine("task", task_ids) | verdicts.not_fine("sub_task", sub_ids)
        for item in batch:
            if not isinstance(item, tuple):
                msg = item
                ok = msg.problem is None and msg.db_id is not None and fine(msg.row_kind, msg.db_id)
                self._verdict(msg, None if ok else judge_message(msg, verdicts.lookup), now)
                continue
            place, start, reads, all_looked_up = item
            offsets: Iterable[int] = range(len(reads))
            if all_looked_up:
                offsets = compress(count(), map(suspects.__contains__, map(_DB_ID, reads)))
            for offset in offsets:
                read = reads[offset]
                if read[2] is None or fine(read[1], read[2]):  # unmanaged, or its row is live
                    continue
                msg = quick_message(read, place, start + offset)
                self._verdict(msg, judge_message(msg, verdicts.lookup), now)

    def _verdict(self, msg: Message, finding: Finding | None, now: float) -> None:
        if finding is None:
            if self.only is not None:
                self.report.notes.append(f"present at {msg.location.describe()}: row ok")
            return
        if msg.taken_at is not None:
            finding = replace(finding, age_s=max(0.0, now - msg.taken_at), taken_at=msg.taken_at)
        self._count(finding)
        self.report.findings.append(finding)

    def _count(self, finding: Finding) -> None:
        loc = finding.location
        stats = self.report.place(place_name(loc.where, loc.queue, loc.priority))
        if finding.kind is FindingKind.ORPHAN:
            stats.orphans += 1
        elif finding.kind is FindingKind.UNREADABLE:
            stats.unreadable += 1
