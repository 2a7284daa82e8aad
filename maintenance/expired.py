"""`cleanup_expired_tasks`: what piles up with time, removed under the same safety as orphans.

Results past retention and lost rows go through `CleanupService` (lock, grace re-check, history);
then the quarantine past its retention is purged and control reply lists nobody reads are dropped.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import structlog

from maintenance.adapters.leftovers import ReplyListSweeper
from maintenance.adapters.quarantine import Quarantine
from maintenance.cleanup import CleanupService, RunOptions
from maintenance.core.models import FindingKind
from maintenance.services import Services

log = structlog.get_logger(__name__)

EXPIRED_KINDS = frozenset({FindingKind.STALE_RESULT, FindingKind.LOST})
# A live control client pops its replies within milliseconds; below this idle time a reply list
# is never judged abandoned, whatever the grace period says.
MIN_REPLY_IDLE_S = 5.0


def reply_idle_s(services: Services) -> float:
    """A reply unread for a whole grace period has no reader left."""
    return max(services.settings.cleanup.grace_s, MIN_REPLY_IDLE_S)


def cleanup_expired(services: Services, options: RunOptions) -> dict[str, Any]:
    """One expiry run; returns the summary the Celery task hands back.

    The history run comes first and holds the lock: if another run holds it, `LockHeld` propagates
    before anything else is touched. Purge and sweep only follow a run that was not cut short.
    """
    options = dataclasses.replace(options, kinds=EXPIRED_KINDS)
    result = CleanupService(services).run(options)
    summary = result.summary()
    if result.outcome != "ok" or options.should_stop():
        return summary
    retention_s = services.settings.cleanup.quarantine_retention_days * 86400
    quarantine = Quarantine(services.broker, services.layout, services.own_keys)
    summary["quarantine_purged"] = quarantine.purge_expired(retention_s)
    if options.should_stop():
        return summary
    sweeper = ReplyListSweeper(services.broker, services.layout,
                               services.app.control.mailbox.reply_exchange.name,
                               chunk_size=services.settings.redis.chunk_size)
    leftovers = sweeper.sweep(reply_idle_s(services))
    summary["reply_lists_removed"] = leftovers.removed
    summary["reply_lists_expiring"] = leftovers.expiring
    log.info("🧹 expired maintenance state removed", run_id=result.run_id,
             quarantine_purged=summary["quarantine_purged"], reply_lists_removed=leftovers.removed,
             reply_lists_expiring=leftovers.expiring)
    return summary
