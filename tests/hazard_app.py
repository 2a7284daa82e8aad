"""A Celery app whose one task leaves a line in a file per run: how many times did it run?

Its transport's visibility timeout is short (`HAZARD_VISIBILITY_S`, default 2 s), so an ETA a few
seconds out is beyond it, as an ETA of days is beyond the default hour.
"""

from __future__ import annotations

import os

from celery import Celery

app = Celery("hazards", set_as_current=False)
app.conf.update(
    broker_url=os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0"),
    broker_transport_options={
        "visibility_timeout": float(os.environ.get("HAZARD_VISIBILITY_S", "2")),
        # kombu 5.6+ sweeps unacked messages every interval x throttle seconds (100 s by
        # default): once a second here, so the redelivery a long ETA meets happens in the test
        "unacked_restore_interval": 1,
        "unacked_restore_throttle": 1,
    },
    task_default_queue="hazards",
    worker_prefetch_multiplier=1,
)


@app.task(name="hazard.touch")
def touch(path: str, label: str) -> None:
    with open(path, "a", encoding="utf-8") as out:
        out.write(label + "\n")
