"""The last two scan summaries in Redis, so the monitor can show findings and their trend cheaply.

Two small string keys under our own prefix: `<prefix>:scan:latest` and `<prefix>:scan:previous`.
Saving shifts latest to previous and writes the new one in one server-side script, so two
scanners finishing at once never leave previous == latest or lose a summary half-written.
"""

from __future__ import annotations

import json

import redis
import structlog

from maintenance.adapters.redis_layout import OwnKeys
from maintenance.adapters.redis_reader import broker_errors
from maintenance.core.report import ScanReport
from maintenance.core.summary import ScanSummary
from maintenance.errors import BrokerUnavailable

log = structlog.get_logger(__name__)

_SHIFT_AND_SET = """
local current = redis.call('GET', KEYS[1])
if current then redis.call('SET', KEYS[2], current) end
redis.call('SET', KEYS[1], ARGV[1])
return 1
"""


class ScanSummaryStore:
    def __init__(self, client: redis.Redis, own_keys: OwnKeys):
        self.client = client
        self.latest_key = own_keys.key("scan", "latest")
        self.previous_key = own_keys.key("scan", "previous")

    def save(self, summary: ScanSummary) -> None:
        body = json.dumps(summary.as_dict(), default=str, ensure_ascii=False)
        with broker_errors("saving the scan summary"):
            self.client.eval(_SHIFT_AND_SET, 2, self.latest_key, self.previous_key, body)

    def save_report(self, report: ScanReport, source: str) -> bool:
        """Save after a full scan; a failure is logged, never changes the scan's own verdict."""
        try:
            self.save(ScanSummary.from_report(report, source))
        except BrokerUnavailable as exc:
            log.warning("scan summary not saved", error=str(exc))
            return False
        return True

    def load(self) -> tuple[ScanSummary | None, ScanSummary | None]:
        """(latest, previous); None where no scan has been saved yet."""
        with broker_errors("reading the scan summaries"):
            latest, previous = self.client.mget([self.latest_key, self.previous_key])
        return decode(latest), decode(previous)


def decode(raw: bytes | str | None) -> ScanSummary | None:
    """A summary we cannot read is treated as absent, and logged: it is advisory data."""
    if raw is None:
        return None
    try:
        return ScanSummary.from_dict(json.loads(raw))
    except (ValueError, TypeError, AttributeError) as exc:
        log.warning("unreadable scan summary ignored", error=str(exc))
        return None
