"""Message and result templates captured from a real Celery app, then replicated with fresh ids.

Each template is one real `send_task` (or `store_result`) read back from Redis byte for byte, with
the ids it carries turned into %-format placeholders. Replication only substitutes ids: the
envelope layout, header order, separators and base64 body are kombu's and Celery's own.
"""

from __future__ import annotations

import base64
import json
import os
from dataclasses import dataclass
from typing import cast

import redis
from celery import Celery

from maintenance.adapters.redis_layout import BrokerLayout

TASK_ID = "aaaaaaaa-aaaa-4aaa-8aaa-aaaaaaaaaaaa"
ROW_ID = "bbbbbbbb-bbbb-4bbb-8bbb-bbbbbbbbbbbb"
SOURCE = "s3://media-uploads/originals/2024/05/clip-0001.mp4"  # pads messages to ~1 KB


@dataclass(frozen=True)
class Kind:
    """One kind of message in the data set: a task name, where it goes, and how it binds."""

    name: str  # short label
    task: str
    queue: str
    priority: int
    row: str  # "task", "sub_task" or "" (unmanaged)
    weight: float


KINDS = (
    Kind("video", "demo.process_video", "video_processing", 0, "task", 0.40),
    Kind("video_p6", "demo.process_video", "video_processing", 6, "task", 0.15),
    Kind("video_p9", "demo.process_video", "video_processing", 9, "task", 0.10),
    Kind("segment", "demo.process_segment", "video_processing", 3, "sub_task", 0.10),
    Kind("render", "demo.render", "celery", 0, "task", 0.15),
    Kind("render_p3", "demo.render", "celery", 3, "task", 0.05),
    Kind("email", "demo.send_email", "celery", 0, "", 0.05),
)


@dataclass(frozen=True)
class MessageTemplate:
    kind: Kind
    key: str  # the list kombu pushed the real message to
    envelope: str  # %-format with t (task id), g (delivery tag), b (base64 body)
    body: str  # %-format with r (row id)

    def render(self, task_id: str, row_id: str, tag: str) -> str:
        body = base64.b64encode((self.body % {"r": row_id}).encode()).decode()
        return self.envelope % {"t": task_id, "g": tag, "b": body, "r": row_id}


def _placeholders(text: str, names: dict[str, str]) -> str:
    text = text.replace("%", "%%")
    for value, name in names.items():
        text = text.replace(value, f"%({name})s")
    return text


def _send(app: Celery, kind: Kind, pad: int) -> None:
    kwargs: dict[str, object]
    if kind.task == "demo.render":
        args, kwargs = [], {"task_id": ROW_ID, "quality": "hd", "source": SOURCE}
    elif kind.task == "demo.send_email":
        args, kwargs = ["someone@example.com"], {"template": SOURCE}
    else:
        args, kwargs = [ROW_ID], {"source": SOURCE}
    if pad:  # an app that sends big arguments (a manifest, a list of segments)
        kwargs["notes"] = ("segment " * (pad // 8 + 1))[:pad]
    app.send_task(
        kind.task,
        args=args,
        kwargs=kwargs,
        queue=kind.queue,
        priority=kind.priority,
        task_id=TASK_ID,
        serializer="json",
    )


def capture_messages(
    client: redis.Redis, app: Celery, kinds: tuple[Kind, ...] = KINDS, pad: int = 0
) -> list[MessageTemplate]:
    """Send one real message per kind and read it back from the list kombu chose for it;
    `pad` bytes of extra keyword argument make bigger messages."""
    layout = BrokerLayout()
    templates = []
    for kind in kinds:
        _send(app, kind, pad)
        for _, key in layout.queue_keys(kind.queue):
            raw = cast("bytes | None", client.rpop(key))  # a client that does not decode
            if raw is not None:
                break
        else:
            raise RuntimeError(f"the {kind.name} message was not found in Redis")
        payload = json.loads(raw)
        body_b64 = payload["body"]
        body = base64.b64decode(body_b64).decode()
        tag = payload["properties"]["delivery_tag"]
        envelope = _placeholders(raw.decode(), {body_b64: "b", TASK_ID: "t", tag: "g", ROW_ID: "r"})
        templates.append(MessageTemplate(kind, key, envelope, _placeholders(body, {ROW_ID: "r"})))
    return templates


@dataclass(frozen=True)
class ResultTemplates:
    success: str  # %-format with t (task id), r (result), d (date_done)
    failure: str


def capture_results(client: redis.Redis, app: Celery) -> ResultTemplates:
    """What a worker writes: `store_result` through the app's own Redis backend."""
    backend = app.backend
    done = "2001-02-03T04:05:06.123456+00:00"
    out = []
    for state, value in (("SUCCESS", ROW_ID), ("FAILURE", RuntimeError(f"task {ROW_ID} gone"))):
        backend.store_result(
            TASK_ID,
            value,
            state,
            traceback="Traceback (most recent call last):\n  ...\nRuntimeError",
        )
        key = backend.get_key_for_task(TASK_ID)
        raw = cast("bytes", client.get(key))  # just stored, by a client that does not decode
        client.delete(key)
        doc = json.loads(raw)
        text = raw.decode().replace(doc["date_done"], done)
        out.append(_placeholders(text, {TASK_ID: "t", ROW_ID: "r", done: "d"}))
    return ResultTemplates(*out)


def uuids(count: int) -> list[str]:
    """Random version-4 UUID strings, in bulk (uuid.uuid4() one by one is the slow part)."""
    hexes = os.urandom(16 * count).hex()
    out = []
    for i in range(0, 32 * count, 32):
        h = hexes[i : i + 32]
        out.append(f"{h[:8]}-{h[8:12]}-4{h[13:16]}-a{h[17:20]}-{h[20:]}")
    return out
