"""A concurrent Redis client that PINGs every millisecond, in its own process and connection.

It stands for the app's other Redis users: its worst round trip during a scan is how long Redis
was blocked (or starved). Redis's SLOWLOG is read beside it, to tell a slow command on the server
from a client that merely waited for a CPU.
"""

from __future__ import annotations

import contextlib
import multiprocessing as mp
import os
import time
from array import array
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import Any

import redis

SLOWLOG_THRESHOLD_US = 1000
SCAN_COMMANDS = ("lrange", "evalsha", "scan", "hscan", "keys", "get")


@dataclass(frozen=True)
class ProbeStats:
    pings: int
    max_ms: float
    p99_ms: float
    p50_ms: float
    over_5ms: int
    slowest_server_ms: float  # slowest command Redis itself logged (SLOWLOG), 0 if none > 1 ms
    slowest_command: str
    per_call_us: dict[str, float]  # the scan's commands: Redis's mean time per call (µs)

    def describe(self) -> str:
        server = (
            f"server's slowest command {self.slowest_server_ms:.2f} ms ({self.slowest_command})"
            if self.slowest_server_ms
            else f"no server command over {SLOWLOG_THRESHOLD_US / 1000:.0f} ms"
        )
        means = ", ".join(f"{name} {us:,.0f} µs" for name, us in self.per_call_us.items())
        return (
            f"probe max {self.max_ms:.2f} ms, p99 {self.p99_ms:.2f} ms, "
            f"p50 {self.p50_ms:.3f} ms over {self.pings:,} pings ({self.over_5ms} > 5 ms); "
            f"{server}; mean per call: {means}"
        )


def _run(url: str, stop: Any, out: Connection, nice: int) -> None:
    if nice:
        with contextlib.suppress(OSError):  # raising priority needs root
            os.nice(nice)
    client = redis.Redis.from_url(url)
    client.ping()
    out.send("ready")
    samples = array("d")
    next_at = time.perf_counter()
    while not stop.is_set():
        started = time.perf_counter()
        try:
            client.ping()
        except redis.RedisError:  # a timed-out PING is the longest sample, not the probe's end
            client.close()
        samples.append(time.perf_counter() - started)
        next_at += 0.001
        delay = next_at - time.perf_counter()
        if delay > 0:
            time.sleep(delay)
        else:
            next_at = time.perf_counter()
    ordered = sorted(samples)
    n = len(ordered)
    out.send(
        (
            n,
            ordered[-1] * 1000 if n else 0.0,
            ordered[int(n * 0.99)] * 1000 if n else 0.0,
            ordered[n // 2] * 1000 if n else 0.0,
            sum(1 for s in ordered if s > 0.005),
        )
    )
    client.close()


class Probe:
    """Start before the measured work, stop after it: `with Probe(url) as probe: ...`."""

    def __init__(self, url: str, nice: int = 0):
        self.url = url
        self.nice = nice
        self.stats: ProbeStats | None = None
        self._ctx = mp.get_context("fork")

    def __enter__(self) -> Probe:
        admin = redis.Redis.from_url(self.url)
        admin.config_set("slowlog-log-slower-than", SLOWLOG_THRESHOLD_US)
        admin.slowlog_reset()
        admin.config_resetstat()
        admin.close()
        self._stop = self._ctx.Event()
        self._recv, send = self._ctx.Pipe(duplex=False)
        self._process = self._ctx.Process(
            target=_run, args=(self.url, self._stop, send, self.nice), daemon=True
        )
        self._process.start()
        if self._recv.recv() != "ready":
            raise RuntimeError("probe did not start")
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        pings, max_ms, p99, p50, over = self._recv.recv()
        self._process.join(10)
        admin = redis.Redis.from_url(self.url)
        slow = [e for e in admin.slowlog_get(128) if not _is_own(e)]
        commands = admin.info("commandstats")
        admin.close()
        worst = max(slow, key=lambda e: e["duration"], default=None)
        per_call = {
            name: float(commands[f"cmdstat_{name}"]["usec_per_call"])
            for name in SCAN_COMMANDS
            if f"cmdstat_{name}" in commands
        }
        self.stats = ProbeStats(
            pings,
            max_ms,
            p99,
            p50,
            over,
            worst["duration"] / 1000 if worst else 0.0,
            _command_text(worst["command"]) if worst else "",
            per_call,
        )


def _is_own(entry: dict[str, Any]) -> bool:
    return _command_text(entry["command"]).upper().startswith(("SLOWLOG", "CONFIG"))


def _command_text(command: bytes | str) -> str:
    text = command.decode(errors="replace") if isinstance(command, bytes) else command
    return text[:60]
