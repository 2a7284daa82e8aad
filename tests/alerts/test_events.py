"""Alert decisions and payloads, as tables: no servers needed."""

from __future__ import annotations

import json
from typing import Any

import pytest

from maintenance.alerts.events import AlertEvent, Trigger, decide, mail_text, webhook_body
from maintenance.alerts.settings import AlertSettings

DEFAULTS = AlertSettings()
QUIET = AlertSettings(min_orphans=0, min_lost=0, on_failure=False, on_breaker=False)


@pytest.mark.parametrize(
    ("alerts", "counts", "outcome", "expected"),
    [
        (DEFAULTS, {"orphan": 0, "lost": 0}, "ok", None),
        (DEFAULTS, {"orphan": 1}, "ok", (Trigger.ORPHANS,)),
        (AlertSettings(min_orphans=10), {"orphan": 9}, "ok", None),
        (AlertSettings(min_orphans=10), {"orphans": 10}, "ok", (Trigger.ORPHANS,)),
        (DEFAULTS, {"lost": 2}, "ok", (Trigger.LOST,)),
        (DEFAULTS, {}, "failed", (Trigger.RUN_FAILED,)),
        (DEFAULTS, {}, "refused", (Trigger.BREAKER,)),
        (
            DEFAULTS,
            {"orphan": 5, "lost": 1},
            "failed",
            (Trigger.RUN_FAILED, Trigger.ORPHANS, Trigger.LOST),
        ),
        (QUIET, {"orphan": 5, "lost": 5}, "failed", None),
        (DEFAULTS, {"orphan": True, "lost": "3"}, "ok", None),
    ],
)
def test_decide(
    alerts: AlertSettings,
    counts: dict[str, Any],
    outcome: str,
    expected: tuple[Trigger, ...] | None,
) -> None:
    """Thresholds of 0 switch a trigger off; odd count values never fire."""
    event = decide(alerts, counts, outcome)
    assert (event.triggers if event else None) == expected


def test_payloads_carry_summary_and_top_findings() -> None:
    """The webhook JSON and the mail text both show the reason, counts and findings."""
    finding = {
        "kind": "orphan",
        "reason": "row_missing",
        "task_id": "cid-1",
        "task_name": "demo.process_video",
        "db_id": "r1",
        "location": {"where": "queue", "queue": "video"},
    }
    event = AlertEvent(
        (Trigger.ORPHANS,),
        ("3 orphaned messages found",),
        "ok",
        {"counts": {"orphan": 3}, "top_findings": [finding] * 30},
    )
    doc = json.loads(webhook_body(event, "host-a", 12.5))
    assert doc["event"] == ["orphans"] and doc["title"] == "3 orphaned messages found"
    assert doc["summary"]["counts"] == {"orphan": 3} and len(doc["top_findings"]) == 20
    assert "top_findings" not in doc["summary"]
    subject, body = mail_text(event, "host-a")
    assert subject == "[task-maintenance] 3 orphaned messages found"
    assert "orphan: 3" in body and "cid-1" in body and "queue video" in body
