"""A full-screen, redrawn-in-place terminal view (alternate screen, like `htop`), and key reads.

Plain ANSI sequences rather than curses: the view is a block of text, redrawn whole each refresh,
and this keeps the output testable as text. The terminal is always restored, even on Ctrl-C.
"""

from __future__ import annotations

import contextlib
import logging
import os
import select
import shutil
import sys
import termios
import tty
from collections.abc import Iterator
from typing import Any, TextIO

ENTER = "\x1b[?1049h\x1b[?25l"  # alternate screen, hide cursor
LEAVE = "\x1b[?25h\x1b[?1049l"  # show cursor, back to the normal screen
HOME_CLEAR = "\x1b[H\x1b[2J"


class FullScreen:
    def __init__(self, out: TextIO | None = None, keys: TextIO | None = None):
        self.out = out or sys.stdout
        self.keys = keys or sys.stdin
        self._saved: list[Any] | None = None

    @contextlib.contextmanager
    def active(self) -> Iterator[FullScreen]:
        self.out.write(ENTER)
        self.out.flush()
        if self.keys.isatty():
            fd = self.keys.fileno()
            self._saved = termios.tcgetattr(fd)
            tty.setcbreak(fd)  # single key presses, no echo; Ctrl-C still interrupts
        try:
            yield self
        finally:
            if self._saved is not None:
                termios.tcsetattr(self.keys.fileno(), termios.TCSADRAIN, self._saved)
            self.out.write(LEAVE)
            self.out.flush()

    def draw(self, text: str) -> None:
        """Crop to the window so the view never scrolls; the size is re-read on each draw."""
        columns, rows = shutil.get_terminal_size((100, 40))
        lines = [line[:columns] for line in text.splitlines()][: max(1, rows - 1)]
        self.out.write(HOME_CLEAR + "\r\n".join(lines))
        self.out.flush()

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
