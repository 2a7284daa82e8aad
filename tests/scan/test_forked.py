"""The forked side scan: answers, progress and errors cross the pipe."""

from __future__ import annotations

import os
import time

import pytest

from maintenance.errors import BrokerUnavailable
from maintenance.scan.forked import ForkedCall, Report


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
