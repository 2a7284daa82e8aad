"""Settings of the test project. The database, broker and log directory come from the
environment tests/test_django.py sets (VIDEOS_*), as a deployment's settings read theirs;
VIDEOS_TM_OVERRIDE (JSON, merged per section into TASK_MAINTENANCE) lets a test break the config.
"""

import json
import os
from pathlib import Path
from typing import Any

BASE_DIR = Path(__file__).resolve().parent.parent

SECRET_KEY = "django-insecure-test-only"
DEBUG = False
ALLOWED_HOSTS: list[str] = []

INSTALLED_APPS = [
    "videos",
    "maintenance.contrib.django",
]

DATABASES = {
    "default": {
        "ENGINE": "django.db.backends.postgresql",
        "NAME": os.environ.get("VIDEOS_DB_NAME", "videos"),
        "USER": os.environ.get("VIDEOS_DB_USER", ""),
        "PASSWORD": os.environ.get("VIDEOS_DB_PASSWORD", ""),
        "HOST": os.environ.get("VIDEOS_DB_HOST", "127.0.0.1"),
        "PORT": os.environ.get("VIDEOS_DB_PORT", "5432"),
    }
}
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
USE_TZ = True
TIME_ZONE = "UTC"

# Celery, read by proj/celery.py's config_from_object(..., namespace="CELERY")
CELERY_BROKER_URL = os.environ.get("VIDEOS_BROKER_URL", "redis://127.0.0.1:6379/0")
CELERY_RESULT_BACKEND = CELERY_BROKER_URL
CELERY_BROKER_TRANSPORT_OPTIONS = {"visibility_timeout": 3600}
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True

TASK_MAINTENANCE: dict[str, Any] = {
    "tasks": {
        "model": "videos.Task",
        "status_field": "status",
        "active_statuses": ["pending", "processing"],
        "updated_at_field": "updated_at",
        "celery_id_field": "celery_task_id",
    },
    "sub_tasks": {"model": "videos.Segment", "parent_field": "task", "status_field": "status"},
    "bindings": [
        {"task": "videos.tasks.process_video", "id_from": "args[0]"},
        {"task": "videos.tasks.process_segment", "id_from": "args[0]", "kind": "sub_task"},
    ],
    "scan": {"queues": ["celery"], "inspect_timeout_s": 0.5},
    "guards": {"missing_retries": 0},  # the tests' deleted rows: skip at once, no re-checks
    "logging": {"dir": os.environ.get("VIDEOS_LOG_DIR", str(BASE_DIR / "logs"))},
}
for _section, _values in json.loads(os.environ.get("VIDEOS_TM_OVERRIDE", "{}")).items():
    TASK_MAINTENANCE.setdefault(_section, {}).update(_values)
