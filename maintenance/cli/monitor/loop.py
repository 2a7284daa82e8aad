"""The monitor's refresh loop in its four shapes: live screen, JSON lines, one snapshot, headless.

Exit codes follow `check`, judged on the latest scan summary: 0 nothing found, 1 findings,
3 Redis or the database unavailable (no verdict).
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from functools import partial
from typing import TextIO

import structlog
from rich.console import RenderableType
from rich.text import Text

from maintenance.cli.exit_codes import ExitCode
from maintenance.cli.monitor.render import render_snapshot, snapshot_view
from maintenance.cli.monitor.terminal import FullScreen
from maintenance.errors import MaintenanceError
from maintenance.monitor.metrics import SnapshotCollector
from maintenance.monitor.snapshot import Snapshot, SnapshotReader

log = structlog.get_logger(__name__)
Scanner = Callable[[], object]  # runs a full scan and saves its summary; raises UnavailableError


@dataclass
class MonitorOptions:
    interval_s: float = 2.0
    verbose: bool = False
    scan_every_s: float | None = None  # None: never scan, only read the summaries
    max_refreshes: int | None = None  # None: until interrupted


def exit_code(snap: Snapshot) -> ExitCode:
    if not snap.available:
        return ExitCode.UNAVAILABLE
    if snap.latest is not None and not snap.latest.consistent:
        return ExitCode.FINDINGS
    return ExitCode.OK


class Monitor:
    def __init__(
        self,
        reader: SnapshotReader,
        options: MonitorOptions,
        *,
        collector: SnapshotCollector | None = None,
        scanner: Scanner | None = None,
        out: TextIO | None = None,
    ):
        self.reader = reader
        self.options = options
        self.collector = collector
        self.scanner = scanner
        self.out = out or sys.stdout
        self._next_scan_at = 0.0
        self._scan_error: str | None = None

    def refresh(self, on_scan_start: Callable[[], None] | None = None) -> Snapshot:
        """Scan first when one is due, so the snapshot already shows its summary."""
        if self.scanner is not None and time.monotonic() >= self._next_scan_at:
            if on_scan_start is not None:
                on_scan_start()
            self._run_scan()
        snap = self.reader.read()
        if self._scan_error:
            snap = _with_error(snap, self._scan_error)
        if self.collector is not None:
            self.collector.update(snap)
        return snap

    def _run_scan(self) -> None:
        assert self.scanner is not None and self.options.scan_every_s is not None
        self._next_scan_at = time.monotonic() + self.options.scan_every_s
        try:
            self.scanner()
            self._scan_error = None
        except MaintenanceError as exc:
            log.warning("monitor scan failed", error=str(exc))
            self._scan_error = f"scan failed: {exc}"

    def once(self, as_json: bool) -> int:
        snap = self.refresh()
        if as_json:
            self._print_json(snap)
        else:
            self.out.write(render_snapshot(snap, verbose=self.options.verbose) + "\n")
        return int(exit_code(snap))

    def json_lines(self) -> int:
        """One JSON object per refresh, for scripts; ends on Ctrl-C or after max_refreshes."""
        snap = None
        for _ in self._ticks():
            snap = self.refresh()
            self._print_json(snap)
        return int(exit_code(snap)) if snap else int(ExitCode.OK)

    def headless(self) -> int:
        """Refresh for the metrics endpoint only (stdout is not a terminal: print nothing)."""
        snap = None
        for _ in self._ticks():
            snap = self.refresh()
        return int(exit_code(snap)) if snap else int(ExitCode.OK)

    def live(self, screen: FullScreen) -> int:
        snap: Snapshot | None = None
        with screen.active():
            for _ in self._ticks(screen):
                snap = self.refresh(on_scan_start=partial(self._draw_scanning, screen, snap))
                screen.draw(self._view(snap))
        return int(exit_code(snap)) if snap else int(ExitCode.OK)

    def _draw_scanning(self, screen: FullScreen, snap: Snapshot | None) -> None:
        """A scan takes a while: say so over the last snapshot while it runs."""
        if snap is not None:
            screen.draw(self._view(snap, scanning=True))
        else:
            screen.draw(Text("task-cleanup monitor   scanning...", style="bold"))

    def _view(self, snap: Snapshot, scanning: bool = False) -> RenderableType:
        return snapshot_view(
            snap,
            verbose=self.options.verbose,
            interval_s=self.options.interval_s,
            scanning=scanning,
        )

    def _ticks(self, screen: FullScreen | None = None) -> Iterator[int]:
        """Yield once per refresh, sleeping between; `q` on the live screen ends it."""
        count = 0
        while True:
            yield count
            count += 1
            if self.options.max_refreshes is not None and count >= self.options.max_refreshes:
                return
            if screen is None:
                time.sleep(self.options.interval_s)
            elif (screen.wait_key(self.options.interval_s) or "").lower() == "q":
                return

    def _print_json(self, snap: Snapshot) -> None:
        self.out.write(json.dumps(snap.as_dict(), default=str, ensure_ascii=False) + "\n")
        self.out.flush()


def _with_error(snap: Snapshot, error: str) -> Snapshot:
    return replace(snap, errors=(*snap.errors, error))
