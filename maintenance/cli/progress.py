"""The scan's progress on stderr as rich progress bars, shown only when stderr is a terminal.

No refresh thread: `__call__` updates the phase's task and redraws at most every
`min_interval_s` itself. A thread would make the result scan fall back from forking
(`maintenance.scan.forked.only_fork_safe_threads`), and rich's refresher shares the console's
lock with this thread, so it could not honestly declare itself fork-safe.
"""

from __future__ import annotations

import sys
import time
from typing import TextIO

from rich.console import Console
from rich.progress import (
    BarColumn,
    Progress,
    ProgressColumn,
    Task,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.text import Text

ROWS_SHOWN = 6  # the current phase and the latest finished ones; older rows are hidden


class CountColumn(ProgressColumn):
    """`done/total`, or `done` alone while the total is not known (unacked, results)."""

    def render(self, task: Task) -> Text:
        done = f"{int(task.completed):,}"
        text = done if task.total is None else f"{done}/{int(task.total):,}"
        return Text(text, style="progress.download")


class RateColumn(ProgressColumn):
    """Items per second: rich's own speed columns count bytes."""

    def render(self, task: Task) -> Text:
        speed = task.finished_speed or task.speed
        return Text("" if speed is None else f"{speed:,.0f}/s", style="progress.data.speed")


class ProgressLine:
    """`progress(phase, done, total)` as the scan goes, `done()` at the end.

    Writes nothing at all unless the stream is a terminal that rich can draw on (not
    TERM=dumb); colours follow rich's rules (NO_COLOR).
    """

    def __init__(self, stream: TextIO | None = None, min_interval_s: float = 0.2):
        self.stream = stream or sys.stderr
        # stderr=True reads sys.stderr when writing, as print does; a given stream is used as is
        self.console = Console(stderr=True) if stream is None else Console(file=stream)
        self.enabled = (
            _isatty(self.stream) and self.console.is_terminal and not self.console.is_dumb_terminal
        )
        self.min_interval_s = min_interval_s
        self._progress: Progress | None = None
        self._tasks: list[TaskID] = []
        self._phase: str | None = None
        self._last = 0.0

    def __call__(self, phase: str, done: int, total: int | None) -> None:
        if not self.enabled:
            return
        progress = self._progress or self._start()
        if phase != self._phase:
            self._next_phase(progress, phase, done, total)
        else:
            progress.update(self._tasks[-1], completed=done, total=total)
        now = time.monotonic()
        if now - self._last >= self.min_interval_s:
            self._last = now
            progress.refresh()

    def done(self) -> None:
        """Stop and clear the bars (transient), restoring the cursor."""
        if self._progress is not None:
            self._progress.stop()
            self._progress = None
            self._tasks.clear()
            self._phase = None

    def _start(self) -> Progress:
        self._progress = Progress(
            TextColumn("{task.description}"),
            BarColumn(),  # a pulse while the total is not known
            CountColumn(),
            RateColumn(),
            TimeElapsedColumn(),
            TimeRemainingColumn(),  # blank while the total is not known
            console=self.console,
            auto_refresh=False,
            transient=True,
            # stdout may be a pipe (`check --json | jq`): never route it to the bars' stderr
            redirect_stdout=False,
            redirect_stderr=False,
        )
        self._progress.start()
        return self._progress

    def _next_phase(self, progress: Progress, phase: str, done: int, total: int | None) -> None:
        if self._tasks:
            progress.stop_task(self._tasks[-1])  # its elapsed time stops there
        if len(self._tasks) >= ROWS_SHOWN:
            progress.update(self._tasks[-ROWS_SHOWN], visible=False)
        self._tasks.append(progress.add_task(phase, total=total, completed=done))
        self._phase = phase


def _isatty(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except ValueError:  # closed
        return False
