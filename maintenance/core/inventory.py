"""What sits in the queues, by task name: the `queues` view and the selection of a `purge`. Pure.

Two shapes of the same reading:
- `Inventory` counts, per queue band, the messages by task name, those with an ETA and how far
  out, and the oldest one (the tail, which workers take next); and the `unacked` entries by age
  and task name. Fed a chunk at a time by the scan, in C-level loops on the usual chunk.
- `describe` reads one message in full for a listing or a filter: its ids, ETA, retries and an
  argument preview, never unpickled (a protocol-1 pickle body is not shown).
"""

from __future__ import annotations

import fnmatch
import re
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from itertools import compress
from operator import itemgetter
from typing import Any

import orjson

from maintenance.core.bindings import BindingTable
from maintenance.core.envelope import Quick, args_kwargs, read_envelope
from maintenance.core.hazards import parse_time
from maintenance.core.models import Finding, FindingKind, Location, Message, Reason, Where
from maintenance.core.where import MessageFields

PREVIEW_CHARS = 80
AGE_BUCKETS = ((60.0, "< 1 min"), (600.0, "< 10 min"), (3600.0, "< 1 h"), (86400.0, "< 1 day"))
OLDER = "≥ 1 day"
_NAME, _ETA = itemgetter(3), itemgetter(5)


@dataclass
class BandStock:
    """One queue band's messages."""

    queue: str
    band: int
    key: str
    length: int = 0  # LLEN when read (the scan may see a moving list a little differently)
    messages: int = 0
    by_name: Counter[str] = field(default_factory=Counter)
    orphans_by_name: Counter[str] = field(default_factory=Counter)
    eta_messages: int = 0
    eta_nearest_s: float | None = None  # from now; negative: due already
    eta_furthest_s: float | None = None
    tail: tuple[int, str, str] | None = None  # (index, task id, task name): workers take it next

    def as_dict(self) -> dict[str, Any]:
        return {
            "queue": self.queue,
            "priority": self.band,
            "key": self.key,
            "length": self.length,
            "messages": self.messages,
            "by_task_name": [
                {
                    "name": name,
                    "messages": count,
                    "share": round(count / self.messages, 4) if self.messages else 0.0,
                    "orphans": self.orphans_by_name.get(name, 0),
                }
                for name, count in self.by_name.most_common()
            ],
            "eta": {
                "messages": self.eta_messages,
                "nearest_s": _round(self.eta_nearest_s),
                "furthest_s": _round(self.eta_furthest_s),
            },
            "next_to_deliver": None
            if self.tail is None
            else {"index": self.tail[0], "task_id": self.tail[1], "task_name": self.tail[2]},
        }


@dataclass
class UnackedStock:
    entries: int = 0
    by_age: Counter[str] = field(default_factory=Counter)
    by_name: Counter[str] = field(default_factory=Counter)
    oldest_age_s: float | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "entries": self.entries,
            "by_age": {label: self.by_age.get(label, 0) for _, label in (*AGE_BUCKETS, (0, OLDER))},
            "by_task_name": dict(self.by_name.most_common()),
            "oldest_age_s": _round(self.oldest_age_s),
        }


class Inventory:
    def __init__(self, now: float):
        self.now = now
        self.bands: dict[str, BandStock] = {}  # by list key, in reading order
        self.unacked = UnackedStock()

    def band(self, place: Location) -> BandStock:
        stock = self.bands.get(place.key)
        if stock is None:
            stock = self.bands[place.key] = BandStock(place.queue, place.priority, place.key)
        return stock

    def queued(self, reads: list[Quick], place: Location, start: int) -> None:
        if not reads:
            return
        stock = self.band(place)
        stock.messages += len(reads)
        stock.by_name.update(map(_NAME, reads))
        for eta in compress(map(_ETA, reads), map(_ETA, reads)):
            self._eta(stock, eta)
        last = reads[-1]
        stock.tail = (start + len(reads) - 1, last[0], last[3])

    def message(self, msg: Message) -> None:
        loc = msg.location
        if loc.where is Where.QUEUE:
            stock = self.band(loc)
            stock.messages += 1
            stock.by_name[msg.task_name or "(unreadable)"] += 1
            if msg.eta:
                self._eta(stock, msg.eta)
            if stock.tail is None or loc.index >= stock.tail[0]:
                stock.tail = (loc.index, msg.task_id, msg.task_name)
        elif loc.where is Where.UNACKED:
            self._unacked(msg)

    def orphan(self, loc: Location, task_name: str) -> None:
        if loc.where is Where.QUEUE and loc.key in self.bands:
            self.bands[loc.key].orphans_by_name[task_name] += 1

    def _unacked(self, msg: Message) -> None:
        stock = self.unacked
        stock.entries += 1
        stock.by_name[msg.task_name or "(unreadable)"] += 1
        if msg.taken_at is None:
            return
        age = max(0.0, self.now - msg.taken_at)
        stock.by_age[age_bucket(age)] += 1
        if stock.oldest_age_s is None or age > stock.oldest_age_s:
            stock.oldest_age_s = age

    def _eta(self, stock: BandStock, eta: Any) -> None:
        at = parse_time(eta)
        if at is None:
            return
        stock.eta_messages += 1
        away = at - self.now
        if stock.eta_nearest_s is None or away < stock.eta_nearest_s:
            stock.eta_nearest_s = away
        if stock.eta_furthest_s is None or away > stock.eta_furthest_s:
            stock.eta_furthest_s = away


def age_bucket(age_s: float) -> str:
    for limit, label in AGE_BUCKETS:
        if age_s < limit:
            return label
    return OLDER


def name_matcher(pattern: str | None) -> Callable[[str], bool]:
    """A shell glob over task names (`demo.*`, `*.render`), compiled once and cached per name:
    a queue holds few distinct names and a million messages."""
    if pattern is None:
        return lambda name: True
    regex = re.compile(fnmatch.translate(pattern))
    cache: dict[str, bool] = {}

    def matches(name: str) -> bool:
        hit = cache.get(name)
        if hit is None:
            hit = cache[name] = regex.match(name) is not None
        return hit

    return matches


@dataclass(frozen=True)
class Described:
    """One message read in full for a listing or a filter."""

    msg: Message
    fields: MessageFields
    retries: int | None
    preview: str

    def as_dict(self) -> dict[str, Any]:
        loc = self.msg.location
        return {
            "where": loc.where.value,
            "queue": loc.queue or None,
            "priority": loc.priority if loc.where is Where.QUEUE else None,
            "index": loc.index if loc.where is Where.QUEUE else None,
            "delivery_tag": loc.delivery_tag or None,
            "task_id": self.msg.task_id,
            "task_name": self.msg.task_name,
            "row_id": self.msg.db_id,
            "eta": self.msg.eta,
            "expires": self.msg.expires,
            "retries": self.retries,
            "taken_at": self.msg.taken_at,
            "arguments": self.preview,
        }


def describe(
    payload: Any, location: Location, bindings: BindingTable, taken_at: float | None = None
) -> Described:
    """`payload` is the decoded kombu message (a queue element, or an unacked entry's first)."""
    msg = read_envelope(payload, location, bindings)
    if taken_at is not None:
        msg = Message(
            msg.task_id,
            msg.task_name,
            msg.location,
            db_id=msg.db_id,
            row_kind=msg.row_kind,
            problem=msg.problem,
            detail=msg.detail,
            eta=msg.eta,
            taken_at=taken_at,
            expires=msg.expires,
        )
    args, kwargs, shown = args_kwargs(payload)
    headers = payload.get("headers") if isinstance(payload, dict) else None
    retries = headers.get("retries") if isinstance(headers, dict) else None
    return Described(
        msg,
        MessageFields(msg.task_id, msg.task_name, msg.db_id, args, kwargs),
        retries if isinstance(retries, int) and not isinstance(retries, bool) else None,
        _truncate(shown),
    )


def decode(raw: bytes) -> Any:
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None


def _truncate(text: str) -> str:
    return text if len(text) <= PREVIEW_CHARS else text[: PREVIEW_CHARS - 1] + "…"


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 1)


@dataclass
class PurgeSelection:
    """What a purge would take: one operator finding per message, counted per place."""

    findings: list[Finding] = field(default_factory=list)
    by_place: Counter[str] = field(default_factory=Counter)
    sample: list[Described] = field(default_factory=list)
    skipped_unknown_age: int = 0  # --older-than: messages whose age could not be read

    def as_dict(self) -> dict[str, Any]:
        return {
            "matching": len(self.findings),
            "by_place": dict(self.by_place),
            "sample": [d.as_dict() for d in self.sample],
            "skipped_unknown_age": self.skipped_unknown_age,
        }


def operator_finding(msg: Message) -> Finding:
    """A message an operator named (revoke, purge), whatever its row says."""
    return Finding(
        FindingKind.ORPHAN,
        Reason.OPERATOR,
        msg.task_id,
        msg.task_name,
        msg.db_id,
        msg.location,
        row_kind=msg.row_kind,
        taken_at=msg.taken_at,
    )
