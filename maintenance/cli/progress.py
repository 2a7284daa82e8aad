"""A one-line progress display on stderr, shown only when stderr is a terminal."""

from __future__ import annotations

import sys
import time
from typing import TextIO


class ProgressLine:
    def __init__(self, stream: TextIO | None = None, min_interval_s: float = 0.2):
        self.stream = stream or sys.stderr
        self.enabled = self.stream.isatty()
        self.min_interval_s = min_interval_s
        self._last = 0.0
        self._started = time.monotonic()
        self._shown = False

    def __call__(self, phase: str, done: int, total: int | None) -> None:
        if not self.enabled:
            return
        now = time.monotonic()
        if now - self._last < self.min_interval_s and (total is None or done < total):
            return
        self._last = now
        rate = done / max(now - self._started, 1e-6)
        share = f" ({100 * done / total:5.1f}%)" if total else ""
        line = f"\r{phase}: {done:,}{f' / {total:,}' if total else ''}{share}  {rate:,.0f}/s"
        self.stream.write(line[:120].ljust(80))
        self.stream.flush()
        self._shown = True

    def done(self) -> None:
        if self._shown:
            self.stream.write("\r" + " " * 80 + "\r")
            self.stream.flush()
