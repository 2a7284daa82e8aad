"""The demo Celery app. `celery -A examples.demo.app worker` runs its tasks.

Configured from the environment (`DEMO_BROKER_URL` or `REDIS_URL`, `DATABASE_URL`) because it
stands for the user's own app, not for the maintenance service.
"""

from __future__ import annotations

import os
import time

import sqlalchemy as sa
from celery import Celery, Task

from examples.demo.schema import sub_tasks, tasks

app = Celery("demo", set_as_current=False)
app.conf.update(
    broker_url=os.environ.get("DEMO_BROKER_URL")
    or os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0"),
    result_backend=os.environ.get("DEMO_RESULT_URL")
    or os.environ.get("RESULT_BACKEND_URL")
    or os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0"),
    task_serializer=os.environ.get("DEMO_SERIALIZER", "json"),
    accept_content=["json", "pickle"],
    result_extended=True,
    task_default_queue="video_processing",
    worker_prefetch_multiplier=1,
    broker_transport_options={
        k: v for k, v in {"global_keyprefix": os.environ.get("DEMO_KEYPREFIX", "")}.items() if v
    },
)

_engine: sa.Engine | None = None


def engine() -> sa.Engine:
    """One engine per process, created on first use (after the prefork fork)."""
    global _engine
    if _engine is None:
        _engine = sa.create_engine(os.environ["DATABASE_URL"], pool_pre_ping=True)
    return _engine


def _touch(table: sa.Table, row_id: str, status: str) -> int:
    with engine().begin() as conn:
        return conn.execute(
            sa.update(table).where(table.c.id == row_id).values(status=status)
        ).rowcount


@app.task(name="demo.process_video", bind=True)
def process_video(self: Task, task_id: str) -> str:
    """The seed's failing task: it updates its row and fails when the row is gone."""
    if _touch(tasks, task_id, "processing") != 1:
        raise RuntimeError(f"任务 {task_id} 不存在或未更新 (task {task_id} does not exist)")
    time.sleep(float(os.environ.get("DEMO_TASK_SECONDS", "0")))
    _touch(tasks, task_id, "done")
    return task_id


@app.task(name="demo.process_segment", bind=True)
def process_segment(self: Task, sub_task_id: str) -> str:
    if _touch(sub_tasks, sub_task_id, "processing") != 1:
        raise RuntimeError(f"sub-task {sub_task_id} does not exist")
    _touch(sub_tasks, sub_task_id, "done")
    return sub_task_id


@app.task(name="demo.render", bind=True)
def render(self: Task, *, task_id: str, quality: str = "hd") -> str:
    if _touch(tasks, task_id, "done") != 1:
        raise RuntimeError(f"task {task_id} does not exist")
    return task_id


@app.task(name="demo.send_email")
def send_email(address: str) -> str:
    """Unmanaged: bound to no table."""
    return address
