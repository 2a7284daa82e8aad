"""Pure alert decisions and payloads: whether a run's result deserves an alert, and what it says.

Decisions are data (tested with a table, no servers): `decide` turns thresholds, counts and an
outcome into the reasons to alert, and the payload builders turn an event into the webhook's JSON
document and the e-mail's plain text.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from maintenance.alerts.settings import AlertSettings

TOP_FINDINGS = 20  # findings carried by one alert


class Trigger(StrEnum):
    ORPHANS = "orphans"  # a scan found at least min_orphans orphans
    LOST = "lost"  # a scan found at least min_lost lost rows
    RUN_FAILED = "run_failed"
    BREAKER = "breaker"  # the circuit breaker refused a plan
    TEST = "test"  # `task-cleanup notify --test`


@dataclass(frozen=True)
class AlertEvent:
    triggers: tuple[Trigger, ...]
    reasons: tuple[str, ...]  # one human sentence per trigger
    outcome: str = ""
    summary: dict[str, Any] = field(default_factory=dict)

    @property
    def title(self) -> str:
        return "; ".join(self.reasons) or "task-maintenance alert"


# A run's counts may name the same thing differently (a scan's `orphan`, a run's `orphans`).
_ORPHAN_KEYS = ("orphan", "orphans", "orphans_found")
_LOST_KEYS = ("lost", "lost_rows", "lost_found")


def decide(alerts: AlertSettings, counts: Mapping[str, Any], outcome: str) -> AlertEvent | None:
    """The triggers that fire for this result, or None when nothing deserves an alert."""
    fired: list[tuple[Trigger, str]] = []
    if alerts.on_failure and outcome == "failed":
        fired.append((Trigger.RUN_FAILED, "a maintenance run failed"))
    if alerts.on_breaker and outcome == "refused":
        fired.append((Trigger.BREAKER, "the circuit breaker refused a cleanup plan"))
    orphans, lost = _first_count(counts, _ORPHAN_KEYS), _first_count(counts, _LOST_KEYS)
    if 0 < alerts.min_orphans <= orphans:
        fired.append(
            (
                Trigger.ORPHANS,
                f"{orphans:,} orphaned messages found (threshold {alerts.min_orphans:,})",
            )
        )
    if 0 < alerts.min_lost <= lost:
        fired.append((Trigger.LOST, f"{lost:,} lost rows found (threshold {alerts.min_lost:,})"))
    if not fired:
        return None
    return AlertEvent(tuple(t for t, _ in fired), tuple(r for _, r in fired), outcome)


def _first_count(counts: Mapping[str, Any], keys: tuple[str, ...]) -> int:
    for key in keys:
        value = counts.get(key)
        if isinstance(value, int | float) and not isinstance(value, bool):
            return int(value)
    return 0


def webhook_document(event: AlertEvent, host: str, sent_at: float) -> dict[str, Any]:
    summary = dict(event.summary)
    findings = list(summary.pop("top_findings", None) or summary.pop("findings", None) or [])
    return {
        "source": "task-maintenance",
        "host": host,
        "sent_at": sent_at,
        "event": [t.value for t in event.triggers],
        "title": event.title,
        "outcome": event.outcome or None,
        "summary": summary,
        "top_findings": findings[:TOP_FINDINGS],
    }


def webhook_body(event: AlertEvent, host: str, sent_at: float) -> bytes:
    """The exact bytes that are signed and sent."""
    return json.dumps(
        webhook_document(event, host, sent_at), default=str, ensure_ascii=False, sort_keys=True
    ).encode()


def mail_text(event: AlertEvent, host: str) -> tuple[str, str]:
    """(subject, plain-text body)."""
    summary = event.summary
    lines = [f"task-maintenance on {host}: {event.title}", ""]
    if event.outcome:
        lines.append(f"outcome: {event.outcome}")
    counts = summary.get("counts") or {}
    if counts:
        lines.append("counts:")
        lines.extend(f"  {key}: {value}" for key, value in counts.items())
    findings = list(summary.get("top_findings") or summary.get("findings") or [])
    if findings:
        lines += ["", f"top findings ({min(len(findings), TOP_FINDINGS)} shown):"]
        lines.extend(_finding_text(f) for f in findings[:TOP_FINDINGS])
    for note in summary.get("notes") or ():
        lines.append(f"note: {note}")
    return f"[task-maintenance] {event.title}", "\n".join(lines) + "\n"


def _finding_text(doc: Mapping[str, Any]) -> str:
    where = (doc.get("location") or {}).get("where", "?")
    queue = (doc.get("location") or {}).get("queue")
    row = f" row={doc['db_id']}" if doc.get("db_id") else ""
    return (
        f"  {doc.get('kind')} {doc.get('reason')} {doc.get('task_id') or '-'} "
        f"{doc.get('task_name') or ''}{row} at {where}{f' {queue}' if queue else ''}"
    )
