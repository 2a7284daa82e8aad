"""The Django app config: registers the settings loader of the guards once Django is set up."""

from __future__ import annotations

from django.apps import AppConfig

from maintenance.contrib.django.settings import load_from_django
from maintenance.guards.runtime import set_settings_loader


class TaskMaintenanceConfig(AppConfig):  # type: ignore[misc]  # Django ships no type hints
    name = "maintenance.contrib.django"
    label = "task_maintenance"  # the default, "django", would read as Django's own
    verbose_name = "Task maintenance"

    def ready(self) -> None:
        """Let `@validate_task_exists` in the project's tasks build its settings from
        `settings.TASK_MAINTENANCE` on the first guarded task.

        The user's Celery module (`proj/celery.py`) is imported before Django is set up, so it
        cannot hand the guards their settings; `ready()` runs in every process that sets Django
        up, the Celery worker included (Celery's Django fixup calls `django.setup()` before it
        forks its pool). Nothing is read here: a project without TASK_MAINTENANCE keeps the
        config file, and an explicit `configure_guards()` still wins.
        """
        from django.conf import settings

        if hasattr(settings, "TASK_MAINTENANCE"):
            set_settings_loader(load_from_django)
