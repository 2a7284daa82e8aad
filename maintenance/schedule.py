"""The maintenance tasks' names, routes and Beat schedule, as plain data an existing app can merge.

    from maintenance.config import load_settings
    from maintenance.schedule import beat_schedule, task_routes

    settings = load_settings("config/maintenance.toml")
    app.conf.beat_schedule = {**app.conf.beat_schedule, **beat_schedule(settings)}
    app.conf.task_routes = {**(app.conf.task_routes or {}), **task_routes(settings)}

Nothing here opens a connection or reads a file: the settings are passed in.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from celery.schedules import crontab

from maintenance.config import Settings
from maintenance.errors import ConfigError

# Stable names: Beat entries, routes and `celery call` refer to the tasks by these strings, so
# renaming a Python function must never rename a task.
SCAN_ORPHANS = "maintenance.scan_orphans"
CLEANUP_EXPIRED_TASKS = "maintenance.cleanup_expired_tasks"
TASK_NAMES = (SCAN_ORPHANS, CLEANUP_EXPIRED_TASKS)

# config key under [schedule] -> task name
_SCHEDULE_KEYS = {"scan_orphans": SCAN_ORPHANS, "cleanup_expired_tasks": CLEANUP_EXPIRED_TASKS}


def parse_crontab(text: str, key: str, source: str = "<settings>") -> crontab:
    """A five-field cron line ("m h dom mon dow"); a bad one names its key, like any bad config."""
    fields = text.split()
    if len(fields) != 5:
        raise ConfigError(
            f"must be a crontab of 5 fields 'minute hour day-of-month month "
            f"day-of-week', got {text!r}",
            key=key,
            source=source,
        )
    try:
        return crontab.from_string(" ".join(fields))
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"not a valid crontab {text!r}: {exc}", key=key, source=source) from None


def check_timezone(settings: Settings) -> ZoneInfo:
    """Fail at start-up on a misspelt zone, not at 02:00 when Beat first computes a due time."""
    try:
        return ZoneInfo(settings.schedule.timezone)
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise ConfigError(
            f"unknown time zone {settings.schedule.timezone!r} ({exc})",
            key="schedule.timezone",
            source=settings.source,
        ) from None


def schedules(settings: Settings) -> dict[str, crontab | timedelta]:
    """Task name -> when it runs: the config's crontabs, or one interval that replaces both."""
    cfg = settings.schedule
    if cfg.interval_s > 0:
        return {name: timedelta(seconds=cfg.interval_s) for name in TASK_NAMES}
    return {
        name: parse_crontab(getattr(cfg, key), f"schedule.{key}", settings.source)
        for key, name in _SCHEDULE_KEYS.items()
    }


def beat_schedule(settings: Settings) -> dict[str, dict[str, Any]]:
    """Entries for `app.conf.beat_schedule`, keyed by task name.

    Each message expires when a run could no longer start in time: a Beat that fired while every
    maintenance worker was down must not leave a pile of runs to replay when one comes back. On a
    crontab that is two hard time limits: one for the other task's run, whose lock this one may
    meet and wait out (retries keep the first message's expiry), and one for its own.
    """
    check_timezone(settings)
    cfg = settings.schedule
    entries = {}
    for name, when in schedules(settings).items():
        expires_s = cfg.interval_s if cfg.interval_s > 0 else 2 * cfg.time_limit_s
        entries[name] = {
            "task": name,
            "schedule": when,
            "kwargs": {"started_by": "beat"},  # recorded in the run history
            "options": {"queue": cfg.queue, "expires": max(1.0, float(expires_s))},
        }
    return entries


def task_routes(settings: Settings) -> dict[str, dict[str, str]]:
    """Route both tasks to the maintenance queue, whoever sends them (Beat, `celery call`, code)."""
    return {name: {"queue": settings.schedule.queue} for name in TASK_NAMES}
