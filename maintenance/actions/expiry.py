"""`cleanup_expired_tasks`: what piles up with time, removed under the same safety as orphans.

Results past retention and lost rows go through the cleanup run (lock, grace re-check, history);
then the quarantine past its retention is purged and control reply lists nobody reads are dropped.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import structlog

from maintenance.actions.run import CleanupRun, RunOptions
from maintenance.core.models import FindingKind, Outcome
from maintenance.services import Adapters

log = structlog.get_logger(__name__)

# The nightly expiry run also removes the extra copies of duplicated task ids and messages past
# their `expires`: queue hygiene that depends on no row (see core.plan.REMOVABLE_HAZARDS).
EXPIRED_KINDS = frozenset(
    {
        FindingKind.STALE_RESULT,
        FindingKind.LOST,
        FindingKind.DUPLICATE,
        FindingKind.EXPIRED_WAITING,
    }
)
# A live control client pops its replies within milliseconds; below this idle time a reply list
# is never judged abandoned, whatever the grace period says.
MIN_REPLY_IDLE_S = 5.0


def reply_idle_s(grace_s: float) -> float:
    """A reply unread for a whole grace period has no reader left."""
    return max(grace_s, MIN_REPLY_IDLE_S)


def cleanup_expired(adapters: Adapters, cleanup: CleanupRun, options: RunOptions) -> dict[str, Any]:
    """One expiry run; returns the summary the Celery task hands back.

    The history run comes first and holds the lock: if another run holds it, `LockHeld` propagates
    before anything else is touched. Purge and sweep only follow a run that was not cut short.
    """
    options = dataclasses.replace(options, kinds=EXPIRED_KINDS)
    result = cleanup.run(options)
    summary = result.summary()
    if result.outcome is not Outcome.OK or options.should_stop():
        return summary
    settings = adapters.settings
    retention_s = settings.cleanup.quarantine_retention_days * 86400
    summary["quarantine_purged"] = adapters.quarantine.purge_expired(retention_s)
    if options.should_stop():
        return summary
    leftovers = adapters.reply_lists.sweep(reply_idle_s(settings.cleanup.grace_s))
    summary["reply_lists_removed"] = leftovers.removed
    summary["reply_lists_expiring"] = leftovers.expiring
    log.info(
        "🧹 expired maintenance state removed",
        run_id=result.run_id,
        quarantine_purged=summary["quarantine_purged"],
        reply_lists_removed=leftovers.removed,
        reply_lists_expiring=leftovers.expiring,
    )
    return summary
