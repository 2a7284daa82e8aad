"""The quarantine's bookkeeping runs beside the next script call, never further behind."""

from __future__ import annotations

import threading
from typing import cast

import pytest
import structlog

from maintenance.actions.apply import _Overlapped
from maintenance.core.models import Finding
from maintenance.errors import DatabaseUnavailable


def batch(n: int) -> list[Finding]:
    """Stand-ins: the helper only passes batches through to the bookkeeping function."""
    return cast(list[Finding], [object()] * n)


def test_a_failed_batch_stops_the_loop_before_a_second_further_call() -> None:
    done: list[int] = []
    release = threading.Event()

    def book(taken: list[Finding], missing: list[Finding]) -> None:
        n = len(taken)
        if n == 1:
            raise DatabaseUnavailable("database failed while recording actions")
        release.wait(5)
        done.append(n)

    books = _Overlapped(book)
    books.submit(batch(1), [])  # batch 1 will fail
    release.set()
    with pytest.raises(DatabaseUnavailable):
        books.submit(batch(2), [])  # made, then batch 1 raises
    books.finish(best_effort=True)  # batch 2 is still recorded
    assert done == [2]


def test_batches_are_booked_in_order_with_the_run_id_bound() -> None:
    seen: list[tuple[int, object]] = []

    def book(taken: list[Finding], missing: list[Finding]) -> None:
        seen.append((len(taken), structlog.contextvars.get_contextvars().get("run_id")))

    with structlog.contextvars.bound_contextvars(run_id="r1"):
        books = _Overlapped(book)
        for n in range(1, 6):
            books.submit(batch(n), [])
        books.finish()
    assert seen == [(n, "r1") for n in range(1, 6)]


def test_finish_raises_the_last_error_unless_best_effort() -> None:
    def fail(taken: list[Finding], missing: list[Finding]) -> None:
        raise DatabaseUnavailable("database failed")

    books = _Overlapped(fail)
    books.submit([], [])
    with pytest.raises(DatabaseUnavailable):
        books.finish()
    quiet = _Overlapped(fail)
    quiet.submit([], [])
    quiet.finish(best_effort=True)


def test_final_runs_once_even_after_a_failed_batch() -> None:
    finals: list[int] = []

    def fail(taken: list[Finding], missing: list[Finding]) -> None:
        raise DatabaseUnavailable("database failed")

    books = _Overlapped(fail, final=lambda: finals.append(1))
    books.submit(batch(1), [])
    with pytest.raises(DatabaseUnavailable):
        books.finish()
    books.finish(best_effort=True)  # the caller's `finally`: nothing runs twice
    assert finals == [1]
