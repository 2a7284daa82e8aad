"""The result of one reconciliation scan: counts per place, and the findings."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

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
    findings: list[Finding] = field(default_factory=list)
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
        counts = Counter(f.kind.value for f in self.findings)
        return {kind.value: counts.get(kind.value, 0) for kind in FindingKind}

    def reasons(self) -> dict[str, int]:
        return dict(Counter(f"{f.kind.value}:{f.reason.value}" for f in self.findings))

    def of_kind(self, kind: FindingKind) -> list[Finding]:
        return [f for f in self.findings if f.kind is kind]

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


def place_name(where: Where, queue: str = "", band: int = 0) -> str:
    if where is Where.QUEUE:
        return f"{queue}" if not band else f"{queue}[priority {band}]"
    return where.value
