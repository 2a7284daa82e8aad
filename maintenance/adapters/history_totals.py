"""Read-only view of the run history for the monitor: recent runs and action totals.

The monitor must neither create the history tables (it only watches) nor re-read every run on
every refresh (it runs all day). So it reads the recent runs only once the table exists, and keeps
running totals of finished runs' counts, reading just the runs finished since the last refresh.
Counts are aggregated key by key, whatever keys the runs record, since those names evolve.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from maintenance.adapters.database import database_errors
from maintenance.adapters.history import HistoryStore, runs


@dataclass(frozen=True)
class HistoryView:
    recent: tuple[dict[str, Any], ...]  # newest first
    action_totals: dict[str, float]  # summed numeric counts of every finished run
    outcome_totals: dict[str, int]  # finished runs per outcome
    last_ok_at: float | None = None  # when the newest run with outcome "ok" finished


class HistoryReader:
    def __init__(self, engine: Engine, recent_limit: int = 5):
        self.engine = engine
        self.recent_limit = recent_limit
        self._store = HistoryStore(engine)
        self._exists = False
        self._actions: Counter[str] = Counter()
        self._outcomes: Counter[str] = Counter()
        self._watermark: float | None = None  # finished_at of the newest run counted
        self._at_watermark: set[str] = set()  # runs finished exactly then, already counted
        self._last_ok_at: float | None = None

    def read(self) -> HistoryView:
        if not self._table_exists():
            return HistoryView((), {}, {})
        recent = tuple(self._store.recent_runs(self.recent_limit))
        self._add_finished_since_watermark()
        return HistoryView(
            recent, dict(self._actions), dict(self._outcomes), last_ok_at=self._last_ok_at
        )

    def _table_exists(self) -> bool:
        if not self._exists:
            with database_errors("looking for the history table"):
                self._exists = sa.inspect(self.engine).has_table(runs.name)
        return self._exists

    def _add_finished_since_watermark(self) -> None:
        query = (
            sa.select(runs.c.id, runs.c.outcome, runs.c.counts, runs.c.finished_at)
            .where(runs.c.finished_at.is_not(None), runs.c.outcome != "running")
            .order_by(runs.c.finished_at)
        )
        if self._watermark is not None:
            query = query.where(runs.c.finished_at >= self._watermark)
        with database_errors("reading the history totals"), self.engine.connect() as conn:
            rows = conn.execute(query).all()
        for run_id, outcome, counts, finished_at in rows:
            if run_id in self._at_watermark:
                continue
            if finished_at != self._watermark:
                self._watermark, self._at_watermark = finished_at, set()
            self._at_watermark.add(run_id)
            self._outcomes[str(outcome)] += 1
            if outcome == "ok":
                self._last_ok_at = float(finished_at)
            self._actions.update(numeric_counts(_parse(counts)))


def numeric_counts(counts: Mapping[str, Any], prefix: str = "") -> dict[str, float]:
    """Flatten one level of nesting (`{"revoked": {"queued": 3}}` -> `revoked_queued`)."""
    flat: dict[str, float] = {}
    for key, value in counts.items():
        name = f"{prefix}{key}"
        if isinstance(value, bool):
            continue
        if isinstance(value, int | float):
            flat[name] = flat.get(name, 0) + value
        elif isinstance(value, Mapping) and not prefix:
            for sub, number in numeric_counts(value, f"{name}_").items():
                flat[sub] = flat.get(sub, 0) + number
    return flat


def _parse(counts: str | None) -> dict[str, Any]:
    try:
        doc = json.loads(counts or "{}")
    except ValueError:
        return {}
    return doc if isinstance(doc, dict) else {}
