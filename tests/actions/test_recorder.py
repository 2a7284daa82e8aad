"""The run recorder: lock, history row and outcome for every operation that acts, on real
Redis and PostgreSQL."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import redis
import sqlalchemy as sa
from celery.exceptions import SoftTimeLimitExceeded

from maintenance.actions.recorder import RunRecorder
from maintenance.adapters.history import ActionRecord
from maintenance.config import Settings
from maintenance.core.models import Outcome, RunMode
from maintenance.errors import DatabaseUnavailable, LockHeld, PlanRefused
from maintenance.service import Maintenance

LOCK = "task-maintenance:lock"


@pytest.fixture
def maintenance(settings: Settings) -> Iterator[Maintenance]:
    with Maintenance.open(settings) as service:
        yield service


@pytest.fixture
def recorder(maintenance: Maintenance) -> RunRecorder:
    return maintenance.recorder


def runs(maintenance: Maintenance) -> list[dict[str, object]]:
    return maintenance.adapters.history.recent_runs(limit=10)


def test_a_finished_run_is_recorded_with_its_counts(
    recorder: RunRecorder, maintenance: Maintenance, redis_client: redis.Redis
) -> None:
    """The row goes from running to the outcome the operation chose, with what it did."""
    with recorder.run(RunMode.RESTORE, "test") as run:
        assert runs(maintenance)[0]["outcome"] == "running"
        assert redis_client.exists(LOCK)
        run.record([ActionRecord("restored", "queue", "row_missing", "t1")])
        run.done["restored"] += 1
    (row,) = runs(maintenance)
    assert (row["outcome"], row["mode"], row["started_by"]) == ("ok", "restore", "test")
    assert row["counts"]["done"] == {"restored": 1}  # type: ignore[index]  # a JSON document
    assert [a["task_id"] for a in maintenance.adapters.history.actions_of(run.run_id)] == ["t1"]
    assert not redis_client.exists(LOCK)


@pytest.mark.parametrize(
    ("error", "outcome", "message"),
    [
        (RuntimeError("boom"), Outcome.FAILED, "RuntimeError: boom"),  # a bug of ours
        (DatabaseUnavailable("database failed while x"), Outcome.FAILED, "database failed while x"),
        (SoftTimeLimitExceeded(), Outcome.PARTIAL, "interrupted: SoftTimeLimitExceeded"),
    ],
)
def test_a_run_that_raises_is_never_left_running(
    recorder: RunRecorder,
    maintenance: Maintenance,
    redis_client: redis.Redis,
    error: BaseException,
    outcome: Outcome,
    message: str,
) -> None:
    """Whatever ends the body, the row says how it ended, its actions are kept, the lock goes."""
    with (
        pytest.raises(type(error)),
        recorder.run(RunMode.REVOKE, "test", interrupted_by=(SoftTimeLimitExceeded,)) as run,
    ):
        run.record([ActionRecord("revoked", "manual", "operator", "t1")])
        run.done["revoked"] += 1
        raise error
    (row,) = runs(maintenance)
    assert (row["outcome"], row["error"]) == (outcome, message)
    assert row["counts"]["done"] == {"revoked": 1}  # type: ignore[index]  # a JSON document
    assert len(maintenance.adapters.history.actions_of(run.run_id)) == 1
    assert not redis_client.exists(LOCK)


def test_an_outcome_set_before_raising_is_the_one_recorded(
    recorder: RunRecorder, maintenance: Maintenance
) -> None:
    """A refusal raised on purpose is recorded as refused, not as a failure."""
    with pytest.raises(PlanRefused), recorder.run(RunMode.CLEANUP, "test") as run:
        run.end(Outcome.REFUSED, "too many orphans")
        raise PlanRefused("too many orphans")
    (row,) = runs(maintenance)
    assert (row["outcome"], row["error"]) == ("refused", "too many orphans")


def test_a_run_meeting_the_lock_records_nothing(
    recorder: RunRecorder, maintenance: Maintenance, engine: sa.Engine
) -> None:
    """The lock comes first: a second run is refused before any history row is written."""
    with (
        recorder.run(RunMode.CLEANUP, "first"),
        pytest.raises(LockHeld, match="cleanup by first"),
        recorder.run(RunMode.RESTORE, "second"),
    ):
        pass  # pragma: no cover - never entered
    assert [r["started_by"] for r in runs(maintenance)] == ["first"]
