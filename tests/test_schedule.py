"""The Beat schedule as data: crontabs and timezone from the config, an interval for demos."""

from __future__ import annotations

from datetime import timedelta

import pytest
from celery.schedules import crontab

from maintenance.config import settings_from_mapping
from maintenance.errors import ConfigError
from maintenance.schedule import (
    CLEANUP_EXPIRED_TASKS,
    SCAN_ORPHANS,
    beat_schedule,
    parse_crontab,
    task_routes,
)


def test_default_is_both_tasks_daily_at_two_on_the_maintenance_queue() -> None:
    """The seed's `crontab(hour=2, minute=0)` for both tasks, routed to `maintenance`."""
    entries = beat_schedule(settings_from_mapping({}))
    assert set(entries) == {SCAN_ORPHANS, CLEANUP_EXPIRED_TASKS}
    for name, entry in entries.items():
        assert entry["task"] == name
        assert entry["schedule"] == crontab(hour=2, minute=0)
        assert entry["options"]["queue"] == "maintenance"
        assert entry["kwargs"] == {"started_by": "beat"}
        assert entry["options"]["expires"] == 7200.0  # room to wait out the other task's run


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("0 2 * * *", crontab(minute=0, hour=2)),
        ("30 3 * * 1-5", crontab(minute=30, hour=3, day_of_week="1-5")),
        ("*/15 * * * *", crontab(minute="*/15")),
        ("0 4 1 * *", crontab(minute=0, hour=4, day_of_month=1)),
        ("0 0 * 6 sun", crontab(minute=0, hour=0, month_of_year=6, day_of_week="sun")),
    ],
)
def test_crontab_strings_use_cron_field_order(text: str, expected: crontab) -> None:
    """Fields are "m h dom mon dow" as in crontab(5), not celery's positional order."""
    assert parse_crontab(text, "schedule.scan_orphans") == expected


@pytest.mark.parametrize("text", ["0 2 * *", "61 2 * * *", "0 2 * * funday", ""])
def test_a_bad_crontab_names_its_key(text: str) -> None:
    """A bad line is a config error naming the key, caught at start-up, not at 02:00."""
    with pytest.raises(ConfigError, match=r"schedule\.cleanup_expired_tasks"):
        beat_schedule(settings_from_mapping({"schedule": {"cleanup_expired_tasks": text}}))


def test_each_crontab_is_configurable_on_its_own() -> None:
    """One task can move without the other."""
    settings = settings_from_mapping({"schedule": {"scan_orphans": "15 1 * * *"}})
    entries = beat_schedule(settings)
    assert entries[SCAN_ORPHANS]["schedule"] == crontab(minute=15, hour=1)
    assert entries[CLEANUP_EXPIRED_TASKS]["schedule"] == crontab(minute=0, hour=2)


def test_interval_replaces_both_crontabs_and_expires_with_it() -> None:
    """interval_s > 0 brings the schedule forward for demos and tests."""
    entries = beat_schedule(settings_from_mapping({"schedule": {"interval_s": 5}}))
    for entry in entries.values():
        assert entry["schedule"] == timedelta(seconds=5)
        assert entry["options"]["expires"] == 5.0


def test_unknown_timezone_is_a_config_error() -> None:
    """A misspelt zone fails when the schedule is built."""
    with pytest.raises(ConfigError, match=r"schedule\.timezone"):
        beat_schedule(settings_from_mapping({"schedule": {"timezone": "Europe/Atlantis"}}))


def test_routes_follow_the_configured_queue() -> None:
    """Whoever sends the tasks, they land on the configured queue."""
    settings = settings_from_mapping({"schedule": {"queue": "ops"}})
    assert task_routes(settings) == {
        SCAN_ORPHANS: {"queue": "ops"},
        CLEANUP_EXPIRED_TASKS: {"queue": "ops"},
    }
    assert {e["options"]["queue"] for e in beat_schedule(settings).values()} == {"ops"}
