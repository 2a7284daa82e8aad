"""A scan's findings in bounded memory: the first ones in memory, the rest in a temporary file.

A Redis whose app never expires its results can hold a million stale result keys, each one a
finding. As a list of `Finding` objects they took most of a gigabyte; here they are kept as
plain tuples, batches of which are pickled to an anonymous temporary file once more than
`memory_limit` are held, and iteration reads them back in order. What the report and its
summary need without iterating (counts by kind and reason, task names, the first findings of
each kind) is kept up to date as findings are added.

The file is made by `tempfile.TemporaryFile` in the system temporary directory: it has no
name, so the OS deletes it even when the process is killed; `close` (or dropping the store)
releases it.
"""

from __future__ import annotations

import pickle
import tempfile
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from itertools import islice
from typing import IO, Any, overload

from maintenance.core.models import Finding, FindingKind, Location, Reason, Where
from maintenance.errors import ScratchUnavailable

MEMORY_LIMIT = 20_000  # findings held in memory per store; the rest go to the temporary file
BATCH_SIZE = 4_000  # findings per pickled batch: one write, one read each
FIRSTS_KEPT = 20  # the first findings kept per kind: the summary's top findings come from these

# A stale result key in its compact form (what the result scan sends from its child):
# (reason value, task id, key, result status, age in seconds or None).
StaleRow = tuple[str, str, str, str, float | None]
_Record = Finding | tuple[Any, ...]  # a Finding, a StaleRow, or a Finding as a tuple (spilled)

_KINDS = {kind.value: kind for kind in FindingKind}
_REASONS = {reason.value: reason for reason in Reason}
_WHERES = {where.value: where for where in Where}
_STALE = FindingKind.STALE_RESULT
_NO_TTL_DETAIL = "key has no expiry"


def stale_row(reason: Reason, task_id: str, key: str, status: str, age_s: float | None) -> StaleRow:
    """The compact form of a stale result key: what `judge_result` would make a Finding of."""
    return (reason.value, task_id, key, status, age_s)


def stale_result_finding(row: StaleRow) -> Finding:
    """The Finding of a stale row, equal to the one `core.diff.judge_result` builds."""
    reason = _REASONS[row[0]]
    return Finding(
        _STALE,
        reason,
        row[1],
        "",
        None,
        Location(Where.RESULT, key=row[2], state=row[3]),
        age_s=row[4],
        detail=_NO_TTL_DETAIL if reason is Reason.RESULT_NO_TTL else "",
    )


def stale_result_dict(row: StaleRow) -> dict[str, Any]:
    """`stale_result_finding(row).as_dict()` without the two dataclasses: `check --json` of a
    million stale keys spent most of its time building Finding objects only to turn them into
    these."""
    age_s = row[4]
    return {
        "kind": "stale_result",
        "reason": row[0],
        "task_id": row[1],
        "task_name": "",
        "db_id": None,
        "row_kind": None,
        "location": {
            "where": "result",
            "queue": None,
            "priority": None,
            "key": row[2] or None,
            "delivery_tag": None,
            "worker": None,
            "state": row[3] or None,
        },
        "age_s": None if age_s is None else round(age_s, 3),
        "detail": _NO_TTL_DETAIL if row[0] == "result_no_ttl" else None,
    }


@dataclass(frozen=True)
class PackedStale:
    """A batch of stale rows already pickled, with what the store's tally needs of it.

    The result scan's child pickles each batch once (it must, to send it through the pipe);
    the parent then writes those bytes to its file as one spilled batch as they are, instead of
    unpickling a million rows only to pickle them again on the core the queue scan needs."""

    data: bytes  # pickle of list[StaleRow]: the form of a spilled batch
    count: int
    reasons: dict[str, int]  # reason value -> rows, first seen first
    head: list[StaleRow]  # the first rows, for the store's first findings of the kind

    @classmethod
    def pack(cls, rows: list[StaleRow]) -> PackedStale:
        return cls(
            pickle.dumps(rows, protocol=pickle.HIGHEST_PROTOCOL),
            len(rows),
            dict(Counter(row[0] for row in rows)),
            rows[:FIRSTS_KEPT],
        )

    def rows(self) -> list[StaleRow]:
        rows: list[StaleRow] = pickle.loads(self.data)  # our own child's bytes, never a stranger's
        return rows


def _encode(finding: Finding) -> tuple[Any, ...]:
    """A Finding as a tuple of plain values: a fraction of the pickle of the dataclass."""
    loc = finding.location
    return (
        finding.kind.value,
        finding.reason.value,
        finding.task_id,
        finding.task_name,
        finding.db_id,
        loc.where.value,
        loc.queue,
        loc.priority,
        loc.key,
        loc.index,
        loc.delivery_tag,
        loc.worker,
        loc.state,
        finding.age_s,
        finding.detail,
        finding.row_kind,
        finding.taken_at,
    )


def _decode(record: _Record) -> Finding:
    if isinstance(record, Finding):
        return record
    if len(record) == 5:
        return stale_result_finding(record)  # a StaleRow, told by its size
    (kind, reason, task_id, task_name, db_id, where, queue, priority, key, index) = record[:10]
    (tag, worker, state, age_s, detail, row_kind, taken_at) = record[10:]
    location = Location(_WHERES[where], queue, priority, key, index, tag, worker, state)
    return Finding(
        _KINDS[kind],
        _REASONS[reason],
        task_id,
        task_name,
        db_id,
        location,
        age_s=age_s,
        detail=detail,
        row_kind=row_kind,
        taken_at=taken_at,
    )


@dataclass
class _Chunk:
    """A run of findings in order: in memory (`records`), or pickled at `offset` in `file`."""

    count: int
    kinds: set[FindingKind]
    records: list[_Record] | None = None
    file: IO[bytes] | None = None
    offset: int = 0
    size: int = 0

    def load(self) -> list[_Record]:
        if self.records is not None:
            return self.records
        assert self.file is not None  # a chunk is either in memory or in a file
        try:
            self.file.seek(self.offset)
            data = self.file.read(self.size)
        except OSError as exc:  # a write still buffered fails here: the disk filled up
            raise ScratchUnavailable.from_error(exc) from exc
        loaded: list[_Record] = pickle.loads(data)
        return loaded


@dataclass
class _Tally:
    """What the report and summary read without iterating, kept as findings are added."""

    kinds: Counter[FindingKind] = field(default_factory=Counter)
    reasons: Counter[str] = field(default_factory=Counter)  # "kind:reason", first seen first
    names: dict[str, Counter[str]] = field(default_factory=dict)  # kind -> task name -> n
    firsts: dict[FindingKind, list[Finding]] = field(default_factory=dict)

    def add(self, finding: Finding) -> None:
        self.kinds[finding.kind] += 1
        self.reasons[f"{finding.kind.value}:{finding.reason.value}"] += 1
        if finding.task_name:
            self.names.setdefault(finding.kind.value, Counter())[finding.task_name] += 1
        kept = self.firsts.setdefault(finding.kind, [])
        if len(kept) < FIRSTS_KEPT:
            kept.append(finding)

    def add_stale(self, rows: list[StaleRow]) -> None:
        """Stale rows have no task name; a Finding is built only for the first few."""
        self._add_stale(len(rows), Counter(row[0] for row in rows), rows)

    def add_packed(self, batch: PackedStale) -> None:
        self._add_stale(batch.count, batch.reasons, batch.head)

    def _add_stale(self, count: int, reasons: Mapping[str, int], head: list[StaleRow]) -> None:
        self.kinds[_STALE] += count
        for reason, n in reasons.items():
            self.reasons[f"stale_result:{reason}"] += n
        kept = self.firsts.setdefault(_STALE, [])
        for row in head[: max(0, FIRSTS_KEPT - len(kept))]:
            kept.append(stale_result_finding(row))

    def merge(self, other: _Tally) -> None:
        self.kinds.update(other.kinds)
        self.reasons.update(other.reasons)
        for kind, names in other.names.items():
            self.names.setdefault(kind, Counter()).update(names)
        for kind, found in other.firsts.items():
            kept = self.firsts.setdefault(kind, [])
            kept.extend(found[: max(0, FIRSTS_KEPT - len(kept))])


class Findings(Sequence[Finding]):
    """An append-only sequence of findings in insertion order, in bounded memory.

    A `Sequence` too: positions and slices skip whole batches. Iteration reads spilled
    batches back from the file. Not thread-safe: one thread adds at a time (the result scan
    fills a store of its own, which the scan then `absorb`s).
    """

    def __init__(
        self,
        findings: Iterable[Finding] = (),
        *,
        memory_limit: int = MEMORY_LIMIT,
        batch_size: int = BATCH_SIZE,
    ):
        self._memory_limit = max(memory_limit, 0)
        self._batch_size = max(1, min(batch_size, memory_limit or batch_size))
        self._chunks: list[_Chunk] = []
        self._tail: list[_Record] = []
        self._tail_kinds: set[FindingKind] = set()
        self._in_memory = 0  # records in the in-memory chunks (the tail not counted)
        self._len = 0
        self._file: IO[bytes] | None = None  # where this store spills next
        self._files: list[IO[bytes]] = []  # every file its chunks are in (own and absorbed)
        self._tally = _Tally()
        self.extend(findings)

    # -- adding --------------------------------------------------------------------------

    def append(self, finding: Finding) -> None:
        self._tally.add(finding)
        self._tail.append(finding)
        self._tail_kinds.add(finding.kind)
        self._len += 1
        if len(self._tail) >= self._batch_size:
            self._seal()

    def extend(self, findings: Iterable[Finding]) -> None:
        for finding in findings:
            self.append(finding)

    def extend_stale(self, rows: list[StaleRow]) -> None:
        """Stale result keys in compact form: no Finding object is made until read."""
        if not rows:
            return
        self._tally.add_stale(rows)
        self._tail_kinds.add(_STALE)
        self._len += len(rows)
        room = self._batch_size - len(self._tail)
        self._tail.extend(rows[:room])
        for start in range(room, len(rows), self._batch_size):
            self._seal()
            self._tail.extend(rows[start : start + self._batch_size])
            self._tail_kinds.add(_STALE)
        if len(self._tail) >= self._batch_size:
            self._seal()

    def extend_packed(self, batch: PackedStale) -> None:
        """`extend_stale(batch.rows())`, but once the memory is full the batch goes to the file
        as the bytes it came in: the same records, in the same order, never unpickled here."""
        if not batch.count:
            return
        if self._in_memory + len(self._tail) + batch.count <= self._memory_limit - self._batch_size:
            self.extend_stale(batch.rows())
            return
        self._seal()  # what came before stays before
        self._tally.add_packed(batch)
        self._len += batch.count
        self._write(batch.data, batch.count, {_STALE})

    def absorb(self, other: Findings) -> None:
        """Append all of `other`'s findings, taking over its batches (and its file) rather
        than re-reading them; `other` is left empty."""
        if other is self:
            raise ValueError("a store cannot absorb itself")
        self._seal()
        other._seal()
        for chunk in other._chunks:
            if chunk.records is not None:
                self._keep(chunk.records, chunk.kinds)
            else:
                self._chunks.append(chunk)
        self._len += other._len
        self._tally.merge(other._tally)
        self._files.extend(other._files)  # ours to close now
        other._chunks, other._len, other._in_memory, other._tally = [], 0, 0, _Tally()
        other._file, other._files = None, []

    def _seal(self) -> None:
        """The tail becomes a chunk: kept in memory while under the limit, else spilled."""
        if self._tail:
            records, kinds = self._tail, self._tail_kinds
            self._tail, self._tail_kinds = [], set()
            self._keep(records, kinds)

    def _keep(self, records: list[_Record], kinds: set[FindingKind]) -> None:
        if self._in_memory + len(records) <= self._memory_limit - self._batch_size:
            self._chunks.append(_Chunk(len(records), kinds, records=records))
            self._in_memory += len(records)
            return
        data = pickle.dumps(
            [r if isinstance(r, tuple) else _encode(r) for r in records],
            protocol=pickle.HIGHEST_PROTOCOL,
        )
        self._write(data, len(records), kinds)

    def _write(self, data: bytes, count: int, kinds: set[FindingKind]) -> None:
        """A pickled batch of `count` records to the end of the file, as a chunk."""
        try:
            if self._file is None:  # closed by `close` or `__del__`, not by a with block
                self._file = tempfile.TemporaryFile(prefix="task-cleanup-findings-")  # noqa: SIM115
                self._files.append(self._file)
            offset = self._file.seek(0, 2)  # flushes the last batch: a full disk fails here
            self._file.write(data)
        except OSError as exc:
            raise ScratchUnavailable.from_error(exc) from exc
        self._chunks.append(_Chunk(count, kinds, file=self._file, offset=offset, size=len(data)))

    # -- reading -------------------------------------------------------------------------

    def __len__(self) -> int:
        return self._len

    def __bool__(self) -> bool:
        return self._len > 0

    def __iter__(self) -> Iterator[Finding]:
        for records in self._record_runs():
            for record in records:
                yield _decode(record)

    def _record_runs(self, kind: FindingKind | None = None) -> Iterator[list[_Record]]:
        # A BufferedRandom flushes its writes on seek: a batch just written reads back whole.
        for chunk in list(self._chunks):
            if kind is None or kind in chunk.kinds:
                yield chunk.load()
        if self._tail and (kind is None or kind in self._tail_kinds):
            yield list(self._tail)

    def dicts(self) -> Iterator[dict[str, Any]]:
        """`f.as_dict()` of each finding in order; stale rows never become Finding objects."""
        for records in self._record_runs():
            for record in records:
                if isinstance(record, Finding):
                    yield record.as_dict()
                elif len(record) == 5:
                    yield stale_result_dict(record)  # a StaleRow, told by its size
                else:
                    yield _decode(record).as_dict()

    def of_kind(self, kind: FindingKind) -> Iterator[Finding]:
        """The findings of one kind in order; batches holding none of it are not read."""
        if not self._tally.kinds[kind]:
            return
        for records in self._record_runs(kind):
            for record in records:
                if isinstance(record, Finding):
                    if record.kind is kind:
                        yield record
                elif (_STALE if len(record) == 5 else _KINDS[record[0]]) is kind:
                    yield _decode(record)

    @overload
    def __getitem__(self, index: int) -> Finding: ...

    @overload
    def __getitem__(self, index: slice) -> list[Finding]: ...

    def __getitem__(self, index: int | slice) -> Finding | list[Finding]:
        """By position, skipping whole batches: for tests and for reading in slices."""
        if isinstance(index, slice):
            start, stop, step = index.indices(self._len)
            return list(islice(self._from(start), max(0, stop - start)))[::step]
        position = index + self._len if index < 0 else index
        if not 0 <= position < self._len:
            raise IndexError("finding index out of range")
        return next(self._from(position))

    def _from(self, start: int) -> Iterator[Finding]:
        skipped = 0
        runs = [(c.count, c.load) for c in self._chunks] + [(len(self._tail), self._tail.copy)]
        for count, load in runs:
            if skipped + count <= start:
                skipped += count
                continue
            records = load()
            for record in records[max(0, start - skipped) :]:
                yield _decode(record)
            skipped += count

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Findings):
            return len(self) == len(other) and all(a == b for a, b in zip(self, other, strict=True))
        if isinstance(other, list | tuple):
            return len(self) == len(other) and all(a == b for a, b in zip(self, other, strict=True))
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]  # mutable, like a list

    def __repr__(self) -> str:
        return f"<Findings {self._len} ({self._len - self._spilled()} in memory)>"

    def _spilled(self) -> int:
        return sum(c.count for c in self._chunks if c.records is None)

    # -- what the report and summary read ------------------------------------------------

    def count_of(self, kind: FindingKind) -> int:
        return self._tally.kinds[kind]

    def kind_counts(self) -> dict[FindingKind, int]:
        return dict(self._tally.kinds)

    def reason_counts(self) -> dict[str, int]:
        """Counts by "kind:reason", in the order each first appeared."""
        return {key: n for key, n in self._tally.reasons.items() if n}

    def task_name_counts(self) -> dict[str, Counter[str]]:
        """Per kind value, every task name's count (copies)."""
        return {kind: Counter(names) for kind, names in self._tally.names.items()}

    def firsts(self) -> dict[FindingKind, list[Finding]]:
        """The first FIRSTS_KEPT findings of each kind, in order."""
        return {kind: list(found) for kind, found in self._tally.firsts.items() if found}

    @property
    def spilled(self) -> int:
        """How many findings are in the temporary file (for tests and the log)."""
        return self._spilled()

    @property
    def closed(self) -> bool:
        """True when no temporary file is open (none was needed, or `close` ran)."""
        return all(file.closed for file in self._files)

    # -- releasing -----------------------------------------------------------------------

    def close(self) -> None:
        """Release the temporary files (own and absorbed) and forget every finding."""
        for file in self._files:
            file.close()
        self._file, self._files = None, []
        self._chunks, self._tail, self._tail_kinds = [], [], set()
        self._len, self._in_memory, self._tally = 0, 0, _Tally()

    def __enter__(self) -> Findings:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        # A report dropped without `close` (a long-lived worker's scans) still frees its fd.
        for file in getattr(self, "_files", ()):
            file.close()
