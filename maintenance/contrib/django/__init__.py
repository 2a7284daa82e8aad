"""The Django app: add `"maintenance.contrib.django"` to `INSTALLED_APPS` (extra `[django]`).

It brings `manage.py task_cleanup …` (the `task-cleanup` commands, with the settings built from
`settings.TASK_MAINTENANCE`, `DATABASES` and the `CELERY_*` settings) and configures the guards of
the project's Celery tasks from the same settings. This package module imports nothing from
Django, so that walking `maintenance` (tests, tools) works without the extra installed.
"""
