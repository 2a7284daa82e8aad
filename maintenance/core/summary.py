"""A scan's short, bounded summary: what the monitor and the alerts show without re-scanning.

A full scan of a million messages takes seconds and reads everything; the monitor refreshes every
few seconds all day. So each scan leaves this summary behind (counts, reasons, places and a
bounded list of its most important findings), and the live view reads only that.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from maintenance.core.finding_store import FIRSTS_KEPT, Findings
from maintenance.core.models import Finding, FindingKind
from maintenance.core.report import ScanReport

TOP_FINDINGS = 20  # findings kept per summary: enough to act on, small enough for one Redis value
TOP_TASK_NAMES = 20  # task names counted per finding kind: bounded label sets for the metrics

# Which findings a person should see first when only a few can be shown.
_KIND_ORDER = {
    FindingKind.ORPHAN: 0,
    FindingKind.LOST: 1,
    FindingKind.UNREADABLE: 2,
    FindingKind.STALE_RESULT: 3,
    FindingKind.DUPLICATE: 4,
    FindingKind.ETA_BEYOND_VISIBILITY: 5,
    FindingKind.EXPIRED_WAITING: 6,
}


@dataclass(frozen=True)
class ScanSummary:
    at: float  # when the scan finished (unix seconds)
    started_at: float
    source: str  # who scanned: check, monitor, cleanup, worker
    counts: dict[str, int]
    reasons: dict[str, int] = field(default_factory=dict)
    places: dict[str, dict[str, int]] = field(default_factory=dict)
    managed_messages: int = 0
    results_scanned: int = 0
    workers: int = 0
    lost_checked: bool = False
    findings_total: int = 0
    top_findings: tuple[dict[str, Any], ...] = ()
    notes: tuple[str, ...] = ()
    # Per finding kind, the task names with the most findings and their counts (at most
    # TOP_TASK_NAMES each): the metrics' `name` label, as celery-exporter's task series have.
    by_task_name: dict[str, dict[str, int]] = field(default_factory=dict)

    @property
    def duration_s(self) -> float:
        return max(0.0, self.at - self.started_at)

    @property
    def consistent(self) -> bool:
        return self.findings_total == 0

    @classmethod
    def from_report(cls, report: ScanReport, source: str, top: int = TOP_FINDINGS) -> ScanSummary:
        return cls(
            at=report.finished_at or report.started_at,
            started_at=report.started_at,
            source=source,
            counts=report.counts(),
            reasons=report.reasons(),
            places={name: dict(vars(stats)) for name, stats in sorted(report.places.items())},
            managed_messages=report.managed_messages,
            results_scanned=report.results_scanned,
            workers=len(report.workers),
            lost_checked=report.lost_checked,
            findings_total=len(report.findings),
            top_findings=tuple(f.as_dict() for f in top_findings(report.findings, top)),
            notes=tuple(report.notes[:10]),
            by_task_name=count_by_task_name(report.findings),
        )

    def as_dict(self) -> dict[str, Any]:
        return {
            "at": self.at,
            "started_at": self.started_at,
            "duration_s": round(self.duration_s, 3),
            "source": self.source,
            "consistent": self.consistent,
            "counts": dict(self.counts),
            "reasons": dict(self.reasons),
            "places": {k: dict(v) for k, v in self.places.items()},
            "managed_messages": self.managed_messages,
            "results_scanned": self.results_scanned,
            "workers": self.workers,
            "lost_checked": self.lost_checked,
            "findings_total": self.findings_total,
            "top_findings": list(self.top_findings),
            "notes": list(self.notes),
            "by_task_name": {k: dict(v) for k, v in self.by_task_name.items()},
        }

    @classmethod
    def from_dict(cls, doc: Mapping[str, Any]) -> ScanSummary:
        """Tolerant of missing keys: a summary written by an older version still reads."""
        return cls(
            at=float(doc.get("at", 0.0)),
            started_at=float(doc.get("started_at", doc.get("at", 0.0))),
            source=str(doc.get("source", "")),
            counts={str(k): int(v) for k, v in dict(doc.get("counts") or {}).items()},
            reasons={str(k): int(v) for k, v in dict(doc.get("reasons") or {}).items()},
            places={str(k): dict(v) for k, v in dict(doc.get("places") or {}).items()},
            managed_messages=int(doc.get("managed_messages", 0)),
            results_scanned=int(doc.get("results_scanned", 0)),
            workers=int(doc.get("workers", 0)),
            lost_checked=bool(doc.get("lost_checked", False)),
            findings_total=int(
                doc.get(
                    "findings_total", sum(int(v) for v in dict(doc.get("counts") or {}).values())
                )
            ),
            top_findings=tuple(doc.get("top_findings") or ()),
            notes=tuple(str(n) for n in doc.get("notes") or ()),
            by_task_name={
                str(kind): {str(name): int(n) for name, n in dict(names).items()}
                for kind, names in dict(doc.get("by_task_name") or {}).items()
            },
        )


def count_by_task_name(
    findings: Iterable[Finding], limit: int = TOP_TASK_NAMES
) -> dict[str, dict[str, int]]:
    """Findings per kind and task name, the `limit` most frequent names of each kind. A store
    has them counted already: a million stale results are not walked again."""
    counts: dict[str, Counter[str]]
    if isinstance(findings, Findings):
        counts = findings.task_name_counts()
    else:
        counts = {}
        for finding in findings:
            if finding.task_name:
                counts.setdefault(finding.kind.value, Counter())[finding.task_name] += 1
    return {kind: dict(names.most_common(limit)) for kind, names in sorted(counts.items())}


def top_findings(findings: Iterable[Finding], limit: int = TOP_FINDINGS) -> list[Finding]:
    """Orphans first (they are what cleanup acts on), then lost rows, unreadable, stale results.

    The first `limit` of each kind, in report order: a store keeps them as findings are added,
    other iterables take one pass (sorting a million findings to keep twenty took a second)."""
    firsts: dict[FindingKind, list[Finding]] = {}
    if isinstance(findings, Findings) and limit <= FIRSTS_KEPT:
        firsts = {kind: found[:limit] for kind, found in findings.firsts().items()}
    else:
        for finding in findings:
            kept = firsts.setdefault(finding.kind, [])
            if len(kept) < limit:
                kept.append(finding)
    ranked = [f for kind in sorted(firsts, key=_KIND_ORDER.__getitem__) for f in firsts[kind]]
    return ranked[:limit]


def trend(latest: ScanSummary | None, previous: ScanSummary | None) -> dict[str, int | None]:
    """Per finding kind, the change since the previous scan; None where nothing compares."""
    if latest is None:
        return {}
    kinds = list(latest.counts) + [
        k for k in (previous.counts if previous else {}) if k not in latest.counts
    ]
    if previous is None:
        return {kind: None for kind in kinds}
    return {kind: latest.counts.get(kind, 0) - previous.counts.get(kind, 0) for kind in kinds}
