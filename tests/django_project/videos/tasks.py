"""The app's Celery tasks, guarded: a task whose row is gone or finished never runs its body."""

# mypy: disallow-untyped-decorators=False
# (Celery's @shared_task is untyped; the task bodies are typed.)

from typing import Any

from celery import shared_task

from maintenance.guards import validate_sub_task_exists, validate_task_exists
from videos.models import Segment, Task


@shared_task(bind=True)
@validate_task_exists  # bare: the row id is where TASK_MAINTENANCE's binding says (args[0])
def process_video(self: Any, task_id: int) -> str:
    Task.objects.filter(pk=task_id).update(status="done")
    return f"video {task_id} done"


@shared_task(bind=True)
@validate_sub_task_exists(id_arg="segment_id")
def process_segment(self: Any, segment_id: int) -> str:
    Segment.objects.filter(pk=segment_id).update(status="done")
    return f"segment {segment_id} done"
