"""The plan: which findings to act on, and how. Pure; every veto is a small rule with a reason.

Order of safety: a finding is acted on only when it is *confirmed* (certain, or seen twice at
least `grace_s` apart), when the circuit breaker allows the whole plan, and only in the way its
location allows (a message a live worker holds is revoked, never pulled from under it).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from enum import StrEnum

from maintenance.core.models import Finding, FindingKind, Where


class Action(StrEnum):
    QUARANTINE = "quarantine"  # move a queued message into the quarantine, state REVOKED
    QUARANTINE_UNACKED = "quarantine_unacked"  # same for an unacked entry whose worker is gone
    REVOKE = "revoke"  # broadcast a revoke: a live worker holds the message
    DELETE_RESULT = "delete_result"
    MARK_FAILED = "mark_failed"
    REQUEUE = "requeue"


class StuckAction(StrEnum):
    """What a cleanup does with a lost row (`cleanup.stuck_action`)."""

    REPORT = "report"  # nothing: it is reported only
    MARK_FAILED = "mark_failed"  # set `cleanup.failed_status`, only on rows still stuck
    REQUEUE = "requeue"  # send the bound task again


class Hold(StrEnum):
    """Why a finding is not acted on in this run."""

    AWAITING_GRACE = "awaiting_grace"  # row missing once: maybe a producer not yet committed
    ROW_CAME_BACK = "row_came_back"  # missing at first, present at the re-check: live
    REPORT_ONLY = "report_only"  # unreadable messages, and lost rows under stuck_action=report
    BREAKER = "breaker"  # the circuit breaker refused the plan


# Hazards a cleanup removes (queued copies only): an extra copy of a duplicated task id, and a
# message past its `expires`. Neither depends on a row, so neither waits for a grace period or
# counts towards the circuit breaker. An ETA beyond the visibility timeout is reported only: the
# fix is the transport's visibility_timeout, not removing the task.
REMOVABLE_HAZARDS = (FindingKind.DUPLICATE, FindingKind.EXPIRED_WAITING)


@dataclass(frozen=True)
class Policy:
    grace_s: float = 60.0
    max_orphan_ratio: float = 0.5
    max_orphans: int = 0  # 0: no absolute limit
    stuck_action: StuckAction = StuckAction.REPORT
    visibility_timeout_s: float = 3600.0


@dataclass(frozen=True)
class Planned:
    action: Action
    finding: Finding


@dataclass(frozen=True)
class Plan:
    actions: tuple[Planned, ...] = ()
    held: tuple[tuple[Finding, Hold], ...] = ()
    refused: str = ""  # non-empty when the breaker refused the orphan actions
    managed_messages: int = 0

    def of(self, *kinds: Action) -> list[Finding]:
        return [p.finding for p in self.actions if p.action in kinds]

    def counts(self) -> dict[str, int]:
        counts = Counter(p.action.value for p in self.actions)
        counts.update(f"held_{hold.value}" for _, hold in self.held)
        return dict(counts)


@dataclass(frozen=True)
class Recheck:
    """Outcome of judging again, after the grace period, what rested on a missing row."""

    still_bad: frozenset[str] = frozenset()  # recheck_key() of findings that held up
    checked_at: float | None = None  # None: no re-check was made in this run


def recheck_key(finding: Finding) -> str:
    if finding.kind is FindingKind.LOST:
        return f"row:{finding.db_id}"
    return f"msg:{finding.task_id}"


def confirmed(finding: Finding, recheck: Recheck) -> bool:
    """A finished row is final; a missing row must still be missing after the grace period."""
    if finding.kind is FindingKind.ORPHAN and finding.reason.certain:
        return True
    return recheck_key(finding) in recheck.still_bad


def orphan_action(finding: Finding, workers_alive: bool, now: float, policy: Policy) -> Action:
    """Pull a message out only where no live worker can be holding it."""
    where = finding.location.where
    if where is Where.QUEUE:
        return Action.QUARANTINE
    if where is Where.UNACKED:
        taken_at = finding.taken_at
        stale = taken_at is not None and now - taken_at > policy.visibility_timeout_s
        return Action.QUARANTINE_UNACKED if (stale or not workers_alive) else Action.REVOKE
    return Action.REVOKE  # active / reserved / scheduled on a live worker


def breaker_verdict(orphans: int, managed: int, policy: Policy) -> str:
    """A plan that is mostly orphans is what a wrong database URL or table name looks like."""
    if policy.max_orphans and orphans > policy.max_orphans:
        return (
            f"{orphans} confirmed orphans exceed cleanup.max_orphans={policy.max_orphans}; "
            "check the database URL and table mapping, or raise the limit explicitly "
            "(--max-orphans)"
        )
    if managed and orphans / managed > policy.max_orphan_ratio:
        return (
            f"{orphans} of {managed} managed messages ({orphans / managed:.0%}) would be "
            f"removed, above cleanup.max_orphan_ratio={policy.max_orphan_ratio}; check the "
            "database URL and table mapping, or raise the limit explicitly "
            "(--max-orphan-ratio)"
        )
    return ""


def lost_action(policy: Policy) -> Action | None:
    return {StuckAction.MARK_FAILED: Action.MARK_FAILED, StuckAction.REQUEUE: Action.REQUEUE}.get(
        policy.stuck_action
    )


def make_plan(
    findings: Sequence[Finding],
    *,
    managed_messages: int,
    workers_alive: bool,
    now: float,
    policy: Policy,
    recheck: Recheck,
) -> Plan:
    actions: list[Planned] = []
    held: list[tuple[Finding, Hold]] = []
    orphan_actions: list[Planned] = []
    orphan_ids = {f.task_id for f in findings if f.kind is FindingKind.ORPHAN}
    hazard_targets: set[tuple[str, str, str]] = set()
    for finding in findings:
        if finding.kind is FindingKind.ORPHAN:
            if not confirmed(finding, recheck):
                hold = Hold.AWAITING_GRACE if recheck.checked_at is None else Hold.ROW_CAME_BACK
                held.append((finding, hold))
                continue
            action = orphan_action(finding, workers_alive, now, policy)
            orphan_actions.append(Planned(action, finding))
        elif finding.kind in REMOVABLE_HAZARDS:
            loc = finding.location
            target = (finding.task_id, loc.key, loc.delivery_tag)
            if finding.task_id in orphan_ids or target in hazard_targets:
                continue  # an orphan's copies follow the orphan rules; one message, one action
            if loc.where is Where.QUEUE and loc.delivery_tag:
                hazard_targets.add(target)
                actions.append(Planned(Action.QUARANTINE, finding))
            else:  # unacked: in a worker's hands, which runs it once (or discards it)
                held.append((finding, Hold.REPORT_ONLY))
        elif finding.kind is FindingKind.STALE_RESULT:
            actions.append(Planned(Action.DELETE_RESULT, finding))
        elif finding.kind is FindingKind.LOST:
            lost = lost_action(policy)
            if lost is None:
                held.append((finding, Hold.REPORT_ONLY))
            elif confirmed(finding, recheck):
                actions.append(Planned(lost, finding))
            else:
                held.append((finding, Hold.AWAITING_GRACE))
        else:
            held.append((finding, Hold.REPORT_ONLY))
    refused = breaker_verdict(len(_distinct(orphan_actions)), managed_messages, policy)
    if refused:
        held.extend((p.finding, Hold.BREAKER) for p in orphan_actions)
        orphan_actions = []
    return Plan(tuple(orphan_actions + actions), tuple(held), refused, managed_messages)


def needs_recheck(findings: Iterable[Finding], policy: Policy) -> list[Finding]:
    """Findings whose verdict rests on a row being missing: they wait for the grace period."""
    acting_on_lost = lost_action(policy) is not None
    return [
        f
        for f in findings
        if (f.kind is FindingKind.ORPHAN and not f.reason.certain)
        or (f.kind is FindingKind.LOST and acting_on_lost)
    ]


def _distinct(planned: Iterable[Planned]) -> set[str]:
    return {p.finding.task_id for p in planned}
