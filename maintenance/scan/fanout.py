"""The fan-out scan's pure half: how a whole scan splits into parts, and how parts merge back.

A part is one configured queue (all its priority bands), the unacked store, the live-worker view
or one shard of the result keys. Result keys are sharded by the first character of the task id,
each shard a SCAN with MATCH: SCAN cursors are not stable partitions (a rehash moves keys between
cursor ranges), a key's name is. Celery task ids are uuids, so 16 hex digits make 16 even shards
(`shards` < 16 groups digits: shard i takes the digits d with d % shards == i); a catch-all shard
takes every id that does not start with a lowercase hex digit (uppercase, other text, the bare
prefix). Each key's first character falls in exactly one character class, so no key is read by
two shards and none by no shard (tests/scan/test_fanout.py proves it on real Redis).

What a part found travels as a JSON document (`part_result`); its findings inline when few,
else in a Redis list of our own (`PartFindingsList`, written by actions/fanout.py) that the
document names.
"""

from __future__ import annotations

import base64
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, fields
from typing import Any

from maintenance.adapters.redis_layout import ResultLayout
from maintenance.core.models import Finding, FindingKind, Location, Message, Reason, Where
from maintenance.core.report import ScanReport

HEX_DIGITS = "0123456789abcdef"
WORKERS_PART = "workers"
HELD_PART = "held"  # judged in the merge step: what workers hold that no Redis part saw
CATCH_ALL = "results:other"


@dataclass(frozen=True)
class Part:
    """One part of a whole scan; exactly one of its scopes is set."""

    name: str
    queues: tuple[str, ...] = ()
    unacked: bool = False
    results_shard: tuple[str, ...] | None = None  # SCAN MATCH patterns; None: no result keys

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, doc: dict[str, Any]) -> Part:
        shard = doc.get("results_shard")
        return cls(
            name=str(doc["name"]),
            queues=tuple(doc.get("queues") or ()),
            unacked=bool(doc.get("unacked")),
            results_shard=None if shard is None else tuple(shard),
        )


def result_shards(task_keyprefix: str, shards: int) -> list[tuple[str, tuple[str, ...]]]:
    """(name, MATCH patterns) per result shard: `shards` hex-digit classes and the catch-all."""
    shards = max(1, min(len(HEX_DIGITS), shards))
    prefix = ResultLayout(task_keyprefix).match[:-1]  # glob-escaped, without the final "*"
    out: list[tuple[str, tuple[str, ...]]] = []
    for i in range(shards):
        digits = "".join(d for j, d in enumerate(HEX_DIGITS) if j % shards == i)
        out.append((f"results:{digits}", (f"{prefix}[{digits}]*",)))
    # Not a lowercase hex digit first, or nothing at all after the prefix (an exact match).
    out.append((CATCH_ALL, (f"{prefix}[^0-9a-f]*", prefix)))
    return out


def split(
    queues: Sequence[str], *, unacked: bool, results: bool, task_keyprefix: str, shards: int
) -> list[Part]:
    """The Redis parts, in the single scan's report order (queues, unacked, results); the
    live-worker view is a part of its own, taken first (`WORKERS_PART`)."""
    parts = [Part(f"queue:{q}", queues=(q,)) for q in queues]
    if unacked:
        parts.append(Part("unacked", unacked=True))
    if results:
        parts.extend(
            Part(name, results_shard=p) for name, p in result_shards(task_keyprefix, shards)
        )
    return parts


# -- codecs: frozen models <-> JSON documents ----------------------------------------------------
def location_doc(loc: Location) -> dict[str, Any]:
    return {f.name: getattr(loc, f.name) for f in fields(Location)}


def location_from(doc: dict[str, Any]) -> Location:
    return Location(**{**doc, "where": Where(doc["where"])})


def finding_doc(f: Finding) -> dict[str, Any]:
    doc = {fl.name: getattr(f, fl.name) for fl in fields(Finding)}
    doc.update(kind=f.kind.value, reason=f.reason.value, location=location_doc(f.location))
    return doc


def finding_from(doc: dict[str, Any]) -> Finding:
    return Finding(
        **{
            **doc,
            "kind": FindingKind(doc["kind"]),
            "reason": Reason(doc["reason"]),
            "location": location_from(doc["location"]),
        }
    )


def message_doc(m: Message) -> dict[str, Any]:
    doc = {fl.name: getattr(m, fl.name) for fl in fields(Message)}
    doc.update(
        location=location_doc(m.location),
        problem=None if m.problem is None else m.problem.value,
        raw=None if m.raw is None else base64.b64encode(m.raw).decode(),
    )
    return doc


def message_from(doc: dict[str, Any]) -> Message:
    raw, problem = doc.get("raw"), doc.get("problem")
    return Message(
        **{
            **doc,
            "location": location_from(doc["location"]),
            "problem": None if problem is None else Reason(problem),
            "raw": None if raw is None else base64.b64decode(raw),
        }
    )


# -- a part's result, and the merge -----------------------------------------------------------
def part_result(
    name: str, report: ScanReport, seen_held: Iterable[str], findings: dict[str, Any]
) -> dict[str, Any]:
    """A part's compact answer; `findings` is {"inline": [...]} or {"key": ..., "count": n}."""
    return {
        "part": name,
        "ok": True,
        "started_at": report.started_at,
        "finished_at": report.finished_at,
        "places": {place: vars(stats) for place, stats in report.places.items()},
        "counts": report.counts(),
        "reasons": report.reasons(),
        "notes": list(report.notes),
        "results_scanned": report.results_scanned,
        "workers": list(report.workers),
        "workers_inspected": report.workers_inspected,
        "tombstones": {
            key: sorted(base64.b64encode(p).decode() for p in payloads)
            for key, payloads in report.tombstones.items()
        },
        "tombstones_seen": report.tombstones_seen,
        "seen_held": sorted(seen_held),
        "findings": findings,
    }


def part_failed(name: str, exc: BaseException) -> dict[str, Any]:
    return {"part": name, "ok": False, "error": f"{type(exc).__name__}: {exc}"}


def failures(docs: Iterable[dict[str, Any]]) -> list[str]:
    """'part (error)' for every part that did not finish."""
    return [
        f"{d.get('part', '?')} ({d.get('error', 'no answer')})" for d in docs if not d.get("ok")
    ]


FindingLoader = Callable[[dict[str, Any]], Iterable[Finding]]


def merge(parts: Sequence[dict[str, Any]], load: FindingLoader) -> ScanReport:
    """One report from every part's answer, findings in part order (the single scan's order).

    Lost rows are not judged in fan-out mode (each part sees only its share of the ids), said
    once in the notes; notes several parts wrote alike appear once."""
    report = ScanReport(
        started_at=min((p["started_at"] for p in parts), default=0.0),
        finished_at=max((p["finished_at"] for p in parts), default=0.0),
    )
    notes: dict[str, None] = {}
    for doc in parts:
        for place, counts in doc["places"].items():
            stats = report.place(place)
            for key, value in counts.items():
                setattr(stats, key, getattr(stats, key) + int(value))
        report.findings.extend(load(doc["findings"]))
        notes.update(dict.fromkeys(doc["notes"]))
        report.results_scanned += int(doc["results_scanned"])
        for key, payloads in doc["tombstones"].items():
            report.tombstones.setdefault(key, set()).update(base64.b64decode(p) for p in payloads)
        report.tombstones_seen += int(doc["tombstones_seen"])
        if doc["part"] == HELD_PART and doc["workers_inspected"]:
            report.workers, report.workers_inspected = tuple(doc["workers"]), True
    report.notes.extend(notes)
    return report
