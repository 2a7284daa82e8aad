"""`manage.py plant`: rows and real Celery messages for them, some rows deleted or finished after
their message was sent (the orphans a cleanup must find); prints the ids as JSON."""

# mypy: disallow-subclassing-any=False
# (Django ships no type hints: its base classes are Any to mypy.)

import json
from typing import Any

from django.core.management.base import BaseCommand, CommandParser

from videos.models import Task
from videos.tasks import process_video


class Command(BaseCommand):
    help = "Plant task rows with queued messages; delete or finish some of them afterwards."

    def add_arguments(self, parser: CommandParser) -> None:
        for kind in ("live", "deleted", "finished"):
            parser.add_argument(f"--{kind}", type=int, default=0)

    def handle(self, *args: Any, **options: Any) -> None:
        planted: dict[str, dict[str, str]] = {}
        for kind in ("live", "deleted", "finished"):
            planted[kind] = {}
            for _ in range(options[kind]):
                row = Task.objects.create(status="pending")
                result = process_video.delay(row.pk)
                Task.objects.filter(pk=row.pk).update(celery_task_id=result.id)
                planted[kind][str(row.pk)] = result.id
        Task.objects.filter(pk__in=list(planted["deleted"])).delete()
        Task.objects.filter(pk__in=list(planted["finished"])).update(status="done")
        self.stdout.write(json.dumps(planted))
