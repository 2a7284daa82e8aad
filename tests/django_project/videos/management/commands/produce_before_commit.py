"""`manage.py produce_before_commit RELEASE`: a producer that enqueues inside its transaction,
before the commit (what `delay_on_commit` / `transaction.on_commit` avoid). It prints the row and
Celery ids once the message is sent, then holds the transaction open until the file RELEASE
exists, so a test decides when the row becomes visible."""

# mypy: disallow-subclassing-any=False
# (Django ships no type hints: its base classes are Any to mypy.)

import json
import time
from pathlib import Path
from typing import Any

from django.core.management.base import BaseCommand, CommandParser
from django.db import transaction

from videos.models import Task
from videos.tasks import process_video


class Command(BaseCommand):
    help = "Enqueue a task for a row inside the transaction that creates it, then commit later."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("release", type=Path)
        parser.add_argument("--timeout", type=float, default=60.0)

    def handle(self, *args: Any, **options: Any) -> None:
        release: Path = options["release"]
        deadline = time.monotonic() + options["timeout"]
        with transaction.atomic():
            row = Task.objects.create(status="pending")
            result = process_video.delay(row.pk)  # before the commit: the row is not visible yet
            self.stdout.write(json.dumps({"id": str(row.pk), "celery_id": result.id}))
            self.stdout.flush()
            while not release.exists() and time.monotonic() < deadline:
                time.sleep(0.02)
