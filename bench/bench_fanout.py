"""Benchmark: the fan-out scan (issue 12) on 2 maintenance workers vs 1, vs the in-process scan.

    .venv/bin/python -m bench.bench_fanout                    # N = 200,000 messages, 4 queues
    .venv/bin/python -m bench.bench_fanout --n 500000 --runs 3 --no-results

Starts its own Redis and PostgreSQL, fills them as bench_check does (bench/dataset.py, 4 queues,
every message kind in each), then times on the same data, alternately: the in-process scan
(`Maintenance.scan`, what `check` runs), and `Maintenance.fan_out_scan` under the run lock with 1
and then 2 real `celery -A maintenance.worker worker -c 1` processes on the maintenance queue
(started before the timing: their start-up is not counted). Checks that every fanned-out report
counts what the in-process one does, and prints the times and the ratios. A script that prints
figures, not a test; on a 2-core machine the servers, the workers and the scan share two cores.
"""

from __future__ import annotations

import argparse
import logging
import os
import statistics
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

import structlog

from bench.dataset import Shape, fill
from maintenance.config import load_settings
from maintenance.core.report import ScanReport
from maintenance.service import Maintenance
from tests.conftest import write_config
from tests.servers import PostgresServer, RedisServer, free_port, temp_dir
from tests.service_procs import maintenance_worker

QUEUES = 4


def fan_out_config(work: Path, redis_url: str, db_url: str, queues: tuple[str, ...]) -> Path:
    path = write_config(work / "maintenance.toml", redis_url, db_url, queues=queues)
    text = path.read_text().replace("[scan]\n", "[scan]\nfan_out = true\n", 1)
    path.write_text(text.replace('level = "INFO"', 'level = "WARNING"'))
    return path


@contextmanager
def workers(config: Path, work: Path, count: int) -> Iterator[None]:
    with ExitStack() as stack:
        for i in range(count):
            stack.enter_context(maintenance_worker(config, work / f"w{count}-{i}.out", f"b{i}"))
        yield


def timed(scan: Callable[[], ScanReport]) -> tuple[float, ScanReport]:
    started = time.perf_counter()
    report = scan()
    return time.perf_counter() - started, report


def comparable(report: ScanReport) -> dict[str, int]:
    """Counts but lost rows: fan-out parts do not judge them (each sees only its share)."""
    return {kind: n for kind, n in report.counts().items() if kind != "lost"}


def main() -> int:
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=200_000)
    parser.add_argument("--runs", type=int, default=2)
    parser.add_argument("--no-results", action="store_true", help="as scan_orphans: no results")
    args = parser.parse_args()
    results = not args.no_results
    print(
        f"{os.cpu_count()} CPUs, N = {args.n:,}, {QUEUES} queues, result keys "
        f"{'scanned' if results else 'not scanned'}, {time.strftime('%Y-%m-%d %H:%M')}",
        flush=True,
    )
    work = Path(tempfile.mkdtemp(prefix="tm-bench-fanout-"))
    redis_server = RedisServer(free_port(), temp_dir("tm-bench-redis-")).start()
    pg = PostgresServer(free_port(), temp_dir("tm-bench-pg-")).start()
    redis_url = f"{redis_server.url}/0"
    try:
        started = time.perf_counter()
        db_url, planted = fill(args.n, redis_url, pg.url, shape=Shape("queues4", queues=QUEUES))
        print(
            f"filled {planted.messages:,} messages, {planted.results:,} result keys in "
            f"{time.perf_counter() - started:.0f} s; queues {', '.join(planted.queues)}"
        )
        config = fan_out_config(work, redis_url, db_url, planted.queues)
        settings = load_settings(config, env={})
        times: dict[str, list[float]] = {"in-process": [], "1 worker": [], "2 workers": []}
        mismatches: list[str] = []
        with Maintenance.open(settings) as maintenance:
            reference: ScanReport | None = None

            def fanned() -> ScanReport:
                with maintenance.adapters.run_lock.held("bench fan-out") as lease:
                    lease.name_run(f"bench-{time.monotonic_ns()}")
                    return maintenance.fan_out_scan(results=results)

            for count in (1, 2):
                with workers(config, work, count):
                    for _ in range(args.runs):
                        wall, report = timed(lambda: maintenance.scan(results=results))
                        times["in-process"].append(wall)
                        reference = reference or report
                        label = f"{count} worker{'s' if count > 1 else ''}"
                        wall_f, report_f = timed(fanned)
                        times[label].append(wall_f)
                        if comparable(report_f) != comparable(report):
                            mismatches.append(f"{label}: {report_f.counts()} != {report.counts()}")
                        print(
                            f"  in-process {wall:6.2f} s   fan-out, {label}: {wall_f:6.2f} s   "
                            f"orphans {report_f.counts()['orphan']:,}",
                            flush=True,
                        )
        best = {label: min(values) for label, values in times.items()}
        print("\nbest of runs (median):")
        for label, values in times.items():
            print(f"  {label:<11} {best[label]:6.2f} s  ({statistics.median(values):.2f} s)")
        base = best["in-process"]
        print(
            f"ratio in-process / fan-out: 1 worker {base / best['1 worker']:.2f}x, "
            f"2 workers {base / best['2 workers']:.2f}x; "
            f"2 workers vs 1: {best['1 worker'] / best['2 workers']:.2f}x"
        )
        if mismatches:
            print("MISMATCH:", *mismatches, sep="\n  ")
            return 1
        print("every fanned-out report counted what the in-process scan counted (lost rows aside)")
        return 0
    finally:
        redis_server.stop()
        pg.stop()


if __name__ == "__main__":
    raise SystemExit(main())
