"""The result-key scan beside the queue scan: without fork the same work runs on a side thread."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import pytest

from maintenance.core.finding_store import PackedStale
from maintenance.scan import results as result_scan
from maintenance.scan.forked import Report
from maintenance.scan.results import BackgroundResults


def test_thread_fallback_without_fork(monkeypatch: pytest.MonkeyPatch) -> None:
    """Where fork does not exist the same work runs on the side thread."""
    monkeypatch.setattr(result_scan, "CAN_FORK", False)
    threads: list[str] = []

    def work(report: Report, stop: threading.Event) -> list[str]:
        threads.append(threading.current_thread().name)
        report((5, PackedStale.pack([])))
        report((2, PackedStale.pack([])))
        return ["a note"]

    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="side") as side:
        found = BackgroundResults(side, work).wait(lambda phase, done, total: None)
    assert (found.scanned, found.notes) == (7, ["a note"])
    assert threads and threads[0].startswith("side")
