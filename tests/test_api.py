"""`RedisTaskCleaner`, the seed's Python API, over the service: plain data, same safety."""

from __future__ import annotations

from pathlib import Path

from celery import Celery

from maintenance import RedisTaskCleaner


def test_the_api_reads_and_acts_through_the_service(config_file: Path, producer: Celery) -> None:
    """Orphans are found with where they sit, and revoking one is recorded as the API's."""
    task_id = producer.send_task("demo.process_video", args=["no-such-row"]).id
    with RedisTaskCleaner.from_config(config_file, env={}) as cleaner:
        (orphan,) = cleaner.find_orphaned_tasks()
        assert (orphan["task_id"], orphan["reason"]) == (task_id, "row_missing")
        assert [m["task_id"] for m in cleaner.get_active_tasks_from_redis()] == [task_id]
        assert cleaner.get_active_tasks_from_db() == []
        done = cleaner.revoke([task_id])
        runs = cleaner.maintenance.adapters.history.recent_runs()
    assert done["done"] == {"quarantined": 1}
    assert [(r["mode"], r["started_by"]) for r in runs] == [("revoke", "api")]


def test_the_api_lists_and_purges_by_filter(config_file: Path, producer: Celery) -> None:
    """The same selection as `purge`: dry run first, then taken, recorded, restorable."""
    tenants = {
        producer.send_task("demo.render", kwargs={"task_id": f"r{i}", "tenant": i % 2}).id: i % 2
        for i in range(6)
    }
    with RedisTaskCleaner.from_config(config_file, env={}) as cleaner:
        assert cleaner.queues()["queues"][0]["by_task_name"][0]["messages"] == 6
        listed = cleaner.list_messages("demo.*")
        assert {m["task_id"] for m in listed} == set(tenants)
        dry = cleaner.purge("demo.render", where="kwargs.tenant == 1")
        assert dry["selection"]["matching"] == 3 and dry["done"] == {}
        done = cleaner.purge("demo.render", where="kwargs.tenant == 1", dry_run=False)
        assert done["done"] == {"quarantined": 3}
        left = {m["task_id"] for m in cleaner.list_messages("*")}
        assert left == {t for t, tenant in tenants.items() if tenant == 0}
        runs = cleaner.maintenance.adapters.history.recent_runs()
        assert [(r["mode"], r["started_by"]) for r in runs] == [("purge", "api")]
        assert cleaner.restore()["done"] == {"restored": 3}
