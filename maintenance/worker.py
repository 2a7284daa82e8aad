"""Celery entry module of the maintenance service: the one composition root.

    celery -A maintenance.worker worker -Q maintenance -n maintenance@%h -c 1
    celery -A maintenance.worker beat -s run/celerybeat-schedule

Importing it reads the config file (`$MAINTENANCE_CONFIG`, else `config/maintenance.toml`, with the
`REDIS_URL` / `RESULT_BACKEND_URL` / `DATABASE_URL` overrides) and builds the app on the monitored
app's own broker, so that revokes reach that app's workers. That is why nothing else imports it.
Logging is configured by Celery's `setup_logging` signal, which also tells Celery to leave the
root logger alone. With `[metrics] port` set, the worker's main process also serves the Prometheus
metrics `task-cleanup monitor --metrics-port` serves (no extra process to deploy), reading Redis
and the history only when scraped.
"""

from __future__ import annotations

import logging
import os
import sys
from typing import Any, NoReturn

from celery.signals import setup_logging, worker_ready, worker_shutdown

from maintenance.adapters.celery_app import build_celery_app
from maintenance.config import load_settings, resolve_config_path
from maintenance.errors import ConfigError
from maintenance.logging_setup import configure_logging
from maintenance.monitor.metrics import ReadOnScrape, serve_metrics
from maintenance.redaction import redact_text
from maintenance.schedule import beat_schedule
from maintenance.service import Maintenance
from maintenance.tasks import register_tasks

WORKER_LOG = "celery_worker.log"  # celery.* (worker, beat, task trace)
APP_LOG = "app.log"  # every other library


def _config_error(exc: ConfigError) -> NoReturn:
    """One paragraph and exit 2, as `task-cleanup` says it: Celery would print the traceback of
    the failed import (it catches every Exception, but not SystemExit) and exit 1."""
    print(
        f"task-maintenance: configuration error: {redact_text(str(exc))}. The worker and Beat "
        "read the file named by $MAINTENANCE_CONFIG, else config/maintenance.toml in the "
        "current directory ($REDIS_URL, $RESULT_BACKEND_URL and $DATABASE_URL override its "
        "URLs). Write one for your app with `task-cleanup config init`, then test it with "
        "`task-cleanup config check`.",
        file=sys.stderr,
    )
    raise SystemExit(2)


try:
    settings = load_settings(resolve_config_path(None, os.environ), os.environ)
    app = build_celery_app(settings, main="task_maintenance")
    app.conf.update(
        beat_schedule=beat_schedule(settings),  # a bad crontab or zone is a ConfigError too
        task_default_queue=settings.schedule.queue,
        worker_prefetch_multiplier=1,  # a run is long: never hold a second one behind it
        worker_send_task_events=False,
        task_track_started=True,
    )
    tasks = register_tasks(app, settings)
except ConfigError as exc:
    _config_error(exc)


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


_metrics: dict[str, Any] = {}  # the worker's metrics server and the service it reads through
METRICS_PING_TIMEOUT_S = 1.0  # a scrape waits at most this long for the worker ping


@worker_ready.connect
def _serve_metrics(**_: Any) -> None:
    """In the worker's main process, once its pool runs (a forked child serves nothing)."""
    if not settings.metrics.port or _metrics:
        return
    maintenance = Maintenance.open(settings)
    snapshots = maintenance.snapshots(
        workers=True, ping_timeout_s=METRICS_PING_TIMEOUT_S, workers_every_s=30.0
    )
    collector = ReadOnScrape(
        snapshots.read,
        min_interval_s=settings.metrics.min_interval_s,
        visibility_timeout_s=maintenance.visibility_timeout_s,
    )
    try:
        server = serve_metrics(collector, settings.metrics.port, settings.metrics.addr)
    except OSError as exc:
        maintenance.close()
        logging.getLogger(__name__).error(
            "metrics not served on %s:%s: %s", settings.metrics.addr, settings.metrics.port, exc
        )
        return
    _metrics.update(server=server, maintenance=maintenance)
    logging.getLogger(__name__).info(
        "metrics served on %s:%s/metrics", settings.metrics.addr, settings.metrics.port
    )


@worker_shutdown.connect
def _stop_metrics(**_: Any) -> None:
    if _metrics:
        _metrics.pop("server").shutdown()
        _metrics.pop("maintenance").close()
