"""A user's Celery app with guarded tasks: the composition root for `celery -A tests.guarded_app`.

Used by tests/guards/test_decorators.py and bench/bench_guard.py, never imported by `maintenance`.
Configured from the environment: GUARD_BROKER_URL (broker and result backend), MAINTENANCE_CONFIG
(the guards load it lazily on the first task), GUARD_LOG_DIR and GUARD_LOG_LEVEL (JSON log files;
the console follows the worker's `-l`).
"""

from __future__ import annotations

import logging
import os
import time
from typing import Any

import redis
from celery import Celery, Task
from celery.signals import setup_logging

from maintenance.guards import validate_sub_task_exists, validate_task_exists
from maintenance.logging_setup import configure_logging

BROKER_URL = os.environ.get("GUARD_BROKER_URL", "redis://127.0.0.1:6379/0")

app = Celery("guarded", set_as_current=False)
app.conf.update(
    broker_url=BROKER_URL,
    result_backend=BROKER_URL,
    task_default_queue="guarded",
    result_extended=True,
    worker_prefetch_multiplier=4,
    broker_connection_retry_on_startup=True,
)


@setup_logging.connect
def _setup_logging(loglevel: int | str = logging.INFO, **_: Any) -> None:
    """Celery leaves logging to us: JSON lines for our events and for Celery's own."""
    console = logging.getLevelName(loglevel) if isinstance(loglevel, int) else loglevel
    configure_logging(
        os.environ.get("GUARD_LOG_DIR", "logs"),
        level=os.environ.get("GUARD_LOG_LEVEL", "DEBUG"),
        console_level=console,
        extra_files={"celery": "celery_worker.log"},
    )


_client: tuple[int, redis.Redis] | None = None


def _redis() -> redis.Redis:
    """One client per process, made after the prefork fork."""
    global _client
    if _client is None or _client[0] != os.getpid():
        _client = (os.getpid(), redis.Redis.from_url(BROKER_URL))
    return _client[1]


def ran(db_id: str) -> int:
    """Count runs of a body in Redis, so a test can tell 'ran once' from 'ran twice'."""
    return int(_redis().incr(f"guarded:runs:{db_id}"))


@app.task(bind=True, name="guarded.bare")
@validate_task_exists
def bare(self: Task, task_id: str) -> dict[str, int]:
    """Bare form, bound: the id comes from the [[bindings]] entry (args[0])."""
    return {"runs": ran(task_id), "retries": self.request.retries}


@app.task(bind=True, name="guarded.with_arg")
@validate_task_exists(id_arg="task_id")
def with_arg(self: Task, note: str, task_id: str) -> dict[str, int]:
    """Argument form, bound, with the id in second place."""
    return {"runs": ran(task_id), "retries": self.request.retries}


@app.task(name="guarded.unbound")
@validate_task_exists(id_arg="task_id")
def unbound(task_id: str) -> dict[str, int]:
    """Argument form, unbound: the guard finds the task on Celery's task stack."""
    return {"runs": ran(task_id)}


@app.task(name="guarded.unbound_bare")
@validate_task_exists
def unbound_bare(*, task_id: str) -> dict[str, int]:
    """Bare form, unbound: the id comes from the binding kwargs.task_id."""
    return {"runs": ran(task_id)}


@app.task(bind=True, name="guarded.segment")
@validate_sub_task_exists(id_arg="sub_task_id")
def segment(self: Task, sub_task_id: str) -> dict[str, int]:
    """A sub-task: runs only while its row and its parent's row are still to run."""
    return {"runs": ran(sub_task_id)}


@app.task(name="guarded.noop")
def noop(task_id: str) -> float:
    """Benchmark baseline: no guard."""
    return time.time()


@app.task(name="guarded.noop_guarded")
@validate_task_exists(id_arg="task_id")
def noop_guarded(task_id: str) -> float:
    """Benchmark: the same body behind the guard."""
    return time.time()
