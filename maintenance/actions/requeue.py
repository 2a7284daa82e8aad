"""Task migration for lost rows: send the bound Celery task again with the row's id."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from typing import Any

import structlog

from maintenance.core.bindings import ARG_PATTERN, Binding
from maintenance.core.models import Finding, RowKind
from maintenance.services import Adapters

log = structlog.get_logger(__name__)


def requeue_binding(bindings: Sequence[Binding], row_kind: RowKind) -> Binding | None:
    """The first binding for this kind of row that names one concrete task (no glob)."""
    for binding in bindings:
        if binding.kind == row_kind and not any(ch in binding.task for ch in "*?["):
            return binding
    return None


def message_for(binding: Binding, db_id: str) -> tuple[list[Any], dict[str, Any], str | None]:
    """(args, kwargs, task_id) that put `db_id` where the binding reads it."""
    if binding.id_from == "task_id":
        return [], {}, db_id
    if m := ARG_PATTERN.match(binding.id_from):
        index = int(m.group(1))
        if index != 0:
            raise ValueError(f"cannot rebuild positional arguments before {binding.id_from}")
        return [db_id], {}, None
    return [], {binding.id_from.split(".", 1)[1]: db_id}, None


def requeue_rows(adapters: Adapters, findings: Sequence[Finding], now: float) -> set[str]:
    settings = adapters.settings
    queue = settings.cleanup.requeue_queue or settings.scan.queues[0]
    sent: dict[str, str] = {}
    for f in findings:
        binding = requeue_binding(settings.bindings, "task")
        if binding is None or not f.db_id:
            log.warning("cannot requeue: no concrete binding for task rows", db_id=f.db_id)
            continue
        try:
            args, kwargs, task_id = message_for(binding, f.db_id)
        except ValueError as exc:
            log.warning("cannot requeue", db_id=f.db_id, error=str(exc))
            continue
        celery_id = task_id or str(uuid.uuid4())
        adapters.producer.send(
            binding.task, args=args, kwargs=kwargs, queue=queue, task_id=celery_id
        )
        sent[f.db_id] = celery_id
        log.info("🧹 lost row requeued", db_id=f.db_id, task=binding.task, task_id=celery_id)
    adapters.stuck_rows.touch(sent, now, sent)
    return set(sent)
