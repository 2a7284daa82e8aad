"""The plan's rules, as tables: grace, location, circuit breaker, lost rows. Pure, no servers."""

from __future__ import annotations

from dataclasses import replace

import pytest

from maintenance.core.models import Finding, FindingKind, Location, Reason, Where
from maintenance.core.plan import (
    Action,
    Hold,
    Policy,
    Recheck,
    StuckAction,
    breaker_verdict,
    make_plan,
    needs_recheck,
    orphan_action,
    recheck_key,
)

NOW = 1_000_000.0


def orphan(
    task_id: str, reason: Reason = Reason.ROW_MISSING, where: Where = Where.QUEUE, tag: str = "tag"
) -> Finding:
    return Finding(
        FindingKind.ORPHAN,
        reason,
        task_id,
        "app.work",
        f"row-{task_id}",
        Location(where, queue="q", key="q", delivery_tag=f"{tag}-{task_id}"),
        row_kind="task",
    )


def lost(db_id: str) -> Finding:
    return Finding(
        FindingKind.LOST,
        Reason.NO_MESSAGE,
        "",
        "",
        db_id,
        Location(Where.DATABASE),
        row_kind="task",
    )


@pytest.mark.parametrize(
    ("reason", "rechecked", "expected"),
    [
        (Reason.ROW_FINISHED, False, Action.QUARANTINE),  # certain: no second look needed
        (Reason.PARENT_FINISHED, False, Action.QUARANTINE),
        (Reason.ROW_MISSING, False, Hold.AWAITING_GRACE),  # maybe a producer not yet committed
        (Reason.PARENT_MISSING, False, Hold.AWAITING_GRACE),
        (Reason.ROW_MISSING, True, Action.QUARANTINE),  # still missing after the grace period
    ],
)
def test_grace_rule(reason: Reason, rechecked: bool, expected: Action | Hold) -> None:
    """A finished row is final; a missing row is acted on only once the re-check confirms it."""
    f = orphan("a", reason)
    recheck = Recheck(frozenset({recheck_key(f)}) if rechecked else frozenset(), None)
    plan = make_plan(
        [f], managed_messages=10, workers_alive=True, now=NOW, policy=Policy(), recheck=recheck
    )
    got = plan.actions[0].action if plan.actions else plan.held[0][1]
    assert got == expected


def test_row_that_came_back_during_grace_is_held() -> None:
    """Missing at first, present at the re-check: the row is live and its message stays."""
    f = orphan("a")
    plan = make_plan(
        [f],
        managed_messages=10,
        workers_alive=True,
        now=NOW,
        policy=Policy(),
        recheck=Recheck(frozenset(), checked_at=NOW),
    )
    assert plan.actions == ()
    assert plan.held == ((f, Hold.ROW_CAME_BACK),)


@pytest.mark.parametrize(
    ("where", "alive", "taken_ago_s", "expected"),
    [
        (Where.QUEUE, True, None, Action.QUARANTINE),
        (Where.UNACKED, True, 10.0, Action.REVOKE),  # a live worker holds it
        (Where.UNACKED, False, 10.0, Action.QUARANTINE_UNACKED),  # nobody can hold it
        (Where.UNACKED, True, 7200.0, Action.QUARANTINE_UNACKED),  # past the visibility timeout
        (Where.UNACKED, True, None, Action.REVOKE),  # unknown age: assume held
        (Where.WORKER, True, None, Action.REVOKE),
        (Where.WORKER, False, None, Action.REVOKE),
    ],
)
def test_location_rule(
    where: Where, alive: bool, taken_ago_s: float | None, expected: Action
) -> None:
    """A message a live worker may hold is revoked, never pulled from under it."""
    taken_at = None if taken_ago_s is None else NOW - taken_ago_s
    f = replace(orphan("a", Reason.ROW_FINISHED, where), taken_at=taken_at)
    assert orphan_action(f, alive, NOW, Policy(visibility_timeout_s=3600)) == expected


@pytest.mark.parametrize(
    ("orphans", "managed", "ratio", "maximum", "refused"),
    [
        (5, 10, 0.5, 0, False),  # exactly half: allowed
        (6, 10, 0.5, 0, True),  # mostly orphans: a wrong database looks like this
        (6, 10, 0.7, 0, False),  # raised explicitly
        (6, 10, 1.0, 5, True),  # absolute limit
        (0, 0, 0.5, 0, False),
    ],
)
def test_breaker_rule(
    orphans: int, managed: int, ratio: float, maximum: int, refused: bool
) -> None:
    """The breaker refuses a plan of mostly orphans, or more than the absolute maximum."""
    verdict = breaker_verdict(orphans, managed, Policy(max_orphan_ratio=ratio, max_orphans=maximum))
    assert bool(verdict) is refused


def test_refused_plan_holds_every_orphan_but_still_deletes_stale_results() -> None:
    """Stale results do not depend on the database mapping; orphans do."""
    findings = [orphan(str(i), Reason.ROW_FINISHED) for i in range(8)]
    stale = Finding(
        FindingKind.STALE_RESULT,
        Reason.RESULT_EXPIRED,
        "r",
        "",
        None,
        Location(Where.RESULT, key="celery-task-meta-r"),
    )
    plan = make_plan(
        [*findings, stale],
        managed_messages=10,
        workers_alive=True,
        now=NOW,
        policy=Policy(),
        recheck=Recheck(),
    )
    assert plan.refused
    assert [p.action for p in plan.actions] == [Action.DELETE_RESULT]
    assert sum(1 for _, hold in plan.held if hold is Hold.BREAKER) == 8


@pytest.mark.parametrize(
    ("stuck_action", "confirmed", "expected"),
    [
        (StuckAction.REPORT, True, Hold.REPORT_ONLY),
        (StuckAction.MARK_FAILED, True, Action.MARK_FAILED),
        (StuckAction.MARK_FAILED, False, Hold.AWAITING_GRACE),
        (StuckAction.REQUEUE, True, Action.REQUEUE),
    ],
)
def test_lost_rule(stuck_action: StuckAction, confirmed: bool, expected: Action | Hold) -> None:
    """Lost rows are only reported unless configured, and then only once re-checked."""
    f = lost("7")
    recheck = Recheck(frozenset({recheck_key(f)}) if confirmed else frozenset(), None)
    plan = make_plan(
        [f],
        managed_messages=0,
        workers_alive=True,
        now=NOW,
        policy=Policy(stuck_action=stuck_action),
        recheck=recheck,
    )
    got = plan.actions[0].action if plan.actions else plan.held[0][1]
    assert got == expected


def test_unreadable_messages_are_never_acted_on() -> None:
    """A message we could not read is reported, never removed."""
    f = Finding(
        FindingKind.UNREADABLE, Reason.BAD_ENVELOPE, "", "", None, Location(Where.QUEUE, key="q")
    )
    plan = make_plan(
        [f], managed_messages=1, workers_alive=True, now=NOW, policy=Policy(), recheck=Recheck()
    )
    assert plan.actions == () and plan.held == ((f, Hold.REPORT_ONLY),)


def test_needs_recheck_lists_only_what_rests_on_a_missing_row() -> None:
    """Finished rows need no second look; missing rows and acted-on lost rows do."""
    missing, finished, stuck = orphan("m"), orphan("f", Reason.ROW_FINISHED), lost("9")
    assert needs_recheck([missing, finished, stuck], Policy()) == [missing]
    assert needs_recheck([missing, finished, stuck], Policy(stuck_action=StuckAction.REQUEUE)) == [
        missing,
        stuck,
    ]
