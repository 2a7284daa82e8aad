"""The guards' primary-key read on PostgreSQL, MariaDB and SQLite: a task's row, a sub-task's
row with its parent through the join, and a row committed after an earlier read."""

from __future__ import annotations

from pathlib import Path

import sqlalchemy as sa

from examples.demo.schema import new_id, sub_tasks, tasks, utcnow
from maintenance.adapters.guard_rows import open_row_reader
from maintenance.config import load_settings
from maintenance.core.models import Rows, RowState
from tests.conftest import write_config

PENDING, DONE = RowState(True, "pending"), RowState(False, "done")


def test_reads_tasks_and_sub_tasks_with_their_parents(db_url: str, tmp_path: Path) -> None:
    """Each kind of row as the guard sees it; a missing parent is checked and absent."""
    engine = sa.create_engine(db_url)
    live, done = new_id(), new_id()
    subs = {name: new_id() for name in ("of_live", "of_done", "orphan", "finished")}
    with engine.begin() as conn:
        conn.execute(
            sa.insert(tasks),
            [
                {"id": live, "status": "pending", "updated_at": utcnow()},
                {"id": done, "status": "done", "updated_at": utcnow()},
            ],
        )
        conn.execute(
            sa.insert(sub_tasks),
            [
                {"id": subs["of_live"], "task_id": live, "status": "queued"},
                {"id": subs["of_done"], "task_id": done, "status": "queued"},
                {"id": subs["orphan"], "task_id": new_id(), "status": "queued"},
                {"id": subs["finished"], "task_id": live, "status": "done"},
            ],
        )
    engine.dispose()
    config = write_config(tmp_path / "maintenance.toml", "redis://127.0.0.1:1/0", db_url)
    reader = open_row_reader(load_settings(config, env={}))
    try:
        assert reader.read("task", live) == Rows(PENDING)
        assert reader.read("task", done) == Rows(DONE)
        assert reader.read("task", new_id()) == Rows(None)
        assert reader.read("task", "x" * 37) == Rows(None)  # longer than the column: not sent
        queued = RowState(True, "queued", live)
        assert reader.read("sub_task", subs["of_live"]) == Rows(queued, PENDING, True)
        assert reader.read("sub_task", subs["of_done"]).parent == DONE
        orphan = reader.read("sub_task", subs["orphan"])
        assert (orphan.row is not None, orphan.parent, orphan.parent_checked) == (True, None, True)
        assert reader.read("sub_task", subs["finished"]).row == RowState(False, "done", live)
        assert reader.read("sub_task", new_id()) == Rows(None)
    finally:
        reader.close()


def test_a_row_committed_after_a_read_is_seen(db_url: str, tmp_path: Path) -> None:
    """The guard's pooled connection holds no snapshot between reads (autocommit on servers):
    a producer that commits after the first look is seen on the next one."""
    config = write_config(tmp_path / "maintenance.toml", "redis://127.0.0.1:1/0", db_url)
    reader = open_row_reader(load_settings(config, env={}))
    row_id = new_id()
    try:
        assert reader.read("task", row_id) == Rows(None)
        with reader.engine.begin() as conn:
            conn.execute(
                sa.insert(tasks), [{"id": row_id, "status": "queued", "updated_at": utcnow()}]
            )
        assert reader.read("task", row_id) == Rows(RowState(True, "queued"))
    finally:
        reader.close()
