"""The forked side scan: answers, progress and errors cross the pipe; the thread fallback works."""

from __future__ import annotations

import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from maintenance.errors import BrokerUnavailable
from maintenance.scan import results as result_scan
from maintenance.scan.forked import ForkedCall, Report
from maintenance.scan.results import BackgroundResults


def test_result_and_progress_come_back_from_the_child() -> None:
    """The child's return value and its progress reports reach the parent."""
    parent = os.getpid()
    seen: list[int] = []

    def work(report: Report) -> tuple[int, bool]:
        report(3)
        report(7)
        return 42, os.getpid() != parent

    assert ForkedCall(work).result(seen.append) == (42, True)
    assert seen == [3, 7]


def test_the_childs_error_is_raised_in_the_parent() -> None:
    """A Redis failure in the child is a failure of the scan: no verdict."""
    def work(report: Report) -> None:
        raise BrokerUnavailable("Redis failed while reading result keys: boom")

    with pytest.raises(BrokerUnavailable, match="boom"):
        ForkedCall(work).result(lambda count: None)


def test_cancel_ends_a_running_child() -> None:
    """When the scan fails elsewhere, the child is stopped and waiting for it ends."""
    call = ForkedCall(lambda report: time.sleep(60))
    call.cancel()
    with pytest.raises(RuntimeError, match="without an answer"):
        call.result(lambda count: None)


def test_thread_fallback_without_fork(monkeypatch: pytest.MonkeyPatch) -> None:
    """Where fork does not exist the same work runs on the side thread."""
    monkeypatch.setattr(result_scan, "CAN_FORK", False)
    threads: list[str] = []

    def work(report: Report, stop: threading.Event) -> list[str]:
        threads.append(threading.current_thread().name)
        report((5, []))
        report((2, []))
        return ["a note"]

    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="side") as side:
        found = BackgroundResults(side, work).wait(lambda phase, done, total: None)
    assert (found.scanned, found.notes) == (7, ["a note"])
    assert threads and threads[0].startswith("side")
