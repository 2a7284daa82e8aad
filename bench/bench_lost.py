"""The lost-row check at scale: a stale backlog (76% of rows still to run and older than 24 h).

Fills Redis and PostgreSQL (bench.dataset, preset `stale-backlog`), then runs `check --json`
under /usr/bin/time -v for each CLI given and prints its peak RSS, wall time and the lost count
against what was planted. `--keep` leaves the servers up and prints the config path.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import orjson
import sqlalchemy as sa

from bench.dataset import PRESETS, fill
from tests.conftest import write_config
from tests.servers import PostgresServer, RedisServer, free_port, temp_dir

ROOT = Path(__file__).resolve().parent.parent


def timed_check(config: Path, pythonpath: str | None) -> tuple[float, float, float, dict[str, int]]:
    """(peak RSS MiB, wall s, CPU s, finding counts) of one `check --json`: CPU (user + system,
    the forked result scan included) is the figure to compare on a busy machine."""
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "REDIS_URL")}
    if pythonpath:
        env["PYTHONPATH"] = pythonpath
    cmd = ["/usr/bin/time", "-v", str(ROOT / ".venv/bin/task-cleanup"), "--config", str(config)]
    started = time.perf_counter()
    done = subprocess.run([*cmd, "check", "--json"], env=env, capture_output=True, check=False)
    wall = time.perf_counter() - started
    rss = re.search(rb"Maximum resident set size \(kbytes\): (\d+)", done.stderr)
    cpu = sum(
        float(m) for m in re.findall(rb"(?:User|System) time \(seconds\): ([\d.]+)", done.stderr)
    )
    doc = orjson.loads(done.stdout) if done.stdout.strip() else {}
    counts: dict[str, int] = {}
    for finding in doc.get("findings", []):
        counts[finding["kind"]] = counts.get(finding["kind"], 0) + 1
    if done.returncode not in (0, 1):
        print(done.stderr.decode()[-2000:])
    return (int(rss.group(1)) / 1024 if rss else float("nan")), wall, cpu, counts


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=1_000_000)
    parser.add_argument("--preset", default="stale-backlog")
    parser.add_argument("--runs", type=int, default=1)
    parser.add_argument(
        "--pythonpath", action="append", default=[], help="a checkout to compare ('' = ours)"
    )
    parser.add_argument("--floor", action="store_true", help="also run bench.floor (if present)")
    parser.add_argument("--keep", action="store_true")
    args = parser.parse_args()
    redis_server = RedisServer(free_port(), temp_dir("tm-lost-redis-")).start()
    pg = PostgresServer(free_port(), temp_dir("tm-lost-pg-")).start()
    work = Path(tempfile.mkdtemp(prefix="tm-lost-"))
    try:
        started = time.perf_counter()
        db_url, planted = fill(args.n, f"{redis_server.url}/0", pg.url, shape=PRESETS[args.preset])
        print(
            f"filled {args.n:,} in {time.perf_counter() - started:.0f} s: "
            f"{planted.messages:,} messages, {planted.lost_rows:,} lost rows planted",
            flush=True,
        )
        config = write_config(work / "maintenance.toml", f"{redis_server.url}/0", db_url)
        for run in range(args.runs):
            for path in args.pythonpath or [""]:
                rss, wall, cpu, counts = timed_check(config, path or None)
                print(
                    f"run {run + 1} {path or 'ours'}: peak RSS {rss:.0f} MiB, wall {wall:.1f} s, "
                    f"CPU {cpu:.1f} s, "
                    f"{counts}",
                    flush=True,
                )
        if args.floor:
            dsn = sa.make_url(db_url).set(drivername="postgresql").render_as_string(False)
            started = time.perf_counter()
            cmd = [sys.executable, "-m", "bench.floor", "--redis-url", f"{redis_server.url}/0"]
            cmd += ["--dsn", dsn, *(a for q in planted.queues for a in ("--queue", q))]
            floor = subprocess.run(cmd, capture_output=True, check=False, cwd=ROOT)
            print(
                f"floor: wall {time.perf_counter() - started:.1f} s, "
                f"{floor.stdout.decode().strip()[-600:] or floor.stderr.decode()[-600:]}",
                flush=True,
            )
        if args.keep:
            print(f"config {config}; servers redis {redis_server.url} pg {pg.url}", flush=True)
            input("enter to stop the servers ")
    finally:
        redis_server.stop()
        pg.stop()
        for directory in (work, redis_server.directory, pg.directory):
            shutil.rmtree(directory, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
