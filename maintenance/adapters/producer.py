"""Sending a Celery task to the monitored app's broker (the requeue of a lost row)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from celery import Celery

from maintenance.adapters.redis_reader import broker_errors


class TaskProducer:
    def __init__(self, app: Celery):
        self.app = app

    def send(
        self, name: str, *, args: Sequence[Any], kwargs: dict[str, Any], queue: str, task_id: str
    ) -> None:
        with broker_errors("requeueing a lost row"):
            self.app.send_task(name, args=list(args), kwargs=kwargs, queue=queue, task_id=task_id)
