"""The guards' runtime: skips feed the per-reason counter and the skip listeners."""

from __future__ import annotations

from maintenance.guards.runtime import (
    GUARD_SKIPS,
    GuardSkip,
    add_skip_listener,
    record_skip,
    remove_skip_listener,
)


def test_skips_are_counted_and_reach_listeners() -> None:
    """Skips feed a per-reason counter and listeners; a failing listener changes nothing."""
    seen: list[GuardSkip] = []

    def broken(skip: GuardSkip) -> None:
        raise RuntimeError("exporter down")

    skip = GuardSkip("app.task", "celery-id", "42", "task", "row_finished")
    before = GUARD_SKIPS["row_finished"]
    add_skip_listener(broken)
    add_skip_listener(seen.append)
    try:
        record_skip(skip)
    finally:
        remove_skip_listener(broken)
        remove_skip_listener(seen.append)
    assert (GUARD_SKIPS["row_finished"] - before, seen) == (1, [skip])
