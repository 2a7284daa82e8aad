"""Writes for lost rows on PostgreSQL, MariaDB and SQLite: the grace re-check in batches, the
guarded `mark_failed` and the requeue's `touch` only ever hit rows still stuck."""

from __future__ import annotations

import time
from datetime import timedelta
from pathlib import Path

import sqlalchemy as sa

from examples.demo.schema import new_id, tasks, utcnow
from maintenance.adapters.database import TaskDatabase, create_db_engine
from maintenance.adapters.stuck_rows import StuckRows
from maintenance.config import Settings, load_settings
from tests.conftest import write_config

DAY = 86_400.0


def _settings(db_url: str, tmp_path: Path) -> Settings:
    extra = "[database]\nbatch_size = 2\n"
    config = write_config(tmp_path / "maintenance.toml", "redis://127.0.0.1:1/0", db_url)
    text = config.read_text().replace("[database]\n", extra, 1)
    config.write_text(text)
    return load_settings(config, env={})


def _rows(engine: sa.Engine) -> dict[str, tuple[str, object, object]]:
    with engine.connect() as conn:
        query = sa.select(tasks.c.id, tasks.c.status, tasks.c.updated_at, tasks.c.celery_task_id)
        return {str(i): (s, u, c) for i, s, u, c in conn.execute(query)}


def test_still_stuck_mark_failed_and_touch(db_url: str, tmp_path: Path) -> None:
    """Five stuck rows across three batches, one fresh and one finished: only the stuck ones
    come back, are marked failed, or are touched."""
    settings = _settings(db_url, tmp_path)
    engine = create_db_engine(settings)
    old = utcnow() - timedelta(days=2)
    stuck = sorted(new_id() for _ in range(5))
    fresh, finished = new_id(), new_id()
    with engine.begin() as conn:
        conn.execute(
            sa.insert(tasks),
            [{"id": i, "status": "pending", "updated_at": old} for i in stuck]
            + [
                {"id": fresh, "status": "queued", "updated_at": utcnow()},
                {"id": finished, "status": "done", "updated_at": old},
            ],
        )
    rows = StuckRows(TaskDatabase(engine, settings))
    asked = [*stuck, fresh, finished, new_id()]
    now = time.time()
    assert rows.still_stuck(asked, DAY, now) == set(stuck)
    assert rows.mark_failed([*stuck[:2], fresh, finished], "failed", DAY, now) == 2
    assert rows.still_stuck(asked, DAY, now) == set(stuck[2:])
    assert rows.touch(stuck[2:4], now, {stuck[2]: "new-celery-id"}) == 2
    assert rows.still_stuck(asked, DAY, now) == {stuck[4]}
    after = _rows(engine)
    assert [after[i][0] for i in stuck] == ["failed", "failed", "pending", "pending", "pending"]
    assert (after[fresh][0], after[finished][0]) == ("queued", "done")
    assert after[stuck[2]][2] == "new-celery-id" and after[stuck[3]][2] is None
    engine.dispose()
