"""Writes to the app's task table for lost rows: each guarded so it only hits a row still stuck."""

from __future__ import annotations

from collections.abc import Collection
from typing import Any

import sqlalchemy as sa

from maintenance.adapters.database import TaskDatabase, _cutoff_for, database_errors


class StuckRows:
    def __init__(self, db: TaskDatabase):
        self.db = db
        self.cfg = db.settings.tasks

    def _still_stuck(
        self, ids: Collection[str], older_than_s: float, now: float
    ) -> sa.ColumnElement[bool]:
        table = self.db.tasks
        updated = table.c[self.cfg.updated_at_column]
        return sa.and_(
            table.c[self.cfg.id_column].in_(list(ids)),
            table.c[self.cfg.status_column].in_(list(self.cfg.active_statuses)),
            updated < _cutoff_for(updated, now - older_than_s),
        )

    def still_stuck(self, ids: Collection[str], older_than_s: float, now: float) -> set[str]:
        """The second look of the grace period: which of these rows are still stuck now."""
        if not ids:
            return set()
        table = self.db.tasks
        found: set[str] = set()
        id_list = list(ids)
        batch = self.db.settings.database.batch_size
        with database_errors("re-reading stuck rows"), self.db.engine.connect() as conn:
            for start in range(0, len(id_list), batch):
                part = id_list[start : start + batch]
                query = sa.select(table.c[self.cfg.id_column]).where(
                    self._still_stuck(part, older_than_s, now)
                )
                found.update(str(row_id) for (row_id,) in conn.execute(query))
        return found

    def mark_failed(
        self, ids: Collection[str], status: str, older_than_s: float, now: float
    ) -> int:
        """Only rows that are still in a "to run" status and still untouched are changed."""
        if not ids:
            return 0
        table = self.db.tasks
        values: dict[str, Any] = {self.cfg.status_column: status}
        with database_errors("marking stuck rows failed"), self.db.engine.begin() as conn:
            result = conn.execute(
                sa.update(table).where(self._still_stuck(ids, older_than_s, now)).values(**values)
            )
            return int(result.rowcount or 0)

    def touch(self, ids: Collection[str], now: float, celery_ids: dict[str, str]) -> int:
        """After a requeue: a fresh updated_at (and the new Celery id) so it is not lost again."""
        table = self.db.tasks
        updated = table.c[self.cfg.updated_at_column]
        count = 0
        with database_errors("updating requeued rows"), self.db.engine.begin() as conn:
            for row_id in ids:
                values: dict[str, Any] = {updated.key: _cutoff_for(updated, now)}
                if self.cfg.celery_id_column and row_id in celery_ids:
                    values[self.cfg.celery_id_column] = celery_ids[row_id]
                count += int(
                    conn.execute(
                        sa.update(table)
                        .where(table.c[self.cfg.id_column] == row_id)
                        .values(**values)
                    ).rowcount
                    or 0
                )
        return count

    def updated_before(self, ids: Collection[str], cutoff: float) -> set[str]:
        """Which of these task rows were last updated before `cutoff` (unix seconds), whatever
        their status: `purge --older-than`. A missing row, or one never updated, is not."""
        if not ids or not self.cfg.updated_at_column:
            return set()
        table = self.db.tasks
        updated = table.c[self.cfg.updated_at_column]
        id_list = list(ids)
        found: set[str] = set()
        batch = self.db.settings.database.batch_size
        with database_errors("reading row ages"), self.db.engine.connect() as conn:
            for start in range(0, len(id_list), batch):
                query = sa.select(table.c[self.cfg.id_column]).where(
                    table.c[self.cfg.id_column].in_(id_list[start : start + batch]),
                    updated < _cutoff_for(updated, cutoff),
                )
                found.update(str(row_id) for (row_id,) in conn.execute(query))
        return found
