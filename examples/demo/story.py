"""The seed's story as steps: an app enqueues work, someone deletes rows by hand, maintenance runs.

Used by `python -m scripts.demo` (`make demo`) and by the `demo` profile of docker-compose.yml:

    python -m examples.demo.story --rows 12 --delete 4 --scan

creates the demo tables, enqueues one real `demo.process_video` message per row through the demo
app, deletes some rows "by hand", and with `--scan` asks the maintenance worker for a
`maintenance.scan_orphans` run by name and waits for its summary.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from celery import Celery

from examples.demo.schema import create_schema, new_id, tasks, utcnow
from maintenance.schedule import SCAN_ORPHANS

QUEUE = "video_processing"


@dataclass(frozen=True)
class Story:
    live: dict[str, str]  # row id -> Celery task id, rows that still exist
    deleted: dict[str, str]  # row id -> Celery task id, rows deleted by hand: orphans


def enqueue_and_delete(engine: sa.Engine, producer: Celery, rows: int, delete: int) -> Story:
    """Rows committed, then their messages sent, then `delete` rows removed by an operator."""
    ids = [new_id() for _ in range(rows)]
    with engine.begin() as conn:
        conn.execute(
            sa.insert(tasks),
            [
                {"id": i, "status": "queued", "updated_at": utcnow(), "title": f"video {n}"}
                for n, i in enumerate(ids)
            ],
        )
    sent = {i: producer.send_task("demo.process_video", args=[i], queue=QUEUE).id for i in ids}
    with engine.begin() as conn:
        for i in ids:
            conn.execute(sa.update(tasks).where(tasks.c.id == i).values(celery_task_id=sent[i]))
    gone = ids[:delete]
    with engine.begin() as conn:  # the seed's mistake: rows deleted directly in the database
        conn.execute(sa.delete(tasks).where(tasks.c.id.in_(gone)))
    return Story(live={i: sent[i] for i in ids[delete:]}, deleted={i: sent[i] for i in gone})


def run_scan_now(
    app: Celery, queue: str = "maintenance", timeout_s: float = 600.0
) -> dict[str, Any]:
    """What Beat does at 02:00, on demand: send the task by its stable name and wait."""
    result = app.send_task(SCAN_ORPHANS, kwargs={"started_by": "demo"}, queue=queue)
    summary: dict[str, Any] = result.get(timeout=timeout_s)
    return summary


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the compose `demo-producer`: configured by the demo app's environment."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=12)
    parser.add_argument("--delete", type=int, default=4)
    parser.add_argument("--scan", action="store_true", help="run scan_orphans now and wait")
    args = parser.parse_args(argv)
    from examples.demo.app import app  # reads REDIS_URL: only when run as a program

    engine = sa.create_engine(os.environ["DATABASE_URL"], pool_pre_ping=True)
    create_schema(engine)
    story = enqueue_and_delete(engine, app, args.rows, args.delete)
    print(
        f"enqueued {args.rows} demo.process_video messages; deleted {len(story.deleted)} rows "
        "by hand (their messages are now orphans)",
        flush=True,
    )
    if args.scan:
        print(json.dumps(run_scan_now(app), indent=2), flush=True)
    engine.dispose()
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
