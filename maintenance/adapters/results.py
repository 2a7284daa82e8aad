"""Result backend writes: REVOKED states in bulk, and batched UNLINK of stale result keys."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import redis
from celery import states
from celery.exceptions import TaskRevokedError

from maintenance.adapters.redis_layout import ResultLayout
from maintenance.adapters.redis_reader import broker_errors

UNLINK_BATCH = 1000


class ResultWriter:
    """Writes what Celery's own backend would write, but pipelined: one round trip per batch."""

    def __init__(self, backend: Any, client: redis.Redis, layout: ResultLayout):
        self.backend = backend
        self.client = client
        self.layout = layout

    def _revoked_meta(self, reason: str) -> dict[str, Any]:
        """What the backend stores for a revoked task, but the task id (one `date_done` per
        batch: building it costs more than encoding it)."""
        exc = self.backend.prepare_exception(TaskRevokedError(reason))
        return self.backend._get_result_meta(  # type: ignore[no-any-return]
            result=exc, state=states.REVOKED, traceback=None, request=None)

    def mark_revoked(self, task_ids: Sequence[str], reason: str, only_if_absent: bool = False
                     ) -> int:
        """So that `AsyncResult(id).state == 'REVOKED'` for every task we took out of play.

        `only_if_absent` keeps a result a worker already wrote (a message that slipped away may
        have run): we never overwrite a real outcome with ours.
        """
        expires = self.backend.expires
        encode = self.backend.encode
        with broker_errors("storing REVOKED states"):
            for start in range(0, len(task_ids), UNLINK_BATCH):
                meta = self._revoked_meta(reason)
                pipe = self.client.pipeline(transaction=False)
                for task_id in task_ids[start:start + UNLINK_BATCH]:
                    pipe.set(self.layout.key_for(task_id), encode({**meta, "task_id": task_id}),
                             ex=int(expires) if expires else None, nx=only_if_absent)
                pipe.execute()
        return len(task_ids)

    def forget_revoked(self, task_id: str) -> bool:
        """Drop a REVOKED state we wrote, so a restored task starts clean (PENDING)."""
        key = self.layout.key_for(task_id)
        with broker_errors("reading a result"):
            value = self.client.get(key)
            if value is None or b'"REVOKED"' not in value:
                return False
            return bool(self.client.delete(key))

    def unlink(self, keys: Iterable[str]) -> int:
        """UNLINK frees memory off the main thread; 1000 keys per call keeps each call short."""
        removed = 0
        batch: list[str] = []
        with broker_errors("deleting stale results"):
            for key in keys:
                batch.append(key)
                if len(batch) >= UNLINK_BATCH:
                    removed += int(self.client.unlink(*batch))
                    batch = []
            if batch:
                removed += int(self.client.unlink(*batch))
        return removed
