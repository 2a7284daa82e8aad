"""`queues` and `purge` against real Redis, PostgreSQL and Celery."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from pathlib import Path

import orjson
import pytest
import redis
import sqlalchemy as sa
from celery import Celery

from examples.demo.schema import new_id, tasks, utcnow
from maintenance.cli.queue_commands import Duration
from tests.conftest import ROOT, run_cli, wait_for
from tests.workers import demo_worker

QUEUE = "video_processing"
BAND3 = "video_processing\x06\x163"


def add_rows(engine: sa.Engine, *ids: str) -> None:
    with engine.begin() as conn:
        conn.execute(
            sa.insert(tasks), [dict(id=i, status="pending", updated_at=utcnow()) for i in ids]
        )


def test_queues_shows_names_bands_orphans_eta_and_unacked_exactly(
    config_file: Path,
    producer: Celery,
    engine: sa.Engine,
    redis_url: str,
    database_url: str,
    redis_client: redis.Redis,
    tmp_path: Path,
) -> None:
    live = [new_id() for _ in range(3)]
    held = new_id()
    add_rows(engine, *live, held)
    for row in live:
        producer.send_task("demo.process_video", args=[row], queue=QUEUE)
    for _ in range(2):
        producer.send_task("demo.process_video", args=[new_id()], queue=QUEUE)  # orphans
    producer.send_task("demo.process_video", args=[live[0]], queue=QUEUE, countdown=7200)
    for _ in range(4):
        producer.send_task("other.thing", args=[1], queue=QUEUE, priority=5)  # band 3, unbound
    # a worker of the other queue holds an ETA task unacked throughout
    with demo_worker(redis_url, database_url, tmp_path / "worker.log", queues="celery"):
        producer.send_task("demo.process_video", args=[held], queue="celery", countdown=3600)
        wait_for(lambda: redis_client.hlen("unacked") == 1, what="the ETA task taken unacked")
        check_queues(config_file, redis_client)


def check_queues(config_file: Path, redis_client: redis.Redis) -> None:
    result = run_cli("--config", str(config_file), "queues", "--json")
    assert result.returncode == 0, result.stderr
    doc = json.loads(result.stdout)
    bands = {(b["queue"], b["priority"]): b for b in doc["queues"]}
    plain = bands[(QUEUE, 0)]
    names = {n["name"]: n for n in plain["by_task_name"]}
    queued_video = redis_client.llen(QUEUE)
    assert plain["length"] == plain["messages"] == queued_video
    assert names["demo.process_video"]["messages"] == queued_video == 6
    assert names["demo.process_video"]["orphans"] == 2 and names["demo.process_video"]["bound"]
    assert plain["eta"]["messages"] >= 1 and 7000 < plain["eta"]["furthest_s"] <= 7200
    tail = orjson.loads(redis_client.lindex(QUEUE, -1) or b"{}")
    assert plain["next_to_deliver"]["task_id"] == tail["headers"]["id"]
    other = bands[(QUEUE, 3)]
    assert other["by_task_name"] == [
        {"name": "other.thing", "messages": 4, "share": 1.0, "orphans": None, "bound": False}
    ]
    unacked = doc["unacked"]
    assert unacked["entries"] == 1 and unacked["by_task_name"] == {"demo.process_video": 1}
    assert unacked["by_age"]["< 1 min"] == 1 and unacked["oldest_age_s"] < 60
    text = run_cli("--config", str(config_file), "queues")
    assert text.returncode == 0, text.stderr
    assert "queue video_processing[priority 3]: 4 messages (LLEN), 4 read" in text.stdout
    line = next(ln for ln in text.stdout.splitlines() if ln.startswith("other.thing"))
    assert line.split() == ["other.thing", "4", "100.0%", "-"]

    listed = run_cli("--config", str(config_file), "queues", "--task-name", "other.*", "--json")
    entries = [json.loads(ln) for ln in listed.stdout.splitlines()]
    assert len(entries) == 4 and {e["priority"] for e in entries} == {3}
    assert all(e["arguments"] == "[[1],{}]" for e in entries)
    sample = run_cli("--config", str(config_file), "queues", "--sample", "2", "--json")
    sampled = {
        (b["queue"], b["priority"]): b["messages"] for b in json.loads(sample.stdout)["queues"]
    }
    assert sampled[(QUEUE, 0)] == 2 and sampled[(QUEUE, 3)] == 2


def send_tenant_work(producer: Celery, count: int) -> dict[str, int]:
    """`demo.render` messages for tenants 1..3, and `demo.process_video` ones: task id ->
    tenant (0 for the other task name)."""
    sent: dict[str, int] = {}
    for i in range(count):
        tenant = i % 3 + 1
        sent[producer.send_task("demo.render", kwargs={"task_id": new_id(), "tenant_id": tenant},
                                queue=QUEUE).id] = tenant  # fmt: skip
        sent[producer.send_task("demo.process_video", args=[new_id()], queue=QUEUE).id] = 0
    return sent


def queued_ids(client: redis.Redis) -> list[str]:
    return [orjson.loads(raw)["headers"]["id"] for raw in client.lrange(QUEUE, 0, -1)]


def test_purge_by_filter_under_traffic_takes_exactly_the_matching_messages(
    config_file: Path, producer: Celery, redis_client: redis.Redis, redis_url: str
) -> None:
    """A producer pushes and a consumer pops the same queue throughout: every matching message
    present at the start is taken once (or popped by the consumer first), nothing else is
    touched, the order of what stays is kept; then `restore` puts them back."""
    before = send_tenant_work(producer, 600)
    start_ids = queued_ids(redis_client)
    stop = threading.Event()
    pushed: dict[str, int] = {}
    popped: list[str] = []

    def traffic() -> None:
        client = redis.Redis.from_url(redis_url)
        app = Celery("traffic", broker=redis_url, set_as_current=False)
        while not stop.is_set():
            pushed.update(send_tenant_work(app, 2))
            raw = client.rpop(QUEUE)  # a consumer taking the tail, as a worker does
            if isinstance(raw, bytes):
                popped.append(orjson.loads(raw)["headers"]["id"])
            stop.wait(0.005)
        app.close()
        client.close()

    dry = run_cli("--config", str(config_file), "purge", "--task-name", "demo.render",
                  "--where", "kwargs.tenant_id == 2", "--dry-run", "--json")  # fmt: skip
    assert dry.returncode == 0, dry.stderr
    assert json.loads(dry.stdout)["selection"]["matching"] == 200
    mover = threading.Thread(target=traffic)
    mover.start()
    try:
        done = run_cli("--config", str(config_file), "purge", "--task-name", "demo.render",
                       "--where", "kwargs.tenant_id == 2", "--force", "--json")  # fmt: skip
    finally:
        stop.set()
        mover.join()
    assert done.returncode in (0, 1), done.stderr
    outcome = json.loads(done.stdout)
    quarantined = outcome["done"].get("quarantined", 0)
    after = queued_ids(redis_client)
    sent = {**before, **pushed}
    taken = set(sent) - set(after) - set(popped)
    assert len(after) == len(set(after))  # no message twice, none lost or left as a tombstone
    assert all(sent[t] == 2 for t in taken)  # nothing taken that does not match
    targets = {t for t, tenant in before.items() if tenant == 2}
    assert not targets & set(after)  # nothing missed that was there when the purge started
    assert quarantined == len(taken) and quarantined > 0
    assert targets - set(popped) <= taken
    kept = [t for t in after if t in before]
    assert kept == [t for t in start_ids if t in set(kept)]  # the order of what stays is kept

    back = run_cli("--config", str(config_file), "restore", "--all", "--json")
    assert back.returncode == 0, back.stderr
    assert taken <= set(queued_ids(redis_client))


def test_purge_refuses_what_is_not_a_comparison_and_needs_a_terminal_or_force(
    config_file: Path,
) -> None:
    bad = run_cli("--config", str(config_file), "purge", "--task-name", "x", "--where",
                  "__import__('os').system('true')", "--dry-run")  # fmt: skip
    assert bad.returncode == 2 and "--where" in bad.stderr and "Traceback" not in bad.stderr
    no_tty = run_cli("--config", str(config_file), "purge", "--task-name", "x")
    assert no_tty.returncode == 2 and "--force" in no_tty.stderr
    nothing = run_cli("--config", str(config_file), "purge", "--task-name", "x", "--force")
    assert nothing.returncode == 0 and "Nothing matches." in nothing.stdout


@pytest.mark.parametrize(
    ("text", "seconds"), [("90", 90), ("90s", 90), ("30m", 1800), ("2h", 7200), ("7d", 604800)]
)
def test_durations(text: str, seconds: float) -> None:
    assert Duration().convert(text, None, None) == seconds


def test_a_listing_piped_into_head_ends_quietly(
    config_file: Path, producer: Celery, redis_client: redis.Redis
) -> None:
    for i in range(1500):
        producer.send_task("demo.render", kwargs={"task_id": f"r{i}"}, queue=QUEUE)
    cmd = (
        f"{sys.executable} -m maintenance.cli.main --config {config_file} "
        "queues --task-name '*' --limit 100000 | head -1; echo \"status=${PIPESTATUS[0]}\""
    )
    done = subprocess.run(
        ["bash", "-c", cmd], capture_output=True, text=True, cwd=ROOT, timeout=120
    )
    assert "Traceback" not in done.stderr and "internal error" not in done.stderr, done.stderr
    assert "status=141" in done.stdout and "demo.render" in done.stdout
