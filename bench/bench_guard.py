"""What `@validate_task_exists` costs: a no-op task with and without the guard on a real worker.

    .venv/bin/python -m bench.bench_guard [--tasks 2000] [--rounds 3] [--pool prefork]

Starts its own Redis and PostgreSQL on loopback (tests/servers.py), one worker with concurrency 1
(so per-task costs add up serially), and alternates plain and guarded rounds to spread the noise
of a shared machine. For each round the queue is filled while the worker does not consume it, so
the worker drains a full queue: throughput is (N - 1) / (last finish - first finish), from
timestamps the tasks themselves return. Also times the guard's look-up alone, in this process.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import sqlalchemy as sa
from celery import Celery

from examples.demo.schema import create_schema, new_id, tasks, utcnow
from maintenance.config import load_settings
from maintenance.guards.runtime import GuardRuntime
from tests.servers import PostgresServer, RedisServer, free_port, temp_dir

ROOT = Path(__file__).resolve().parent.parent

QUEUE = "bench_guard"
WORKER = "bench-guard@localhost"


def write_config(directory: Path, redis_url: str, database_url: str) -> Path:
    path = directory / "maintenance.toml"
    path.write_text(
        f'[redis]\nbroker_url = "{redis_url}"\n\n[database]\nurl = "{database_url}"\n'
        f'\n[logging]\ndir = "{directory / "logs"}"\n'
    )
    return path


def start_worker(
    app: Celery, env: dict[str, str], pool: str, log_dir: Path
) -> subprocess.Popen[bytes]:
    log_dir.mkdir(parents=True, exist_ok=True)
    with (log_dir / "stderr.log").open("wb") as stderr:
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "celery",
                "-A",
                "tests.guarded_app",
                "worker",
                "-P",
                pool,
                "-c",
                "1",
                "-Q",
                QUEUE,
                "-n",
                WORKER,
                "--without-gossip",
                "--without-mingle",
                "--without-heartbeat",
                "-l",
                "WARNING",
            ],
            cwd=ROOT,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=stderr,
        )
    deadline = time.monotonic() + 60
    while not app.control.ping(destination=[WORKER], timeout=0.5):
        if time.monotonic() > deadline or process.poll() is not None:
            process.terminate()
            raise SystemExit("worker did not start:\n" + (log_dir / "stderr.log").read_text())
    return process


def run_round(app: Celery, task_name: str, row_ids: list[str]) -> float:
    """Tasks per second while the worker drains a queue already holding every message."""
    app.control.cancel_consumer(QUEUE, destination=[WORKER], reply=True)
    results = [app.send_task(task_name, args=(row_id,), queue=QUEUE) for row_id in row_ids]
    app.control.add_consumer(QUEUE, destination=[WORKER], reply=True)
    finished = [float(result.get(timeout=300)) for result in results]
    for result in results:
        result.forget()
    return (len(finished) - 1) / (max(finished) - min(finished))


def lookup_latency_ms(runtime: GuardRuntime, row_ids: list[str]) -> tuple[float, float]:
    """p50 and p99 of the guard's own look-up (pool checkout, pre-ping, one SELECT)."""
    for row_id in row_ids[:100]:
        runtime.fetch("task", row_id)
    samples = []
    for row_id in row_ids:
        start = time.perf_counter()
        runtime.fetch("task", row_id)
        samples.append((time.perf_counter() - start) * 1000)
    samples.sort()
    return statistics.median(samples), samples[int(len(samples) * 0.99)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=2000, help="tasks per round")
    parser.add_argument("--rounds", type=int, default=3, help="rounds per variant")
    parser.add_argument("--pool", default="prefork", choices=["prefork", "threads", "solo"])
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="bench-guard-"))
    redis_server = RedisServer(free_port(), temp_dir("bench-redis-")).start()
    pg = PostgresServer(free_port(), temp_dir("bench-pg-")).start()
    worker = None
    app = Celery("bench", set_as_current=False)
    try:
        redis_url = f"{redis_server.url}/0"
        app.conf.update(broker_url=redis_url, result_backend=redis_url)
        engine = sa.create_engine(pg.url)
        create_schema(engine)
        row_ids = [new_id() for _ in range(args.tasks)]
        with engine.begin() as conn:
            conn.execute(
                sa.insert(tasks),
                [dict(id=i, status="pending", updated_at=utcnow()) for i in row_ids],
            )
        engine.dispose()
        config = write_config(work, redis_url, pg.url)
        env = {
            **os.environ,
            "C_FORCE_ROOT": "1",
            "GUARD_BROKER_URL": redis_url,
            "MAINTENANCE_CONFIG": str(config),
            "GUARD_LOG_DIR": str(work / "logs"),
            "GUARD_LOG_LEVEL": "WARNING",
            "PYTHONPATH": str(ROOT),
        }
        worker = start_worker(app, env, args.pool, work / "logs")
        run_round(app, "guarded.noop_guarded", row_ids[:200])  # warm up both paths
        run_round(app, "guarded.noop", row_ids[:200])
        plain, guarded = [], []
        for _ in range(args.rounds):
            plain.append(run_round(app, "guarded.noop", row_ids))
            guarded.append(run_round(app, "guarded.noop_guarded", row_ids))
        runtime = GuardRuntime(load_settings(config, env={}))
        p50, p99 = lookup_latency_ms(runtime, row_ids)
        runtime.close()
    finally:
        if worker is not None:
            worker.terminate()
            worker.wait(30)
        app.close()
        redis_server.stop()
        pg.stop()

    tps_plain, tps_guarded = statistics.median(plain), statistics.median(guarded)
    added_ms = (1 / tps_guarded - 1 / tps_plain) * 1000
    print(f"worker: {args.pool}, concurrency 1; {args.tasks} tasks x {args.rounds} rounds each")
    print(
        f"without guard: {tps_plain:8.0f} tasks/s  (rounds: {', '.join(f'{x:.0f}' for x in plain)})"
    )
    print(
        f"with guard:    {tps_guarded:8.0f} tasks/s  (rounds: "
        f"{', '.join(f'{x:.0f}' for x in guarded)})"
    )
    print(f"added per task on the worker: {added_ms:.3f} ms (target < 1 ms)")
    print(f"guard look-up alone: p50 {p50:.3f} ms, p99 {p99:.3f} ms")


if __name__ == "__main__":
    main()
