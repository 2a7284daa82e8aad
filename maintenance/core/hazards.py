"""Hazards: messages that will run more than once, or hold a queue's place for nothing. Pure.

- `eta_beyond_visibility`: kombu's Redis transport redelivers an unacked message once it is older
  than `visibility_timeout`; a worker holds an ETA message unacked until its ETA, so a message
  whose ETA lies further out is redelivered (and will run) once more every timeout
  (celery/kombu#337).
- `duplicate`: one Celery task id in two messages (two publishes: two delivery tags) runs twice.
- `expired_waiting`: a message whose `expires` has passed; a worker that takes it only marks it
  REVOKED, so it occupies the queue for nothing.

Fed a chunk at a time by the scan. Duplicates are found with the task-id hashes seen so far
(`SeenHashes`: a set here, C-level set operations on the usual chunk and no per-message Python;
the scan gives one that moves to a file past 1.2 million, scan/seen_hashes.py, so that memory
stays flat in the number of messages). A scan of a moving list reads some
messages twice (producers push at the head, so indexes grow between two reads), and a message a
worker takes during the scan is seen queued and then unacked: neither is a duplicate, since both
sightings are one message (one delivery tag). The first is told apart by remembering the task ids
and tags of the last chunks of the list, the second by the unacked entry having been taken after
the scan started.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Iterable, Iterator, Sequence
from datetime import UTC, datetime
from itertools import compress, count
from operator import itemgetter
from typing import Any, Protocol

from maintenance.core.envelope import Quick, quick_message
from maintenance.core.models import Finding, FindingKind, Location, Message, Reason, Where

# Elements at the end of the list read so far whose ids are remembered, to recognise a message
# read twice (pushes between two reads shift it into the next chunk); whole chunks are kept, as
# many as cover this many elements, whatever size the reader chose for them.
RECENT_ELEMENTS = 4000
_TASK_ID, _TAG, _ETA, _EXPIRES = itemgetter(0), itemgetter(4), itemgetter(5), itemgetter(6)


def parse_time(value: Any, naive_as_utc: bool = True) -> float | None:
    """An ETA or `expires` header as unix seconds. Celery writes ISO 8601 with an offset; a
    naive time (one an app passed as a naive datetime) is read by workers in their own local
    zone, which we cannot know: UTC for a report, None (unknown) where a removal would rest on
    it (`naive_as_utc=False`)."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    if not isinstance(value, str) or not value:
        return None
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        return None
    if parsed.tzinfo is None:
        if not naive_as_utc:
            return None
        parsed = parsed.replace(tzinfo=UTC)
    return parsed.timestamp()


def redeliveries(eta: float, taken_at: float, visibility_timeout_s: float) -> int:
    """How many times a message held from `taken_at` until `eta` runs: one delivery, plus one
    more each time it is restored after `visibility_timeout_s`, every copy running at the ETA."""
    if visibility_timeout_s <= 0 or eta - taken_at <= visibility_timeout_s:
        return 1
    return 1 + math.floor((eta - taken_at) / visibility_timeout_s)


def _hours(seconds: float) -> str:
    if seconds >= 3600:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 60:.0f} min" if seconds >= 120 else f"{seconds:.0f} s"


class SeenHashes(Protocol):
    """The hashes of the task ids read so far (only ever added to, for one scan)."""

    def add_chunk(self, hashes: Sequence[int]) -> set[int]:
        """Add these; return those that were there before this call (usually none)."""
        ...

    def add(self, value: int) -> bool:
        """Add one; True when it was not there before."""
        ...


class MemoryHashes:
    """A set: the fastest, and what a scan of up to 1.2 million messages uses."""

    def __init__(self) -> None:
        self.hashes: set[int] = set()

    def add_chunk(self, hashes: Sequence[int]) -> set[int]:
        before = self.hashes.intersection(hashes)
        self.hashes.update(hashes)
        return before

    def add(self, value: int) -> bool:
        if value in self.hashes:
            return False
        self.hashes.add(value)
        return True

    def __len__(self) -> int:
        return len(self.hashes)


class HazardWatch:
    def __init__(
        self,
        *,
        now: float,
        visibility_timeout_s: float,
        scan_started_at: float,
        seen: SeenHashes | None = None,
    ):
        self.now = now
        self.visibility_timeout_s = visibility_timeout_s
        self.scan_started_at = scan_started_at
        self._seen: SeenHashes = MemoryHashes() if seen is None else seen
        # (task id -> delivery tag) of the last chunks of the list being read, newest last:
        # lists are read one after the other, so only the current one's are kept
        self._recent_key: str | None = None
        self._recent: deque[dict[str, Any]] = deque()
        self.duplicate_ids: set[str] = set()

    def queued(self, reads: list[Quick], place: Location, start: int) -> Iterator[Finding]:
        """One chunk of a queue list read the quick way; `start` is the index of its first."""
        recent = self._recent_for(place.key)
        ids = list(map(_TASK_ID, reads))
        hashes = list(map(hash, ids))
        before = self._seen.add_chunk(hashes)
        if before or len(set(hashes)) != len(hashes):  # usually: every id new, none twice
            yield from self._duplicates_in_chunk(reads, hashes, before, recent, place, start)
        recent.append(dict(zip(ids, map(_TAG, reads), strict=True)))
        _keep_recent(recent)
        for offset in compress(count(), map(_ETA, reads)):
            yield from self._eta(quick_message(reads[offset], place, start + offset))
        for offset in compress(count(), map(_EXPIRES, reads)):
            yield from self._expired(quick_message(reads[offset], place, start + offset))

    def message(self, msg: Message) -> Iterator[Finding]:
        """A message read the full way: queued (unusual), unacked, or held by a worker."""
        where = msg.location.where
        if not msg.task_id or where is Where.WORKER:  # a worker's copy is its unacked entry
            return
        if msg.eta is not None:
            yield from self._eta(msg)
        if msg.expires is not None:
            yield from self._expired(msg)
        tag = msg.location.delivery_tag
        if self._seen.add(hash(msg.task_id)):
            if where is Where.QUEUE:
                self._remember(msg.location.key, msg.task_id, tag)
            return
        if where is Where.QUEUE and self._read_twice(msg.location.key, msg.task_id, tag):
            return
        if where is Where.UNACKED and (msg.taken_at or 0.0) >= self.scan_started_at:
            return  # taken by a worker while the scan ran: the queued copy read was this one
        yield self._duplicate(msg)

    def _duplicates_in_chunk(
        self,
        reads: list[Quick],
        hashes: list[int],
        before: set[int],
        recent: deque[dict[str, Any]],
        place: Location,
        start: int,
    ) -> Iterator[Finding]:
        """The slow path, for a chunk with an id seen before it, or twice in it: which of its
        reads are copies (`before`: the hashes seen before this chunk)."""
        in_chunk: dict[str, Any] = {}
        for offset, (read, h) in enumerate(zip(reads, hashes, strict=True)):
            task_id, tag = read[0], read[4]
            if task_id in in_chunk:
                twice = in_chunk[task_id] == tag
            elif h in before:
                twice = any(chunk.get(task_id, _NOTHING) == tag for chunk in recent)
            else:
                in_chunk[task_id] = tag
                continue
            in_chunk.setdefault(task_id, tag)
            if not twice:
                yield self._duplicate(quick_message(read, place, start + offset))

    def _recent_for(self, key: str) -> deque[dict[str, Any]]:
        if key != self._recent_key:
            self._recent_key, self._recent = key, deque()
        return self._recent

    def _read_twice(self, key: str, task_id: str, tag: str) -> bool:
        if any(chunk.get(task_id, _NOTHING) == tag for chunk in self._recent_for(key)):
            return True
        self._remember(key, task_id, tag)
        return False

    def _remember(self, key: str, task_id: str, tag: str) -> None:
        recent = self._recent_for(key)
        if not recent:
            recent.append({})
        recent[-1][task_id] = tag

    def _duplicate(self, msg: Message) -> Finding:
        self.duplicate_ids.add(msg.task_id)
        return duplicate_finding(msg)

    def _eta(self, msg: Message) -> Iterator[Finding]:
        eta = parse_time(msg.eta)
        if eta is None:
            return
        held_from = msg.taken_at if msg.taken_at is not None else self.now
        runs = redeliveries(eta, held_from, self.visibility_timeout_s)
        if runs <= 1:
            return
        vt = self.visibility_timeout_s
        first = datetime.fromtimestamp(held_from + vt, UTC).isoformat(timespec="seconds")
        yield _finding(
            msg,
            FindingKind.ETA_BEYOND_VISIBILITY,
            Reason.ETA_TOO_FAR,
            f"ETA {_hours(eta - self.now)} away, beyond the visibility timeout ({_hours(vt)}): "
            f"redelivered from {first} every {_hours(vt)}, it runs about {runs} times",
        )

    def _expired(self, msg: Message) -> Iterator[Finding]:
        # cleanup removes what this reports: an expiry we cannot place in time is not one
        expires = parse_time(msg.expires, naive_as_utc=False)
        if expires is None or expires >= self.now:
            return
        yield _finding(
            msg,
            FindingKind.EXPIRED_WAITING,
            Reason.EXPIRED,
            f"expired {_hours(self.now - expires)} ago: a worker will only mark it REVOKED",
        )


_NOTHING = object()


def duplicate_finding(msg: Message) -> Finding:
    return _finding(
        msg,
        FindingKind.DUPLICATE,
        Reason.SAME_TASK_ID,
        "another copy of this task id (another delivery tag) is queued or unacked: the task "
        "runs once per copy",
    )


def _finding(msg: Message, kind: FindingKind, reason: Reason, detail: str) -> Finding:
    return Finding(
        kind=kind,
        reason=reason,
        task_id=msg.task_id,
        task_name=msg.task_name,
        db_id=msg.db_id,
        location=msg.location,
        detail=detail,
        row_kind=msg.row_kind,
        taken_at=msg.taken_at,
    )


def extra_copies(copies: Iterable[Finding], queue_order: list[str]) -> list[Finding]:
    """Of every copy of some task ids, the queued ones to remove: all but the copy a worker
    takes first, per task id. One message is one (queue, delivery tag): a copy with the kept
    one's is that same message (read twice, or taken while we read), while one publish routed to
    two queues makes two. An unacked copy is in a worker's hands: never removed."""
    by_id: dict[str, list[Finding]] = {}
    for copy in copies:
        by_id.setdefault(copy.task_id, []).append(copy)
    extras: list[Finding] = []
    for group in by_id.values():
        keep = first_taken(group, queue_order)
        if keep is None:
            continue
        messages = {(keep.location.queue, keep.location.delivery_tag)}
        for copy in group:
            message = (copy.location.queue, copy.location.delivery_tag)
            if copy.location.where is Where.QUEUE and message[1] and message not in messages:
                messages.add(message)
                extras.append(copy)
    return extras


def first_taken(copies: Iterable[Finding], queue_order: list[str]) -> Finding | None:
    """Of several copies of one task id, the one a worker takes first: an unacked one (already
    taken), else the first band of the first queue (in the configured order), and in a list the
    copy nearest the tail (the highest index: workers pop the tail)."""
    listed = list(copies)
    unacked = [c for c in listed if c.location.where is Where.UNACKED]
    if unacked:
        return unacked[0]
    queued = [c for c in listed if c.location.where is Where.QUEUE]
    if not queued:
        return None

    def rank(c: Finding) -> tuple[int, int, int]:
        loc = c.location
        order = queue_order.index(loc.queue) if loc.queue in queue_order else len(queue_order)
        return (order, loc.priority, -loc.index)

    return min(queued, key=rank)


def _keep_recent(recent: deque[dict[str, Any]]) -> None:
    """Drop the oldest chunks while the others still cover RECENT_ELEMENTS."""
    total = sum(map(len, recent))
    while len(recent) > 1 and total - len(recent[0]) >= RECENT_ELEMENTS:
        total -= len(recent.popleft())
