"""The full-screen, redrawn-in-place view (alternate screen, like `htop`), and key reads.

rich's `Live` in screen mode draws: it owns the alternate screen, the cursor, cropping to the
window and colours (off with NO_COLOR). It refreshes only when told (`auto_refresh=False`): the
monitor redraws once per interval, so no refresh thread runs beside the monitor's scans. Keys are
read here, in cbreak mode; the terminal is always restored, even on Ctrl-C.
"""

from __future__ import annotations

import contextlib
import logging
import os
import select
import sys
import termios
import tty
from collections.abc import Iterator
from typing import Any, TextIO

from rich.console import Console, RenderableType
from rich.live import Live
from rich.text import Text


class FullScreen:
    def __init__(self, console: Console | None = None, keys: TextIO | None = None):
        self.console = console or Console(highlight=False)
        self.keys = keys or sys.stdin
        self._live: Live | None = None

    @contextlib.contextmanager
    def active(self) -> Iterator[FullScreen]:
        live = Live(
            console=self.console,
            screen=True,
            auto_refresh=False,
            # the logging console handlers keep their own stream (muted by quiet_console)
            redirect_stdout=False,
            redirect_stderr=False,
        )
        saved: list[Any] | None = None
        with contextlib.ExitStack() as stack:
            if self.keys.isatty():
                fd = self.keys.fileno()
                saved = termios.tcgetattr(fd)
                # Registered first, so it runs last: after rich has left the alternate screen.
                stack.callback(termios.tcsetattr, fd, termios.TCSADRAIN, saved)
                tty.setcbreak(fd)  # single key presses, no echo; Ctrl-C still interrupts
            stack.enter_context(live)
            self._live = live
            try:
                yield self
            finally:
                self._live = None

    def draw(self, view: RenderableType) -> None:
        """Replace the screen's content; rich crops it to the window, re-read on each draw.

        A plain string is shown as is (never parsed as rich markup: `celery[priority 3]`)."""
        if self._live is None:
            raise RuntimeError("FullScreen.draw outside active()")
        self._live.update(Text(view) if isinstance(view, str) else view, refresh=True)

    def wait_key(self, timeout_s: float) -> str | None:
        """Sleep until a key is pressed or the timeout passes; the key, if any."""
        if not self.keys.isatty():
            select.select([], [], [], timeout_s)
            return None
        ready, _, _ = select.select([self.keys], [], [], timeout_s)
        if not ready:
            return None
        return os.read(self.keys.fileno(), 32).decode(errors="replace")[:1]


@contextlib.contextmanager
def quiet_console() -> Iterator[None]:
    """Silence log lines to the terminal while the full screen owns it (the log file keeps them)."""
    root = logging.getLogger()
    muted = [
        (h, h.level)
        for h in root.handlers
        if type(h) is logging.StreamHandler and getattr(h, "stream", None) is sys.stderr
    ]
    for handler, _ in muted:
        handler.setLevel(logging.CRITICAL + 1)
    try:
        yield
    finally:
        for handler, level in muted:
            handler.setLevel(level)
