"""The task-id hashes a scan has read, in memory up to 1.5 million, then in a file.

Duplicates (one task id in two messages) are found by asking, for each chunk read, which of
its ids were read before. A set answers at C speed but costs ~60-100 bytes per id, which at
ten million messages is most of a gigabyte. Past `memory_limit` ids the set moves into a
private temporary SQLite database (the standard library's; deleted when closed) whose page
cache is bounded, so memory stays flat whatever the number of messages:

- a chunk is looked up with one `SELECT … WHERE h IN (…)` (the B-tree searched in C, no
  per-id Python) and against the ids not yet written, kept in a small set;
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

MEMORY_LIMIT = 1_500_000  # ids kept in a set (~110 MiB) before all go to the file
FLUSH_EVERY = 200_000  # ids not yet written, at most
CACHE_KIB = 32 * 1024  # SQLite's page cache: what the file may take of memory
LOOKUP_CHUNK = 900  # ids per SELECT (SQLite allows 32,766 parameters)


class SpillingHashes:
    """`SeenHashes` (core/hazards.py) with memory bounded in the number of ids. Close it."""

    def __init__(
        self,
        memory_limit: int = MEMORY_LIMIT,
        flush_every: int = FLUSH_EVERY,
        cache_kib: int = CACHE_KIB,
    ):
        self.memory_limit = memory_limit
        self.flush_every = flush_every
        self.cache_kib = cache_kib
        self._memory: MemoryHashes | None = MemoryHashes()
        self._pending: set[int] = set()
        self._db: sqlite3.Connection | None = None
        self._lookups: dict[int, str] = {}

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
        before = self._pending.intersection(hashes)
        before.update(self._stored(hashes))
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
        self._db.executemany("INSERT OR IGNORE INTO seen VALUES (?)", ((h,) for h in pending))
        self._db.execute("COMMIT")
