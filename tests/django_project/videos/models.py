"""The app's job rows: a Task per video, Segments of it as sub-tasks."""

# mypy: disallow-subclassing-any=False
# (Django ships no type hints: its base classes are Any to mypy.)

from django.db import models


class Task(models.Model):
    status = models.CharField(max_length=20, default="pending", db_index=True)
    updated_at = models.DateTimeField(auto_now=True)
    celery_task_id = models.CharField(max_length=64, blank=True, default="")
    title = models.CharField(max_length=200, blank=True, default="")


class Segment(models.Model):
    task = models.ForeignKey(Task, on_delete=models.CASCADE, related_name="segments")
    status = models.CharField(max_length=20, default="pending")
