"""Benchmark: a small `task-cleanup check` (1,000 messages) with a live Celery worker present.

    .venv/bin/python -m bench.bench_small                 # N = 1,000, 5 check runs
    .venv/bin/python -m bench.bench_small --runs 9 --n 1000

Starts its own Redis and PostgreSQL, fills them (bench/dataset.py), starts a real Celery worker
(the demo app, consuming a queue of its own so that it leaves the planted messages alone),
then runs `check --json` as a subprocess `--runs` times. Prints min/median wall and its split:
interpreter start-up (`python -c pass`), imports (`maintenance.cli.main` and the check command's
module, which the group loads when asked for), the scan (the
report's `duration_s`, which includes the worker inspection running beside it), the worker
inspection alone (`WorkerControl.snapshot` in this process) and the rest (config, connections,
output, the interpreter's exit). Beside it, a floor measured in the same run: `python -c pass`
+ a bare ping with `limit=1` + LRANGE of the planted lists, and the ratio. A script that prints
figures, not a test: it asserts only that the reports name the live worker.

`--baseline-pythonpath DIR` runs the same checks alternately with another source tree first on
the path (e.g. `git archive HEAD` unpacked): before and after on the same data and worker.
"""

from __future__ import annotations

import argparse
import compileall
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import redis

from bench.dataset import fill
from maintenance.adapters.celery_app import build_celery_app
from maintenance.adapters.workers import WorkerControl
from maintenance.config import load_settings
from maintenance.core.bindings import BindingTable
from tests.conftest import write_config
from tests.servers import PostgresServer, RedisServer, free_port, temp_dir
from tests.workers import demo_worker

ROOT = Path(__file__).resolve().parent.parent
CLI = ROOT / ".venv" / "bin" / "task-cleanup"
ENV_OVERRIDES = ("REDIS_URL", "RESULT_BACKEND_URL", "DATABASE_URL", "MAINTENANCE_CONFIG")
IDLE_QUEUE = "bench_small_idle"  # the worker's own queue: the planted messages stay queued
# What a check imports: the command group, then the check command (loaded when asked for).
IMPORT_TIMER = (
    "import time; t = time.perf_counter(); import maintenance.cli.main; "
    "import maintenance.cli.commands; print(time.perf_counter() - t)"
)


def _wall(cmd: list[str], env: dict[str, str], cwd: Path) -> tuple[float, bytes, int]:
    started = time.perf_counter()
    proc = subprocess.run(cmd, env=env, cwd=cwd, capture_output=True, check=False)
    return time.perf_counter() - started, proc.stdout, proc.returncode


class _Runs:
    """`check --json` runs of one source tree: wall, the report's scan time, workers named."""

    def __init__(self, label: str):
        self.label = label
        self.walls: list[float] = []
        self.scans: list[float] = []
        self.workers: set[str] = set()

    def run(self, i: int, cli: Path, config: Path, env: dict[str, str]) -> bool:
        wall, out, code = _wall([str(cli), "--config", str(config), "check", "--json"], env, ROOT)
        doc = orjson.loads(out) if out.strip() else None
        if doc is None:
            print(f"{self.label} run {i} failed, exit {code}", flush=True)
            return False
        self.walls.append(wall)
        self.scans.append(float(doc["duration_s"]))
        self.workers.update(doc["workers"])
        print(
            f"{self.label} run {i}: wall {wall:.3f} s, scan {doc['duration_s']:.3f} s, "
            f"exit {code}, workers {doc['workers']}",
            flush=True,
        )
        return True


def _timed(fn: Callable[[], Any], runs: int) -> list[float]:
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return times


def _fmt(times: list[float]) -> str:
    return f"min {min(times):.3f} s, median {statistics.median(times):.3f} s"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=1000, help="messages, result keys, rows")
    parser.add_argument("--runs", type=int, default=5, help="check runs (min/median)")
    parser.add_argument("--cli", type=Path, default=CLI, help="the task-cleanup to run")
    parser.add_argument(
        "--baseline-pythonpath",
        type=Path,
        help="a source tree (e.g. an earlier commit unpacked) whose checks run alternately",
    )
    args = parser.parse_args()
    print(f"{os.cpu_count()} CPUs; check = {args.cli} --config ... check --json", flush=True)
    work = Path(tempfile.mkdtemp(prefix="tm-bench-small-"))
    redis_server = RedisServer(free_port(), temp_dir("tm-bench-small-redis-")).start()
    pg = PostgresServer(free_port(), temp_dir("tm-bench-small-pg-")).start()
    try:
        return _bench(args, work, f"{redis_server.url}/0", pg)
    finally:
        redis_server.stop()
        pg.stop()
        for directory in (work, redis_server.directory, pg.directory):
            shutil.rmtree(directory, ignore_errors=True)


def _bench(args: argparse.Namespace, work: Path, redis_url: str, pg: PostgresServer) -> int:
    # As `pip install` does: each run then reads bytecode instead of compiling our modules
    # (this machine sets PYTHONDONTWRITEBYTECODE, so nothing else would write it).
    for package in ("maintenance", "examples", "tests"):
        compileall.compile_dir(ROOT / package, quiet=1)
    db_url, planted = fill(args.n, redis_url, pg.url)  # flushes Redis: before the worker starts
    config = write_config(work / "maintenance.toml", redis_url, db_url)
    # The default wait (2 s), not the tests' 1 s: the figure an operator would see.
    config.write_text(config.read_text().replace("inspect_timeout_s = 1.0", ""))
    settings = load_settings(config, env={})
    env = {k: v for k, v in os.environ.items() if k not in ENV_OVERRIDES}
    python = sys.executable
    print(
        f"data: {planted.messages:,} queued + {planted.unacked:,} unacked messages in "
        f"{len(planted.keys)} lists, {planted.results:,} result keys; "
        f"inspect_timeout_s {settings.scan.inspect_timeout_s}",
        flush=True,
    )
    with demo_worker(
        redis_url, db_url, work / "worker.log", queues=IDLE_QUEUE, name="bench"
    ) as worker:
        print(f"worker pid {worker.pid} ready", flush=True)
        ours, theirs = _Runs("check"), _Runs("baseline")
        base_env = None
        if args.baseline_pythonpath:
            base_env = {**env, "PYTHONPATH": str(args.baseline_pythonpath.resolve())}
        for i in range(1, args.runs + 1):
            if base_env is not None and not theirs.run(i, args.cli, config, base_env):
                return 1
            if not ours.run(i, args.cli, config, env):
                return 1
        if not ours.workers or (base_env is not None and not theirs.workers):
            print("PROBLEM: no report named the live worker", flush=True)
            return 1
        walls, scans = ours.walls, ours.scans

        imports = [
            float(_wall([python, "-c", IMPORT_TIMER], env, ROOT)[1]) for _ in range(args.runs)
        ]
        bare = [_wall([python, "-c", "pass"], env, ROOT)[0] for _ in range(args.runs)]
        app = build_celery_app(settings)
        control = WorkerControl(app, timeout_s=settings.scan.inspect_timeout_s)
        bindings = BindingTable(settings.bindings)
        control.ping()  # connections warm, as they are by then inside check
        snapshots = _timed(lambda: control.snapshot(bindings), args.runs)
        pings = _timed(lambda: control.ping(), args.runs)
        bare_pings = _timed(
            lambda: app.control.ping(timeout=settings.scan.inspect_timeout_s, limit=1), args.runs
        )
        client = redis.Redis.from_url(redis_url)
        lranges = _timed(lambda: [client.lrange(key, 0, -1) for key in planted.keys], args.runs)
        client.close()
        app.close()

    wall_med, scan_med, import_med = (statistics.median(x) for x in (walls, scans, imports))
    floor = min(bare) + min(bare_pings) + min(lranges)
    print("\n== check of", f"{planted.messages + planted.unacked:,} messages, live worker ==")
    print(f"wall                              {_fmt(walls)}")
    print(f"  interpreter start-up            {_fmt(bare)}  (python -c pass)")
    print(f"  imports                         {_fmt(imports)}  (the group and the check command)")
    print(f"  scan (report duration_s)        {_fmt(scans)}  (workers inspected beside it)")
    print(f"    worker snapshot (in-process)  {_fmt(snapshots)}")
    print(f"    of which the ping             {_fmt(pings)}")
    rest = wall_med - statistics.median(bare) - import_med - scan_med
    print(f"  rest (config, connect, output, exit)  median {rest:.3f} s")
    print("floor")
    print(f"  python -c pass                  {_fmt(bare)}")
    print(f"  bare ping, limit=1              {_fmt(bare_pings)}")
    print(f"  LRANGE of the planted lists     {_fmt(lranges)}")
    print(f"  floor (sum of the minimums)     {floor:.3f} s")
    print(f"ratio check median wall / floor:  {wall_med / floor:.1f}x")
    if theirs.walls:
        base_med = statistics.median(theirs.walls)
        print(f"baseline wall                     {_fmt(theirs.walls)}")
        print(f"  baseline scan                   {_fmt(theirs.scans)}")
        print(f"ratio check / baseline (median wall): {wall_med / base_med:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
