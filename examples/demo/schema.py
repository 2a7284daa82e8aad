"""The demo app's tables: `tasks` and `sub_tasks`, as an app like the seed's would have them."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

import sqlalchemy as sa

metadata = sa.MetaData()

tasks = sa.Table(
    "tasks",
    metadata,
    sa.Column("id", sa.String(36), primary_key=True),
    sa.Column("status", sa.String(20), nullable=False, index=True),
    sa.Column("updated_at", sa.DateTime(timezone=False), nullable=False),
    sa.Column("celery_task_id", sa.String(64)),
    sa.Column("title", sa.String(200)),
)

sub_tasks = sa.Table(
    "sub_tasks",
    metadata,
    sa.Column("id", sa.String(36), primary_key=True),
    sa.Column("task_id", sa.String(36), nullable=False, index=True),
    sa.Column("status", sa.String(20), nullable=False),
)

ACTIVE = ("pending", "queued", "processing")


def utcnow() -> datetime:
    return datetime.now(UTC).replace(tzinfo=None)


def new_id() -> str:
    return str(uuid.uuid4())


def create_schema(engine: sa.Engine) -> None:
    metadata.create_all(engine)
