"""End to end on MariaDB and real Redis: `init-db`, `check --json`, then `cleanup --force
--grace 0` find and quarantine exactly the planted orphans, and the history records them."""

from __future__ import annotations

import json
from pathlib import Path

import redis
import sqlalchemy as sa
from celery import Celery
from celery.result import AsyncResult

from examples.demo.schema import new_id, sub_tasks, tasks, utcnow
from maintenance.core.models import as_text
from tests.conftest import run_cli, write_config

QUEUE = "video_processing"
QUARANTINE = "task-maintenance:quarantine"


def test_check_and_cleanup_quarantine_exactly_the_orphans(
    tmp_path: Path,
    mariadb_url: str,
    redis_url: str,
    producer: Celery,
    redis_client: redis.Redis,
) -> None:
    """Live, deleted and finished rows, sub-tasks under a live and a finished parent, and a
    message naming its live row in upper case (the server's collation ignores case, as the
    app's own queries do): only the deleted and finished ones' messages are orphans."""
    engine = sa.create_engine(mariadb_url)
    live, gone, done = ([new_id() for _ in range(n)] for n in (6, 3, 2))
    parent_live, parent_done = new_id(), new_id()
    sub_live, sub_orphan = new_id(), new_id()
    with engine.begin() as conn:
        conn.execute(
            sa.insert(tasks),
            [{"id": i, "status": "pending", "updated_at": utcnow()} for i in [*live, parent_live]]
            + [{"id": i, "status": "done", "updated_at": utcnow()} for i in [*done, parent_done]],
        )
        conn.execute(
            sa.insert(sub_tasks),
            [
                {"id": sub_live, "task_id": parent_live, "status": "pending"},
                {"id": sub_orphan, "task_id": parent_done, "status": "pending"},
            ],
        )

    def send(name: str, row_id: str) -> str:
        return str(producer.send_task(name, args=[row_id], queue=QUEUE).id)

    kept = [send("demo.process_video", i) for i in live]
    kept += [send("demo.process_video", live[0].upper()), send("demo.process_segment", sub_live)]
    orphans = {send("demo.process_video", i) for i in [*gone, *done]}
    orphans.add(send("demo.process_segment", sub_orphan))
    config = write_config(tmp_path / "maintenance.toml", redis_url, mariadb_url)
    base = ("--config", str(config))

    init = run_cli(*base, "init-db")
    assert init.returncode == 0, init.stderr
    check = run_cli(*base, "check", "--json", "--no-results")
    assert check.returncode == 1, check.stderr  # findings
    report = json.loads(check.stdout)
    assert report["counts"]["orphan"] == len(orphans)
    result = run_cli(
        *base, "cleanup", "--force", "--json", "--grace", "0", "--max-orphan-ratio", "0.9"
    )
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["done"] == {"quarantined": len(orphans)}
    # Entries are "task id:delivery tag".
    assert {as_text(f).split(":")[0] for f in redis_client.hkeys(QUARANTINE)} == orphans
    assert redis_client.hlen(QUARANTINE) == len(orphans)
    queued = [json.loads(raw)["headers"]["id"] for raw in redis_client.lrange(QUEUE, 0, -1)]
    assert sorted(queued) == sorted(kept)
    for task_id in orphans:
        assert AsyncResult(task_id, app=producer).state == "REVOKED"
    history = run_cli(*base, "history", "--json")
    assert history.returncode == 0, history.stderr
    (run,) = json.loads(history.stdout)
    assert (run["outcome"], run["mode"]) == ("ok", "cleanup")
    recorded = run_cli(*base, "history", "--run", run["id"], "--json")
    actions = json.loads(recorded.stdout)
    assert {a["task_id"] for a in actions if a["action"] == "quarantined"} == orphans
    again = run_cli(*base, "check", "--json", "--no-results")
    assert json.loads(again.stdout)["counts"]["orphan"] == 0
    engine.dispose()
