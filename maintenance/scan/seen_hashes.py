"""The task-id hashes a scan has read, in memory up to 1.2 million, then in a file.

Duplicates (one task id in two messages) are found by asking, for each chunk read, which of
its ids were read before. A set answers at C speed but costs ~60-100 bytes per id, which at
ten million messages is most of a gigabyte. Past `memory_limit` ids the set moves into a
private temporary SQLite database (the standard library's; deleted when closed) whose page
cache is bounded, so memory stays flat whatever the number of messages:

- a bit per value of a hash's low 27 bits (16 MiB) proves most new ids new: only those whose
  bit is already set (the ids seen before, and ~7% of new ones at ten million) are looked up,
  with one `SELECT … WHERE h IN (…)` per chunk (the B-tree searched in C), and against the
  ids not yet written, kept in a small set;
- those are written `flush_every` at a time, sorted, so that a flush walks the B-tree once in
  order instead of touching a random page per id.

The set and the file give the same answers. Both keep a 64-bit hash, not the id: two ids with
one hash (about one chance in a million among ten million ids) would be reported as copies of
each other, but a cleanup never removes a copy on that alone: it reads every copy of the ids
found (scan/copies.py) and keeps one per task id.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence

from maintenance.core.hazards import MemoryHashes
from maintenance.errors import ScratchUnavailable

MEMORY_LIMIT = 1_200_000  # ids kept in a set (~90 MiB) before all go to the file
FLUSH_EVERY = 200_000  # ids not yet written, at most
CACHE_KIB = 32 * 1024  # SQLite's page cache: what the file may take of memory
FILTER_BITS = 27  # 2**27 bits, 16 MiB: at 10 million ids, ~7% of new ids still looked up
LOOKUP_CHUNK = 900  # ids per SELECT (SQLite allows 32,766 parameters)


class SpillingHashes:
    """`SeenHashes` (core/hazards.py) with memory bounded in the number of ids. Close it."""

    def __init__(
        self,
        memory_limit: int = MEMORY_LIMIT,
        flush_every: int = FLUSH_EVERY,
        cache_kib: int = CACHE_KIB,
        filter_bits: int = FILTER_BITS,
    ):
        self.memory_limit = memory_limit
        self.flush_every = flush_every
        self.cache_kib = cache_kib
        self._memory: MemoryHashes | None = MemoryHashes()
        self._pending: set[int] = set()
        self._db: sqlite3.Connection | None = None
        self._lookups: dict[int, str] = {}
        self.filter_bits = filter_bits
        self._filter: BitFilter | None = None  # made at the spill: a small scan never needs it

    @property
    def spilled(self) -> bool:
        return self._db is not None

    def add_chunk(self, hashes: Sequence[int]) -> set[int]:
        try:
            return self._add_chunk(hashes)
        except sqlite3.OperationalError as exc:  # disk full, I/O error, cannot open the file
            raise ScratchUnavailable.from_error(exc) from exc

    def _add_chunk(self, hashes: Sequence[int]) -> set[int]:
        if self._memory is not None:
            before = self._memory.add_chunk(hashes)
            if len(self._memory) > self.memory_limit:
                self._spill()
            return before
        assert self._filter is not None  # made with the file
        maybe = self._filter.seen_before(hashes)
        before = self._pending.intersection(maybe)
        if maybe:
            before.update(self._stored(maybe))
        self._pending.update(hashes)
        if len(self._pending) >= self.flush_every:
            self._flush()
        return before

    def add(self, value: int) -> bool:
        return not self.add_chunk((value,))

    def close(self) -> None:
        self._memory, self._pending = None, set()
        if self._db is not None:
            self._db.close()  # the temporary database goes with its connection

    def _spill(self) -> None:
        assert self._memory is not None
        # "": a private temporary database on disk, deleted on close, in SQLite's temporary
        # directory (SQLITE_TMPDIR, TMPDIR, else the first writable of /var/tmp, /usr/tmp,
        # /tmp). Never shared, never read by anyone else: no journal, no syncing.
        db = sqlite3.connect("", isolation_level=None, check_same_thread=True)
        for pragma in (
            "journal_mode = OFF",
            "synchronous = OFF",
            "locking_mode = EXCLUSIVE",
            f"cache_size = -{self.cache_kib}",
        ):
            db.execute(f"PRAGMA {pragma}")
        db.execute("CREATE TABLE seen (h INTEGER PRIMARY KEY)")
        self._db = db
        self._pending, self._memory = self._memory.hashes, None
        self._filter = BitFilter(self.filter_bits)
        self._filter.seen_before(list(self._pending))
        self._flush()

    def _stored(self, hashes: Sequence[int]) -> set[int]:
        assert self._db is not None
        found: set[int] = set()
        for start in range(0, len(hashes), LOOKUP_CHUNK):
            part = hashes[start : start + LOOKUP_CHUNK]
            rows = self._db.execute(self._lookup(len(part)), part)
            found.update(h for (h,) in rows)
        return found

    def _lookup(self, n: int) -> str:
        query = self._lookups.get(n)
        if query is None:
            query = self._lookups[n] = f"SELECT h FROM seen WHERE h IN ({','.join('?' * n)})"
        return query

    def _flush(self) -> None:
        assert self._db is not None
        pending, self._pending = sorted(self._pending), set()
        self._db.execute("BEGIN")  # one transaction (the connection is in autocommit)
        self._db.executemany("INSERT OR IGNORE INTO seen VALUES (?)", zip(pending))
        self._db.execute("COMMIT")


class BitFilter:
    """One bit per value of a hash's low `bits` bits: a clear bit proves a hash unseen.

    In front of the file, it spares the look-up of nearly every new id (a B-tree seek that
    misses the page cache once the file outgrows it); only the hashes whose bit was already set
    (those seen before, and a few others sharing their low bits) are looked up."""

    def __init__(self, bits: int):
        self._mask = (1 << bits) - 1
        self._bits = bytearray(1 << (bits - 3))  # bits >= 3: a bit's index within its byte

    def seen_before(self, hashes: Sequence[int]) -> list[int]:
        """The hashes whose bit was set (each may have been seen), setting the bits of the
        others. A hash twice in `hashes` is returned the second time: a candidate the caller's
        look-up then clears (it was in neither the file nor the pending set)."""
        bits, mask = self._bits, self._mask
        maybe: list[int] = []
        keep = maybe.append
        for h in hashes:  # one pass, the bit's index and mask by hand: ~0.3 µs a hash
            i = h & mask
            bit = 1 << (i & 7)
            i >>= 3
            if bits[i] & bit:
                keep(h)
            else:
                bits[i] |= bit
        return maybe
