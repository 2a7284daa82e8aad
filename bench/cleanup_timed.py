"""`task-cleanup` itself, with timers around its phases: the process the cleanup benchmark measures.

    python -m bench.cleanup_timed PHASES.json --config X cleanup --force --json ...

Runs `maintenance.cli.main.main` unchanged, after wrapping a few methods with timers; at exit
writes {phase: {"s": seconds, "calls": n, "max_s": longest call}} to PHASES.json, with the
process's peak RSS since exec (VmHWM: wait4's ru_maxrss would also count the benchmark process
this one was forked from). The wrappers add a few microseconds per call, nothing per message.
"""

from __future__ import annotations

import atexit
import functools
import sys
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import orjson

from maintenance.actions.apply import Applier, _Overlapped
from maintenance.actions.run import CleanupRun
from maintenance.adapters.history import HistoryStore
from maintenance.adapters.quarantine import Quarantine
from maintenance.adapters.results import ResultWriter
from maintenance.cli.main import main
from maintenance.scan.reconciler import Reconciler

TIMES: dict[str, dict[str, float]] = defaultdict(lambda: {"s": 0.0, "calls": 0, "max_s": 0.0})


def _add(label: str, seconds: float) -> None:
    entry = TIMES[label]
    entry["s"] += seconds
    entry["calls"] += 1
    entry["max_s"] = max(entry["max_s"], seconds)


def _timed(label: str, fn: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        began = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            _add(label, time.perf_counter() - began)

    return wrapper


def _timed_steps(label: str, fn: Callable[..., Iterator[Any]]) -> Callable[..., Iterator[Any]]:
    """For a generator: the time spent producing each item (one script call per item here)."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Iterator[Any]:
        steps = fn(*args, **kwargs)
        while True:
            began = time.perf_counter()
            try:
                item = next(steps)
            except StopIteration:
                return
            finally:
                _add(label, time.perf_counter() - began)
            yield item

    return wrapper


PHASES: list[tuple[type, str, str]] = [
    (Reconciler, "scan", "scan"),
    (CleanupRun, "_recheck", "recheck (grace 0)"),
    (Applier, "_quarantine_queued", "quarantine (all, incl. compaction)"),
    (Applier, "_book_quarantined", "  bookkeeping per batch (helper thread)"),
    (ResultWriter, "mark_revoked", "    REVOKED states"),
    (HistoryStore, "record_actions", "    history rows"),
    (Applier, "_revoke", "    revoke (slipped away)"),
    (_Overlapped, "submit", "  main thread waiting for bookkeeping"),
    (Quarantine, "compact", "  compaction (LREM)"),
    (Quarantine, "compact_whole", "  compaction (LREM)"),
    (Applier, "_delete_results", "delete results"),
]


def _peak_rss_kib() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    return 0


def install(out: Path) -> None:
    for owner, name, label in PHASES:
        setattr(owner, name, _timed(label, getattr(owner, name)))
    Quarantine.take_from_list = _timed_steps(  # type: ignore[method-assign]  # on purpose
        "  script calls", Quarantine.take_from_list
    )
    started = time.perf_counter()

    def dump() -> None:
        _add("total in process", time.perf_counter() - started)
        out.write_bytes(orjson.dumps({"phases": TIMES, "peak_rss_kib": _peak_rss_kib()}))

    atexit.register(dump)


if __name__ == "__main__":
    install(Path(sys.argv[1]))
    sys.exit(main(sys.argv[2:]))
