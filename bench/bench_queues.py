"""Benchmark: `queues` beside `check` on the same data, the hazards' cost, and a `purge`.

    .venv/bin/python -m bench.bench_queues                    # N = 1,000,000
    .venv/bin/python -m bench.bench_queues --n 100000 --runs 3

Starts its own Redis and PostgreSQL, fills them as bench_check does (bench/dataset.py), then runs,
alternately on the same data: `check --json --no-results`, the same with `scan.hazards = false`
(what the hazard detection costs), and `queues --json`; then `purge --dry-run` and `purge --force`
of the `demo.render` messages whose row id sorts below '8' (about half of them: ~100,000 at
1M), while a probe client PINGs Redis every millisecond. Prints wall times, peak RSS and the
ratios, and checks the purge's account (taken = selected = removed from the lists). A script
that prints figures, not a test.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import orjson
import redis

from bench.dataset import fill
from bench.memwatch import MemoryPeaks
from bench.probe import Probe, ProbeStats
from tests.conftest import write_config
from tests.servers import PostgresServer, RedisServer, free_port, temp_dir

ROOT = Path(__file__).resolve().parent.parent
CLI = ROOT / ".venv" / "bin" / "task-cleanup"
ENV_OVERRIDES = ("REDIS_URL", "RESULT_BACKEND_URL", "DATABASE_URL", "MAINTENANCE_CONFIG")
PURGE = ["--task-name", "demo.render", "--queue", "celery", "--where", "kwargs.task_id < '8'"]


@dataclass(frozen=True)
class Timed:
    wall_s: float
    peak_mib: float
    exit_code: int
    probe: ProbeStats
    stdout: bytes


def timed(config: Path, redis_url: str, *args: str) -> Timed:
    env = {k: v for k, v in os.environ.items() if k not in ENV_OVERRIDES}
    out_path, err_path = config.parent / "out.json", config.parent / "err.txt"
    peaks = MemoryPeaks()
    with out_path.open("wb") as out, err_path.open("wb") as err, Probe(redis_url) as probe:
        started = time.perf_counter()
        proc = subprocess.Popen(
            [str(CLI), "--config", str(config), *args], stdout=out, stderr=err, env=env
        )
        while proc.poll() is None:
            peaks.sample(proc.pid)
            time.sleep(0.005)
        wall = time.perf_counter() - started
    assert probe.stats is not None
    if proc.returncode not in (0, 1):
        sys.exit(f"{args[0]} failed ({proc.returncode}):\n{err_path.read_text()[-3000:]}")
    return Timed(wall, peaks.main_mib, proc.returncode, probe.stats, out_path.read_bytes())


def line(label: str, run: Timed) -> str:
    return (
        f"{label:<22} {run.wall_s:7.2f} s  peak {run.peak_mib:6.0f} MiB  "
        f"probe max {run.probe.max_ms:6.1f} ms  (exit {run.exit_code})"
    )


def celery_lengths(client: redis.Redis) -> int:
    return sum(int(client.llen(k)) for k in ("celery", "celery\x06\x163"))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=1_000_000)
    parser.add_argument("--runs", type=int, default=2, help="runs of each read command")
    args = parser.parse_args()
    print(f"{os.cpu_count()} CPUs, N = {args.n:,}, {time.strftime('%Y-%m-%d %H:%M')}", flush=True)
    work = Path(tempfile.mkdtemp(prefix="tm-bench-q-"))
    redis_server = RedisServer(free_port(), temp_dir("tm-bench-redis-")).start()
    pg = PostgresServer(free_port(), temp_dir("tm-bench-pg-")).start()
    redis_url = f"{redis_server.url}/0"
    try:
        started = time.perf_counter()
        db_url, planted = fill(args.n, redis_url, pg.url)
        print(f"filled {planted.messages:,} messages in {time.perf_counter() - started:.0f} s")
        config = write_config(work / "on.toml", redis_url, db_url)
        off_dir = work / "off"
        off_dir.mkdir()
        hazards_off = write_config(off_dir / "off.toml", redis_url, db_url)
        text = hazards_off.read_text()
        hazards_off.write_text(text.replace("[scan]\n", "[scan]\nhazards = false\n", 1))
        runs: dict[str, list[Timed]] = {"check": [], "check, no hazards": [], "queues": []}
        for _ in range(args.runs):
            runs["check"].append(timed(config, redis_url, "check", "--json", "--no-results"))
            print(line("check --no-results", runs["check"][-1]), flush=True)
            runs["check, no hazards"].append(
                timed(hazards_off, redis_url, "check", "--json", "--no-results")
            )
            print(line("  scan.hazards = false", runs["check, no hazards"][-1]), flush=True)
            runs["queues"].append(timed(config, redis_url, "queues", "--json"))
            print(line("queues", runs["queues"][-1]), flush=True)
        median = {k: statistics.median(r.wall_s for r in v) for k, v in runs.items()}
        client = redis.Redis.from_url(redis_url)
        before = celery_lengths(client)
        dry = timed(config, redis_url, "purge", *PURGE, "--dry-run", "--json")
        matching = orjson.loads(dry.stdout)["selection"]["matching"]
        print(line(f"purge --dry-run ({matching:,})", dry), flush=True)
        real = timed(config, redis_url, "purge", *PURGE, "--force", "--json")
        taken = orjson.loads(real.stdout)["done"].get("quarantined", 0)
        print(line(f"purge --force ({taken:,})", real), flush=True)
        removed = before - celery_lengths(client)
        client.close()
        ok = taken == matching == removed
        print()
        print(f"== summary, N = {args.n:,}, median of {args.runs} ==")
        print(f"check --no-results     {median['check']:7.2f} s")
        print(
            f"hazards' cost          {median['check'] / median['check, no hazards']:7.3f}x "
            f"(check with / without scan.hazards)"
        )
        print(f"queues / check         {median['queues'] / median['check']:7.3f}x (target 1.5x)")
        print(
            f"purge of {taken:,}: {real.wall_s:.2f} s wall (selection alone {dry.wall_s:.2f} s), "
            f"probe max {real.probe.max_ms:.1f} ms, account "
            + ("exact" if ok else f"WRONG: matching {matching}, taken {taken}, removed {removed}")
        )
        return 0 if ok else 1
    finally:
        redis_server.stop()
        pg.stop()
        for directory in (work, redis_server.directory, pg.directory):
            shutil.rmtree(directory, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
