"""Benchmark: `task-cleanup check` against a bare floor and the naive checker, on the same data.

    .venv/bin/python -m bench.bench_check                                # ours, N = 1,000,000
    .venv/bin/python -m bench.bench_check --shape ours,stale-backlog --sizes 100000,1000000
    .venv/bin/python -m bench.bench_check --shape all --sizes 100000 --repeat 3 --json-out t.json

Starts its own Redis and PostgreSQL; for each (shape, size) fills them (bench/dataset.py), then
runs, alternately `--repeat` times: the bare floor (bench/floor.py, no product code, one
process) and `check --json` (a subprocess; the private memory of it and of its forked result
scan polled from /proc), each while a probe client PINGs Redis every millisecond; verifies both
against what was planted, runs the naive checker (bench/naive.py) once, and prints one table of
medians and ratios. A script that prints figures, not a test: it asserts only correctness.
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import orjson
import redis
import sqlalchemy as sa

from bench.dataset import PRESETS, Planted, Shape, fill
from bench.memwatch import MemoryPeaks
from bench.naive import NaiveRun, run_naive
from bench.probe import Probe, ProbeStats
from tests.conftest import write_config
from tests.servers import PostgresServer, RedisServer, free_port, temp_dir

ROOT = Path(__file__).resolve().parent.parent

CLI = ROOT / ".venv" / "bin" / "task-cleanup"
ENV_OVERRIDES = ("REDIS_URL", "RESULT_BACKEND_URL", "DATABASE_URL", "MAINTENANCE_CONFIG")
GIB = 2**30


@dataclass(frozen=True)
class CheckRun:
    wall_s: float
    report_s: float
    peak_rss_mib: float  # the check process's VmHWM
    main_private_mib: float  # ... the most of it that was its own pages (sampled)
    child_rss_mib: float  # its forked result scan (RSS counts pages shared with the parent)
    child_private_mib: float  # ... of which its own pages
    exit_code: int
    probe: ProbeStats
    problems: tuple[str, ...]  # differences between the report and what was planted
    findings: int
    report_bytes: int


@dataclass(frozen=True)
class FloorRun:
    wall_s: float  # the subprocess, start to exit: as check's wall
    inner_s: float  # as the floor timed itself, after its imports
    peak_mib: float  # its own VmHWM, as it reports it
    private_mib: float  # polled from /proc, as for check
    phases: dict[str, float]
    probe: ProbeStats
    problems: tuple[str, ...]


def _env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k not in ENV_OVERRIDES}


def _watch(proc: subprocess.Popen[bytes], peaks: MemoryPeaks) -> float:
    started = time.perf_counter()
    while proc.poll() is None:
        peaks.sample(proc.pid)
        time.sleep(0.005)
    return time.perf_counter() - started


def run_check(
    config: Path, redis_url: str, planted: Planted, nice: int, cli: Path = CLI
) -> CheckRun:
    """One `check --json` subprocess, its memory polled from /proc while it runs."""
    out_path, err_path = config.parent / "check.json", config.parent / "check.err"
    peaks = MemoryPeaks()
    with (
        out_path.open("wb") as out,
        err_path.open("wb") as err,
        Probe(redis_url, nice=nice) as probe,
    ):
        proc = subprocess.Popen(
            [str(cli), "--config", str(config), "check", "--json"],
            stdout=out,
            stderr=err,
            env=_env(),
            cwd=config.parent,
        )
        wall_s = _watch(proc, peaks)
    assert probe.stats is not None
    text = out_path.read_bytes()
    doc = _report_head(text)
    if doc is None:
        sys.exit(f"check failed (exit {proc.returncode}):\n{err_path.read_text()[-3000:]}")
    return CheckRun(
        wall_s,
        float(doc["duration_s"]),
        peaks.main_mib,
        peaks.main_private_mib,
        peaks.child_mib,
        peaks.child_private_mib,
        proc.returncode,
        probe.stats,
        tuple(verify(doc, planted)),
        sum(doc["counts"].values()),
        len(text),
    )


def run_floor(redis_url: str, db_url: str, planted: Planted, nice: int) -> FloorRun:
    """The bare floor (bench/floor.py) as a subprocess, watched like check."""
    dsn = sa.engine.make_url(db_url).set(drivername="postgresql").render_as_string(False)
    queues = [arg for queue in planted.queues for arg in ("--queue", queue)]
    peaks = MemoryPeaks()
    with Probe(redis_url, nice=nice) as probe:
        proc = subprocess.Popen(
            [sys.executable, "-m", "bench.floor", "--redis-url", redis_url, "--dsn", dsn, *queues],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=_env(),
            cwd=ROOT,
        )
        assert proc.stdout is not None and proc.stderr is not None
        wall_s = _watch(proc, peaks)
        out, err = proc.stdout.read(), proc.stderr.read()
    assert probe.stats is not None
    if proc.returncode != 0:
        sys.exit(f"floor failed (exit {proc.returncode}):\n{err.decode()[-3000:]}")
    doc = orjson.loads(out)
    counts = doc["counts"]
    want = {
        "orphan": sum(planted.orphans.values()),
        "stale_result": planted.stale_results,
        "lost": planted.lost_rows,
        "unmanaged": planted.unmanaged,
        "results_scanned": planted.results,
        "messages": planted.messages + planted.unacked,
    }
    want |= {f"orphan:{reason}": count for reason, count in planted.orphans.items()}
    problems = tuple(
        f"floor {what}: {counts.get(what, 0):,}, planted {count:,}"
        for what, count in want.items()
        if counts.get(what, 0) != count
    )
    return FloorRun(
        wall_s,
        float(doc["wall_s"]),
        float(doc["peak_rss_mib"]),
        peaks.main_private_mib,
        doc["phases"],
        probe.stats,
        problems,
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


@dataclass(frozen=True)
class DataFacts:
    redis_used_mib: float
    db_mib: float
    avg_message_b: float
    fill_s: float
    bench_rss_mib: float  # this process after the fill: the fill is bounded


def data_facts(redis_url: str, db_url: str, planted: Planted, fill_s: float) -> DataFacts:
    client = redis.Redis.from_url(redis_url)
    head = client.lrange(planted.keys[0], 0, 99)
    memory = client.info("memory")["used_memory"] / 2**20
    client.close()
    engine = sa.create_engine(db_url)
    with engine.connect() as conn:
        db_bytes = conn.execute(sa.text("SELECT pg_database_size(current_database())")).scalar()
    engine.dispose()
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    avg = sum(map(len, head)) / max(len(head), 1)
    return DataFacts(memory, float(db_bytes or 0) / 2**20, avg, fill_s, own)


def describe_data(planted: Planted, facts: DataFacts) -> str:
    orphans = ", ".join(f"{r} {c:,}" for r, c in sorted(planted.orphans.items()))
    return (
        f"data: {planted.messages:,} queued messages (~{facts.avg_message_b:,.0f} B each) in "
        f"{len(planted.keys)} lists of {len(planted.queues)} queues; {planted.unacked:,} unacked; "
        f"{planted.results:,} result keys; {planted.task_rows:,} task rows + "
        f"{planted.sub_task_rows:,} sub-task rows; Redis used_memory "
        f"{facts.redis_used_mib:,.0f} MiB, database {facts.db_mib:,.0f} MiB; filled in "
        f"{facts.fill_s:.1f} s (this process's peak RSS {facts.bench_rss_mib:,.0f} MiB)\n"
        f"planted: {sum(planted.orphans.values()):,} orphans ({orphans}), "
        f"{planted.stale_results:,} stale results, {planted.lost_rows:,} lost rows, "
        f"{planted.old_live_rows:,} of {planted.live_rows:,} live task rows older than the "
        "stuck age (lost-row candidates with a message), "
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
        f"({run.main_private_mib:.0f} MiB own) + forked result scan: RSS "
        f"{run.child_rss_mib:.0f} MiB, {run.child_private_mib:.0f} MiB own; "
        f"exit {run.exit_code}\n    {run.probe.describe()}\n    {verdict}"
    )


def describe_floor(i: int, run: FloorRun) -> str:
    phases = ", ".join(f"{k[:-2]} {v:.2f} s" for k, v in run.phases.items())
    verdict = "counts match the planted data" if not run.problems else "; ".join(run.problems)
    return (
        f"floor run {i}: wall {run.wall_s:.2f} s (itself {run.inner_s:.2f} s: {phases}), "
        f"peak RSS {run.peak_mib:.0f} MiB "
        f"({run.private_mib:.0f} MiB own)\n    {run.probe.describe()}\n    {verdict}"
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


def describe_streaming(runs: list[CheckRun]) -> str:
    """The report's findings are written one by one (cli/render.py): a report bigger than the
    process ever was proves it was never held whole; a smaller one proves nothing either way."""
    run = max(runs, key=lambda r: r.report_bytes)
    report_mib = run.report_bytes / 2**20
    peak = run.main_private_mib or run.peak_rss_mib
    if report_mib > peak:
        verdict = "streamed: the report is bigger than the process ever was"
    else:
        verdict = "not proven at this size (report smaller than the process)"
    return (
        f"report: {report_mib:,.1f} MiB, {run.findings:,} findings "
        f"({run.report_bytes / max(run.findings, 1):,.0f} B each); check peak {peak:,.0f} MiB own "
        f"-> {verdict}"
    )


@dataclass
class Row:
    """One line of the table: medians over the repeats of one (shape, size)."""

    shape: str
    n: int
    floor_s: float
    check_s: float
    naive_s: float | None
    naive_extrapolated: bool
    main_mib: float  # max over the repeats of check's own pages
    child_mib: float  # ... of its forked result scan's own pages
    floor_mib: float
    probe_max_ms: float
    probe_p99_ms: float
    slowlog_ms: float
    floor_probe_max_ms: float
    findings: int
    report_mib: float
    ok: bool
    problems: list[str]
    redis_used_mib: float
    db_mib: float
    fill_s: float

    @property
    def check_per_floor(self) -> float:
        return self.check_s / self.floor_s

    @property
    def naive_per_check(self) -> float | None:
        return None if self.naive_s is None else self.naive_s / self.check_s


def bench_one(
    shape: Shape, n: int, redis_url: str, pg: PostgresServer, work: Path, args: argparse.Namespace
) -> Row:
    print(f"\n== shape {shape.name}, N = {n:,} ==  {shape}", flush=True)
    started = time.perf_counter()
    db_url, planted = fill(n, redis_url, pg.url, shape=shape)
    facts = data_facts(redis_url, db_url, planted, time.perf_counter() - started)
    print(describe_data(planted, facts), flush=True)
    size_dir = work / f"{shape.name}-n{n}"
    size_dir.mkdir(exist_ok=True)
    config = write_config(size_dir / "maintenance.toml", redis_url, db_url, queues=planted.queues)
    messages = planted.messages + planted.unacked
    with Probe(redis_url, nice=args.probe_nice) as idle:
        time.sleep(2)
    assert idle.stats is not None
    print(
        f"probe baseline, 2 s with nothing else running: max {idle.stats.max_ms:.2f} ms, "
        f"p99 {idle.stats.p99_ms:.2f} ms",
        flush=True,
    )
    floors: list[FloorRun] = []
    runs: list[CheckRun] = []
    baseline: list[CheckRun] = []
    for i in range(1, args.repeat + 1):  # alternately: noise hits both alike
        floors.append(run_floor(redis_url, db_url, planted, args.probe_nice))
        print(describe_floor(i, floors[-1]), flush=True)
        if args.baseline_cli:
            baseline.append(
                run_check(config, redis_url, planted, args.probe_nice, args.baseline_cli)
            )
            print("baseline " + describe_check(i, baseline[-1], messages), flush=True)
        runs.append(run_check(config, redis_url, planted, args.probe_nice))
        print(describe_check(i, runs[-1], messages), flush=True)
    if baseline:
        ours, theirs = (statistics.median(r.wall_s for r in rs) for rs in (runs, baseline))
        print(f"check vs baseline (median wall): {ours:.2f} s vs {theirs:.2f} s", flush=True)
    print(describe_streaming(runs), flush=True)
    naive = None
    if not args.no_naive:
        naive = run_naive(redis_url, db_url, planted.keys, args.naive_sample, args.probe_nice)
        print(describe_naive(naive), flush=True)
    problems = sorted(
        {p for r in runs for p in r.problems} | {p for f in floors for p in f.problems}
    )
    row = Row(
        shape=shape.name,
        n=n,
        floor_s=statistics.median(f.wall_s for f in floors),
        check_s=statistics.median(r.wall_s for r in runs),
        naive_s=naive.total_s if naive else None,
        naive_extrapolated=bool(naive and naive.extrapolated),
        main_mib=max(r.main_private_mib for r in runs),
        child_mib=max(r.child_private_mib for r in runs),
        floor_mib=max(f.private_mib for f in floors),
        probe_max_ms=max(r.probe.max_ms for r in runs),
        probe_p99_ms=max(r.probe.p99_ms for r in runs),
        slowlog_ms=max(r.probe.slowest_server_ms for r in runs),
        floor_probe_max_ms=max(f.probe.max_ms for f in floors),
        findings=runs[-1].findings,
        report_mib=max(r.report_bytes for r in runs) / 2**20,
        ok=not problems,
        problems=problems,
        redis_used_mib=facts.redis_used_mib,
        db_mib=facts.db_mib,
        fill_s=facts.fill_s,
    )
    print(
        f"check / floor (median of {args.repeat}): {row.check_s:.2f} s / {row.floor_s:.2f} s "
        f"= {row.check_per_floor:.2f}x",
        flush=True,
    )
    return row


def print_table(rows: list[Row], repeat: int) -> None:
    print(f"\n== summary: medians of {repeat} run(s); memory = max of each process's own pages ==")
    head = (
        f"{'shape':<14} {'N':>10} {'floor s':>8} {'check s':>8} {'chk/flr':>7} {'naive s':>8} "
        f"{'nv/chk':>7} {'MiB main+child':>14} {'flr MiB':>7} {'probe max':>9} {'p99':>5} "
        f"{'slowlog':>7} {'findings':>9}  verified"
    )
    print(head)
    for row in rows:
        naive = (
            f"{row.naive_s:.1f}" + ("~" if row.naive_extrapolated else "") if row.naive_s else "-"
        )
        ratio = f"{row.naive_per_check:.1f}x" if row.naive_per_check is not None else "-"
        print(
            f"{row.shape:<14} {row.n:>10,} {row.floor_s:>8.2f} {row.check_s:>8.2f} "
            f"{row.check_per_floor:>6.2f}x {naive:>8} {ratio:>7} "
            f"{f'{row.main_mib:.0f}+{row.child_mib:.0f}':>14} {row.floor_mib:>7.0f} "
            f"{row.probe_max_ms:>7.2f}ms {row.probe_p99_ms:>5.2f} {row.slowlog_ms:>5.2f}ms "
            f"{row.findings:>9,}  {'ok' if row.ok else 'PROBLEMS: ' + '; '.join(row.problems)}"
        )
    print("(naive ~: per-item loops extrapolated from a sample; slowlog: Redis's slowest command)")
    by_shape: dict[str, dict[int, Row]] = {}
    for row in rows:
        by_shape.setdefault(row.shape, {})[row.n] = row
    for shape, sizes in by_shape.items():
        if 1_000_000 in sizes and 10_000_000 in sizes:
            small, big = sizes[1_000_000], sizes[10_000_000]
            print(
                f"{shape}: 10M / 1M time ratio: check x{big.check_s / small.check_s:.1f}, "
                f"floor x{big.floor_s / small.floor_s:.1f} (linear would be x10)"
            )
        elif len(sizes) >= 2:
            lo, hi = min(sizes), max(sizes)
            print(
                f"{shape}: {hi:,} / {lo:,} time ratio ({hi / lo:.0f}x data): check "
                f"x{sizes[hi].check_s / sizes[lo].check_s:.1f}, floor "
                f"x{sizes[hi].floor_s / sizes[lo].floor_s:.1f}"
            )


def _mem_total_gib() -> float:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            return int(line.split()[1]) / 2**20
    return 0.0


def print_estimates(rows: list[Row], target: int = 10_000_000) -> None:
    """Estimates of a `target` run per shape: by the slope between the two largest sizes run,
    else linearly from the one (an upper bound: fixed costs scale too)."""
    total = _mem_total_gib()
    print(f"\n== estimate for N = {target:,} ({total:.1f} GiB RAM) ==")
    by_shape: dict[str, list[Row]] = {}
    for row in rows:
        by_shape.setdefault(row.shape, []).append(row)
    for shape, runs in by_shape.items():
        runs.sort(key=lambda r: r.n)
        hi = runs[-1]
        lo = runs[-2] if len(runs) >= 2 else None

        def scale(value: Callable[[Row], float], hi: Row = hi, lo: Row | None = lo) -> float:
            if lo is None or lo.n == hi.n:
                return value(hi) * target / hi.n
            slope = (value(hi) - value(lo)) / (hi.n - lo.n)
            return value(hi) + slope * (target - hi.n)

        how = f"slope {lo.n:,}..{hi.n:,}" if lo else f"linear from {hi.n:,}"
        redis_gib = scale(lambda r: r.redis_used_mib) / 1024
        db_gib = scale(lambda r: r.db_mib) / 1024
        check_gib = scale(lambda r: r.main_mib + r.child_mib) / 1024
        need = redis_gib + check_gib + 1.0  # + PostgreSQL's shared buffers, the bench, the OS
        fill_min, check_s = scale(lambda r: r.fill_s) / 60, scale(lambda r: r.check_s)
        print(
            f"{shape} ({how}): Redis ~{redis_gib:.1f} GiB, database ~{db_gib:.1f} GiB on disk, "
            f"fill ~{fill_min:.0f} min, check ~{check_s:.0f} s using ~{check_gib:.1f} GiB own; "
            f"RAM needed ~{need:.1f} GiB of {total:.1f}: "
            f"{'fits' if need < total * 0.9 else 'DOES NOT FIT'}"
        )


def _shapes(text: str) -> list[Shape]:
    names = list(PRESETS) if text == "all" else text.split(",")
    unknown = [name for name in names if name not in PRESETS]
    if unknown:
        sys.exit(f"unknown shape(s) {unknown}; known: {', '.join(PRESETS)} or 'all'")
    return [PRESETS[name] for name in names]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", default="ours", help=f"comma-separated: {', '.join(PRESETS)}")
    parser.add_argument("--sizes", help="comma-separated sizes, e.g. 1000000,3000000,10000000")
    parser.add_argument("--n", type=int, default=1_000_000, help="one size (without --sizes)")
    parser.add_argument("--repeat", "--runs", type=int, default=1, help="runs of each (median)")
    parser.add_argument("--json-out", type=Path, help="also write the table as JSON here")
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
    shapes = _shapes(args.shape)
    sizes = [int(s) for s in args.sizes.split(",")] if args.sizes else [args.n]
    print(
        f"{os.cpu_count()} CPUs; check = {CLI} --config ... check --json; "
        "floor = bench/floor.py (one process, one thread, sequential)",
        flush=True,
    )
    work = Path(tempfile.mkdtemp(prefix="tm-bench-"))
    redis_server = RedisServer(free_port(), temp_dir("tm-bench-redis-")).start()
    pg = PostgresServer(free_port(), temp_dir("tm-bench-pg-")).start()
    rows: list[Row] = []
    try:
        for shape in shapes:
            for n in sizes:
                rows.append(bench_one(shape, n, f"{redis_server.url}/0", pg, work, args))
    finally:
        redis_server.stop()
        pg.stop()
        for directory in (work, redis_server.directory, pg.directory):  # ~0.6 GB at 1M
            shutil.rmtree(directory, ignore_errors=True)
        if rows:
            print_table(rows, args.repeat)
            print_estimates(rows)
            if args.json_out:
                table = [
                    asdict(r)
                    | {"check_per_floor": r.check_per_floor, "naive_per_check": r.naive_per_check}
                    for r in rows
                ]
                args.json_out.write_bytes(orjson.dumps(table, option=orjson.OPT_INDENT_2))
    return 0 if all(row.ok for row in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
