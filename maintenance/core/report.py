"""The result of one reconciliation scan: counts per place, and the findings."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from maintenance.core.finding_store import Findings
from maintenance.core.models import Finding, FindingKind, Message, Where


@dataclass
class PlaceStats:
    """Counts for one queue band, the unacked store, or the workers."""

    messages: int = 0
    managed: int = 0
    unmanaged: int = 0
    orphans: int = 0
    unreadable: int = 0


@dataclass
class ScanReport:
    started_at: float
    finished_at: float = 0.0
    # Bounded memory whatever their number: past a bound they wait in a temporary file.
    findings: Findings = field(default_factory=Findings)
    places: dict[str, PlaceStats] = field(default_factory=dict)
    results_scanned: int = 0
    workers: tuple[str, ...] = ()
    workers_inspected: bool = False
    lost_checked: bool = False
    notes: list[str] = field(default_factory=list)
    only: str | None = None
    # A scan of one id (`only`): every copy of it seen, live or not, where an operator may act.
    sightings: list[Message] = field(default_factory=list)
    # Tombstones of ours still in a list (a quarantine that was cut short): list key -> the
    # distinct payloads, which the next cleanup removes. Never counted as messages.
    tombstones: dict[str, set[bytes]] = field(default_factory=dict)
    tombstones_seen: int = 0

    def place(self, name: str) -> PlaceStats:
        stats = self.places.get(name)
        if stats is None:
            stats = self.places[name] = PlaceStats()
        return stats

    @property
    def consistent(self) -> bool:
        return not self.findings

    @property
    def managed_messages(self) -> int:
        return sum(s.managed for s in self.places.values())

    def counts(self) -> dict[str, int]:
        """Kept by the store as findings are added: no walk over a million findings."""
        return {kind.value: self.findings.count_of(kind) for kind in FindingKind}

    def reasons(self) -> dict[str, int]:
        return self.findings.reason_counts()

    def of_kind(self, kind: FindingKind) -> KindView:
        """The findings of one kind: iterable (again) and sized, never all in memory."""
        return KindView(self.findings, kind)

    def close(self) -> None:
        """Release the findings' temporary file; the report has no findings after it."""
        self.findings.close()

    def as_dict(self, with_findings: bool = True) -> dict[str, Any]:
        doc: dict[str, Any] = {
            "consistent": self.consistent,
            "started_at": self.started_at,
            "duration_s": round(self.finished_at - self.started_at, 3),
            "counts": self.counts(),
            "reasons": self.reasons(),
            "places": {name: vars(stats) for name, stats in sorted(self.places.items())},
            "results_scanned": self.results_scanned,
            "workers": list(self.workers),
            "workers_inspected": self.workers_inspected,
            "lost_checked": self.lost_checked,
            "notes": list(self.notes),
            "leftovers": {"tombstones": self.tombstones_seen},
        }
        if self.only is not None:
            doc["task_id"] = self.only
        if with_findings:
            doc["findings"] = [f.as_dict() for f in self.findings]
        return doc


class KindView:
    """The findings of one kind of a store, read from it on each iteration."""

    def __init__(self, findings: Findings, kind: FindingKind):
        self._findings, self._kind = findings, kind

    def __iter__(self) -> Iterator[Finding]:
        return self._findings.of_kind(self._kind)

    def __len__(self) -> int:
        return self._findings.count_of(self._kind)

    def __bool__(self) -> bool:
        return len(self) > 0


def place_name(where: Where, queue: str = "", band: int = 0) -> str:
    if where is Where.QUEUE:
        return f"{queue}" if not band else f"{queue}[priority {band}]"
    return where.value
