"""Celery entry module of the maintenance service: the one composition root.

    celery -A maintenance.worker worker -Q maintenance -n maintenance@%h -c 1
    celery -A maintenance.worker beat -s run/celerybeat-schedule

Importing it reads the config file (`$MAINTENANCE_CONFIG`, else `config/maintenance.toml`, with the
`REDIS_URL` / `RESULT_BACKEND_URL` / `DATABASE_URL` overrides) and builds the app on the monitored
app's own broker, so that revokes reach that app's workers. That is why nothing else imports it.
Logging is configured by Celery's `setup_logging` signal, which also tells Celery to leave the
root logger alone.
"""

from __future__ import annotations

import logging
import os
from typing import Any

from celery.signals import setup_logging

from maintenance.adapters.celery_app import build_celery_app
from maintenance.config import load_settings, resolve_config_path
from maintenance.logging_setup import configure_logging
from maintenance.schedule import beat_schedule
from maintenance.tasks import register_tasks

WORKER_LOG = "celery_worker.log"  # celery.* (worker, beat, task trace)
APP_LOG = "app.log"  # every other library

settings = load_settings(resolve_config_path(None, os.environ), os.environ)
app = build_celery_app(settings, main="task_maintenance")
app.conf.update(
    beat_schedule=beat_schedule(settings),
    task_default_queue=settings.schedule.queue,
    worker_prefetch_multiplier=1,  # a run is long: never hold a second one behind it
    worker_send_task_events=False,
    task_track_started=True,
)
tasks = register_tasks(app, settings)


@setup_logging.connect
def _setup_logging(loglevel: int | str | None = None, **_: Any) -> None:
    """Files at the configured level; the console at the `-l` level given to celery."""
    console = logging.getLevelName(loglevel) if isinstance(loglevel, int) else loglevel
    configure_logging(
        settings.logging.dir,
        settings.logging.level,
        console_level=str(console or settings.logging.level).upper(),
        extra_files={"celery": WORKER_LOG, "": APP_LOG},
    )
