"""Benchmark: `task-cleanup check` end to end against the naive checker, on the same data.

    .venv/bin/python -m bench.bench_check                        # N = 1,000,000
    .venv/bin/python -m bench.bench_check --sizes 100000,1000000 # linearity

Starts its own Redis and PostgreSQL, fills them (bench/dataset.py), runs `check --json` as a
subprocess while a probe client PINGs Redis every millisecond, verifies the report against what
was planted, then runs the naive approach (bench/naive.py) and prints the ratio. A script that
prints figures, not a test: it asserts nothing but the report's correctness.
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
from typing import Any

import orjson
import redis

from bench.dataset import Planted, fill
from bench.memwatch import MemoryPeaks
from bench.naive import NaiveRun, run_naive
from bench.probe import Probe, ProbeStats
from tests.conftest import write_config
from tests.servers import PostgresServer, RedisServer, free_port, temp_dir

ROOT = Path(__file__).resolve().parent.parent

CLI = ROOT / ".venv" / "bin" / "task-cleanup"
ENV_OVERRIDES = ("REDIS_URL", "RESULT_BACKEND_URL", "DATABASE_URL", "MAINTENANCE_CONFIG")


@dataclass(frozen=True)
class CheckRun:
    wall_s: float
    report_s: float
    peak_rss_mib: float  # the check process
    child_rss_mib: float  # its forked result scan (RSS counts pages shared with the parent)
    child_private_mib: float  # ... of which its own pages
    exit_code: int
    probe: ProbeStats
    problems: tuple[str, ...]  # differences between the report and what was planted


def run_check(
    config: Path, redis_url: str, planted: Planted, nice: int, cli: Path = CLI
) -> CheckRun:
    """One `check --json` subprocess, its memory polled from /proc while it runs."""
    env = {k: v for k, v in os.environ.items() if k not in ENV_OVERRIDES}
    out_path, err_path = config.parent / "check.json", config.parent / "check.err"
    peaks = MemoryPeaks()
    with (
        out_path.open("wb") as out,
        err_path.open("wb") as err,
        Probe(redis_url, nice=nice) as probe,
    ):
        started = time.perf_counter()
        proc = subprocess.Popen(
            [str(cli), "--config", str(config), "check", "--json"],
            stdout=out,
            stderr=err,
            env=env,
            cwd=config.parent,
        )
        while proc.poll() is None:
            peaks.sample(proc.pid)
            time.sleep(0.005)
        wall_s = time.perf_counter() - started
    assert probe.stats is not None
    doc = _report_head(out_path.read_bytes())
    if doc is None:
        sys.exit(f"check failed (exit {proc.returncode}):\n{err_path.read_text()[-3000:]}")
    return CheckRun(
        wall_s,
        float(doc["duration_s"]),
        peaks.main_mib,
        peaks.child_mib,
        peaks.child_private_mib,
        proc.returncode,
        probe.stats,
        tuple(verify(doc, planted)),
    )


def _report_head(text: bytes) -> dict[str, Any] | None:
    """The report without its findings list: the counts are all we check, and a few hundred
    thousand findings parsed here would bloat this process (and so what it spawns next)."""
    cut = text.find(b',\n  "findings": [')
    try:
        head: dict[str, Any] = orjson.loads(text[:cut] + b"\n}" if cut >= 0 else text)
        return head
    except orjson.JSONDecodeError:
        return None


def verify(doc: dict[str, Any], planted: Planted) -> list[str]:
    """The findings must be exactly the planted ones: speed is worth nothing otherwise."""
    counts, reasons = doc["counts"], doc["reasons"]
    unmanaged = sum(place["unmanaged"] for place in doc["places"].values())
    expected = {
        "orphans": (counts["orphan"], sum(planted.orphans.values())),
        "stale results": (counts["stale_result"], planted.stale_results),
        "lost rows": (counts["lost"], planted.lost_rows),
        "unreadable": (counts["unreadable"], 0),
        "unmanaged messages": (unmanaged, planted.unmanaged),
        "result keys scanned": (doc["results_scanned"], planted.results),
    }
    for reason, count in planted.orphans.items():
        expected[f"orphans ({reason})"] = (reasons.get(f"orphan:{reason}", 0), count)
    return [
        f"{what}: report {got:,}, planted {want:,}"
        for what, (got, want) in expected.items()
        if got != want
    ]


def describe_data(redis_url: str, planted: Planted, fill_s: float) -> str:
    client = redis.Redis.from_url(redis_url)
    lengths = {key: client.llen(key) for key in planted.keys}
    head = client.lrange(planted.keys[0], 0, 99)
    memory = client.info("memory")["used_memory"] / 2**20
    client.close()
    avg = sum(map(len, head)) / max(len(head), 1)
    lists = ", ".join(f"{k.replace(chr(6) + chr(22), '^')}={n:,}" for k, n in lengths.items())
    orphans = ", ".join(f"{r} {c:,}" for r, c in sorted(planted.orphans.items()))
    return (
        f"data: {planted.messages:,} queued messages (~{avg:,.0f} B each) in {lists}; "
        f"{planted.unacked:,} unacked; {planted.results:,} result keys; "
        f"{planted.task_rows:,} task rows + {planted.sub_task_rows:,} sub-task rows; "
        f"Redis used_memory {memory:,.0f} MiB; filled in {fill_s:.1f} s\n"
        f"planted: {sum(planted.orphans.values()):,} orphans ({orphans}), "
        f"{planted.stale_results:,} stale results, {planted.lost_rows:,} lost rows, "
        f"{planted.unmanaged:,} unmanaged messages"
    )


def describe_check(i: int, run: CheckRun, messages: int) -> str:
    verdict = (
        "findings match the planted data"
        if not run.problems
        else "MISMATCH: " + "; ".join(run.problems)
    )
    return (
        f"check run {i}: wall {run.wall_s:.2f} s (scan {run.report_s:.2f} s), "
        f"{messages / run.wall_s:,.0f} msgs/s, peak RSS {run.peak_rss_mib:.0f} MiB "
        f"(+ forked result scan: RSS {run.child_rss_mib:.0f} MiB, of which "
        f"{run.child_private_mib:.0f} MiB its own), "
        f"exit {run.exit_code}\n    {run.probe.describe()}\n    {verdict}"
    )


def describe_naive(naive: NaiveRun) -> str:
    m, r = naive.messages, naive.results
    note = " (EXTRAPOLATED from samples)" if naive.extrapolated else " (measured in full)"
    return (
        f"naive: KEYS {naive.keys_s:.2f} s + LRANGE 0 -1 {naive.lrange_s:.2f} s (measured) "
        f"+ SELECT per message {m.estimated_s:.1f} s ({m.how}) "
        f"+ GET+SELECT per result key {r.estimated_s:.1f} s ({r.how}) "
        f"= {naive.total_s:.1f} s{note}\n    {naive.probe.describe()}"
    )


def bench_size(
    n: int, redis_url: str, pg: PostgresServer, work: Path, args: argparse.Namespace
) -> dict[str, Any]:
    print(f"\n== N = {n:,} ==", flush=True)
    started = time.perf_counter()
    db_url, planted = fill(n, redis_url, pg.url)
    print(describe_data(redis_url, planted, time.perf_counter() - started), flush=True)
    size_dir = work / f"n{n}"
    size_dir.mkdir(exist_ok=True)
    config = write_config(size_dir / "maintenance.toml", redis_url, db_url)
    messages = planted.messages + planted.unacked
    with Probe(redis_url, nice=args.probe_nice) as idle:
        time.sleep(3)
    assert idle.stats is not None
    print(
        f"probe baseline, 3 s with nothing else running: max {idle.stats.max_ms:.2f} ms, "
        f"p99 {idle.stats.p99_ms:.2f} ms",
        flush=True,
    )
    runs, baseline = [], []
    for i in range(1, args.runs + 1):
        if args.baseline_cli:  # alternately, on the same data: side by side in one session
            baseline.append(
                run_check(config, redis_url, planted, args.probe_nice, args.baseline_cli)
            )
            print("baseline " + describe_check(i, baseline[-1], messages), flush=True)
        runs.append(run_check(config, redis_url, planted, args.probe_nice))
        print(describe_check(i, runs[-1], messages), flush=True)
    if baseline:
        ours, theirs = (statistics.median(r.wall_s for r in rs) for rs in (runs, baseline))
        print(
            f"check vs baseline (median wall): {ours:.2f} s vs {theirs:.2f} s, "
            f"ratio {ours / theirs:.3f}",
            flush=True,
        )
    naive = None
    if not args.no_naive:
        naive = run_naive(redis_url, db_url, planted.keys, args.naive_sample, args.probe_nice)
        print(describe_naive(naive), flush=True)
    wall = statistics.median(r.wall_s for r in runs)
    ratio = f"{naive.total_s / wall:.1f}x" if naive else "-"
    print(f"ratio naive / check (median wall {wall:.2f} s): {ratio}", flush=True)
    return {"n": n, "runs": runs, "naive": naive, "wall": wall, "messages": messages}


def summary(rows: list[dict[str, Any]]) -> None:
    print("\n== summary (median of check runs) ==")
    print(
        f"{'N':>10}  {'check s':>8}  {'msgs/s':>9}  {'RSS MiB':>7}  {'+fork own':>9}  "
        f"{'probe max ms':>12}  {'p99 ms':>6}  {'naive s':>8}  {'ratio':>6}  ok"
    )
    for row in rows:
        runs: list[CheckRun] = row["runs"]
        naive: NaiveRun | None = row["naive"]
        print(
            f"{row['n']:>10,}  {row['wall']:>8.2f}  {row['messages'] / row['wall']:>9,.0f}  "
            f"{max(r.peak_rss_mib for r in runs):>7.0f}  "
            f"{max(r.child_private_mib for r in runs):>9.0f}  "
            f"{max(r.probe.max_ms for r in runs):>12.2f}  "
            f"{max(r.probe.p99_ms for r in runs):>6.2f}  "
            f"{naive.total_s if naive else float('nan'):>8.1f}  "
            f"{naive.total_s / row['wall'] if naive else float('nan'):>5.1f}x  "
            f"{'yes' if not any(r.problems for r in runs) else 'NO'}"
        )
    if len(rows) >= 2:
        first, last = rows[0], rows[-1]
        print(
            f"scaling {first['n']:,} -> {last['n']:,} ({last['n'] / first['n']:.0f}x data): "
            f"check time x{last['wall'] / first['wall']:.1f}"
        )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=1_000_000, help="messages, result keys, rows")
    parser.add_argument("--sizes", help="comma-separated sizes, e.g. 100000,1000000")
    parser.add_argument("--runs", type=int, default=1, help="check runs per size (median)")
    parser.add_argument(
        "--naive-sample",
        type=int,
        default=20_000,
        help="items per naive per-item loop before extrapolating",
    )
    parser.add_argument("--no-naive", action="store_true", help="skip the naive approach")
    parser.add_argument(
        "--baseline-cli",
        type=Path,
        help="another task-cleanup (e.g. an earlier checkout's .venv/bin/task-cleanup) run "
        "alternately with ours on the same data",
    )
    parser.add_argument(
        "--probe-nice",
        type=int,
        default=0,
        help="niceness of the probe process (negative needs root)",
    )
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")] if args.sizes else [args.n]
    print(f"{os.cpu_count()} CPUs; check = {CLI} --config ... check --json", flush=True)
    work = Path(tempfile.mkdtemp(prefix="tm-bench-"))
    redis_server = RedisServer(free_port(), temp_dir("tm-bench-redis-")).start()
    pg = PostgresServer(free_port(), temp_dir("tm-bench-pg-")).start()
    try:
        rows = [bench_size(n, f"{redis_server.url}/0", pg, work, args) for n in sizes]
    finally:
        redis_server.stop()
        pg.stop()
        for directory in (work, redis_server.directory, pg.directory):  # ~0.6 GB at 1M
            shutil.rmtree(directory, ignore_errors=True)
    summary(rows)
    return 0 if all(not r.problems for row in rows for r in row["runs"]) else 1


if __name__ == "__main__":
    sys.exit(main())
