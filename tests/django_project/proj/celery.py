"""The project's Celery app, exactly as in Celery's "First steps with Django" guide."""

# mypy: disallow-untyped-decorators=False
# (Celery's @app.task is untyped; the task itself is typed.)

import os
from typing import Any

from celery import Celery

# Set the default Django settings module for the 'celery' program.
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "proj.settings")

app = Celery("proj")

# Using a string here means the worker doesn't have to serialize
# the configuration object to child processes.
# - namespace='CELERY' means all celery-related configuration keys
#   should have a `CELERY_` prefix.
app.config_from_object("django.conf:settings", namespace="CELERY")

# Load task modules from all registered Django apps.
app.autodiscover_tasks()


@app.task(bind=True, ignore_result=True)
def debug_task(self: Any) -> None:
    print(f"Request: {self.request!r}")
