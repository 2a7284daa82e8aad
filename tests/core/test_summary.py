"""The scan summary (pure): top findings, its dict form and the trend."""

from __future__ import annotations

from maintenance.core.finding_store import Findings
from maintenance.core.models import Finding, FindingKind, Location, Reason, Where
from maintenance.core.report import ScanReport
from maintenance.core.summary import ScanSummary, top_findings, trend

QUEUE = Location(Where.QUEUE, queue="q")


def finding(kind: FindingKind, reason: Reason, task_id: str) -> Finding:
    return Finding(kind, reason, task_id, "demo.process_video", "row-" + task_id, QUEUE)


def report_with(*findings: Finding, at: float = 100.0) -> ScanReport:
    report = ScanReport(started_at=at - 2, finished_at=at, findings=Findings(findings))
    report.place("q").messages = 5
    return report


def test_top_findings_put_orphans_first_and_are_bounded() -> None:
    """Orphans come first, then lost rows, unreadable, stale results; at most `limit`."""
    found = [
        finding(FindingKind.STALE_RESULT, Reason.RESULT_NO_TTL, "s"),
        finding(FindingKind.LOST, Reason.NO_MESSAGE, "l"),
        finding(FindingKind.ORPHAN, Reason.ROW_MISSING, "o1"),
        finding(FindingKind.ORPHAN, Reason.ROW_FINISHED, "o2"),
    ]
    assert [f.task_id for f in top_findings(found, 3)] == ["o1", "o2", "l"]


def test_summary_round_trips_through_its_dict_form() -> None:
    """What is saved as JSON reads back equal, with counts, places and findings."""
    summary = ScanSummary.from_report(
        report_with(finding(FindingKind.ORPHAN, Reason.ROW_MISSING, "a")), source="check"
    )
    again = ScanSummary.from_dict(summary.as_dict())
    assert again == summary
    assert again.counts["orphan"] == 1 and again.findings_total == 1
    assert again.places["q"]["messages"] == 5 and again.duration_s == 2.0
    assert again.top_findings[0]["task_id"] == "a"


def test_trend_compares_latest_with_previous() -> None:
    """The trend is the change per kind; without a previous scan every kind is new."""
    older = ScanSummary.from_report(
        report_with(finding(FindingKind.ORPHAN, Reason.ROW_MISSING, "a")), source="check"
    )
    newer = ScanSummary.from_report(
        report_with(
            finding(FindingKind.ORPHAN, Reason.ROW_MISSING, "a"),
            finding(FindingKind.ORPHAN, Reason.ROW_MISSING, "b"),
            finding(FindingKind.LOST, Reason.NO_MESSAGE, "c"),
        ),
        source="check",
    )
    changes = trend(newer, older)
    assert (changes["orphan"], changes["lost"], changes["unreadable"]) == (1, 1, 0)
    assert set(trend(newer, None).values()) == {None}
    assert trend(None, older) == {}
