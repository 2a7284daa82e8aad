"""The guards' pure decisions, by table: run, skip or re-check a row; back off while the database
is unreachable; the attempt counters read from a message header."""

from __future__ import annotations

from typing import Any

import pytest

from maintenance.config import GuardSettings
from maintenance.core.models import Reason, Rows, RowState
from maintenance.guards.policy import Action, Attempts, Verdict, judge, judge_unavailable

LIVE, DONE = RowState(active=True, status="pending"), RowState(active=False, status="done")
GUARDS = GuardSettings(
    missing_retries=3, missing_retry_delay_s=2.0, db_retry_max_delay_s=10.0, db_max_retries=5
)


@pytest.mark.parametrize(
    ("kind", "rows", "missing", "expected"),
    [
        ("task", Rows(LIVE), 0, Verdict(Action.RUN)),
        ("task", Rows(DONE), 0, Verdict(Action.SKIP, Reason.ROW_FINISHED)),
        ("task", Rows(None), 0, Verdict(Action.RECHECK, Reason.ROW_MISSING, 2.0)),
        ("task", Rows(None), 2, Verdict(Action.RECHECK, Reason.ROW_MISSING, 2.0)),
        ("task", Rows(None), 3, Verdict(Action.SKIP, Reason.ROW_MISSING)),
        ("sub_task", Rows(LIVE, LIVE, True), 0, Verdict(Action.RUN)),
        ("sub_task", Rows(LIVE), 0, Verdict(Action.RUN)),  # no parent id on the row
        ("sub_task", Rows(DONE, LIVE, True), 0, Verdict(Action.SKIP, Reason.ROW_FINISHED)),
        ("sub_task", Rows(LIVE, DONE, True), 0, Verdict(Action.SKIP, Reason.PARENT_FINISHED)),
        (
            "sub_task",
            Rows(LIVE, None, True),
            0,
            Verdict(Action.RECHECK, Reason.PARENT_MISSING, 2.0),
        ),
        ("sub_task", Rows(LIVE, None, True), 3, Verdict(Action.SKIP, Reason.PARENT_MISSING)),
        ("task", Rows(LIVE, None, True), 0, Verdict(Action.RUN)),  # a task has no parent rule
    ],
)
def test_judge(kind: Any, rows: Rows, missing: int, expected: Verdict) -> None:
    """Finished rows skip at once, missing rows are re-checked a bounded number of times."""
    assert judge(kind, rows, Attempts(missing=missing), GUARDS) == expected


@pytest.mark.parametrize(
    ("db_attempts", "jitter", "expected"),
    [
        (0, 0.0, Verdict(Action.RECHECK, None, 0.5)),
        (0, 1.0, Verdict(Action.RECHECK, None, 1.0)),
        (2, 1.0, Verdict(Action.RECHECK, None, 4.0)),
        (4, 1.0, Verdict(Action.RECHECK, None, 10.0)),  # capped by db_retry_max_delay_s
        (4, 0.0, Verdict(Action.RECHECK, None, 5.0)),
        (5, 0.5, Verdict(Action.GIVE_UP)),
    ],
)
def test_judge_unavailable(db_attempts: int, jitter: float, expected: Verdict) -> None:
    """An unreachable database is never a skip: exponential backoff, capped, then give up."""
    assert judge_unavailable(Attempts(db=db_attempts), GUARDS, jitter) == expected


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        (None, Attempts()),
        ({"missing": 2, "db": 7}, Attempts(2, 7)),
        ({"missing": "x", "db": -1}, Attempts()),
        ("garbage", Attempts()),
    ],
)
def test_attempts_from_header(header: Any, expected: Attempts) -> None:
    """A missing or foreign counter header reads as zero rather than breaking the task."""
    assert Attempts.from_header(header) == expected
