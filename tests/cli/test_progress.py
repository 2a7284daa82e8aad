"""`ProgressLine`: rich bars on a real terminal, silence in a pipe, and no thread to stop a fork."""

from __future__ import annotations

import os
import pty
import re
import subprocess
import sys
import textwrap
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pexpect

from maintenance.cli.progress import ProgressLine
from maintenance.core.finding_store import PackedStale
from maintenance.scan.forked import CAN_FORK, Report, only_fork_safe_threads
from maintenance.scan.results import BackgroundResults
from tests.conftest import ROOT

# Three phases as a scan sends them: a queue with a known length, then two open-ended counts.
SCAN = textwrap.dedent("""
    import threading, time
    from maintenance.cli.progress import ProgressLine

    print("BEFORE", flush=True)
    threads = threading.active_count()
    progress = ProgressLine(min_interval_s=0.05)
    for done in range(0, 3001, 100):
        progress("queue celery", done, 3000)
        time.sleep(0.01)
    for done in range(0, 1001, 50):
        progress("unacked", done, None)
        time.sleep(0.01)
    for done in range(0, 501, 50):
        progress("results", done, None)
        time.sleep(0.01)
    during = threading.active_count()
    progress.done()
    print(f"AFTER threads {threads} -> {during}", flush=True)
""")
CSI = re.compile(r"\x1b\[([0-9;?]*)([A-Za-z])")


def screen_lines(output: str) -> list[str]:
    """What a terminal shows after `output`: enough of VT100 for rich's live display (carriage
    return, new line, cursor up, erase line); other sequences (colours, cursor) are dropped."""
    lines, row, col = [""], 0, 0
    pos = 0
    while pos < len(output):
        match = CSI.match(output, pos)
        if match:
            args, command = match.groups()
            if command == "A":
                row = max(0, row - int(args or 1))
            elif command == "K":
                lines[row] = lines[row][:col] if args in ("", "0") else ""
            pos = match.end()
            continue
        char = output[pos]
        pos += 1
        if char == "\r":
            col = 0
        elif char == "\n":
            row += 1
            if row == len(lines):
                lines.append("")
        elif char.isprintable():
            line = lines[row].ljust(col)
            lines[row] = line[:col] + char + line[col + 1 :]
            col += 1
    return [line.rstrip() for line in lines if line.strip()]


def plain(output: str) -> str:
    return CSI.sub("", output)


def test_on_a_terminal_bars_show_phase_counts_rate_and_end_cleared() -> None:
    child = pexpect.spawn(
        sys.executable,
        ["-c", SCAN],
        cwd=str(ROOT),
        env={**os.environ, "TERM": "xterm-256color"},
        dimensions=(24, 120),
        encoding="utf-8",
        timeout=30,
    )
    try:
        child.expect(pexpect.EOF)
        output = child.before
    finally:
        child.close(force=True)
    assert child.exitstatus == 0, output
    text = plain(output)
    # Then: each phase drawn with its counts (a total where one is known) and a rate
    assert re.search(r"queue celery .*\b[\d,]+/3,000 +[\d,]+/s", text), text
    assert re.search(r"unacked .* \d[\d,]* +[\d,]+/s", text), text
    assert "results" in text and "━" in text  # a bar, a pulse without total
    assert "\x1b[?25l" in output and "\x1b[?25h" in output  # cursor hidden, then back
    # and: nothing of them left on the screen, the program's own lines intact
    assert screen_lines(output) == ["BEFORE", "AFTER threads 1 -> 1"]


def test_with_stderr_piped_nothing_is_written() -> None:
    """Not a terminal: no bar, no cursor codes, even with FORCE_COLOR (which rich honours)."""
    done = subprocess.run(
        [sys.executable, "-c", SCAN],
        cwd=ROOT,
        capture_output=True,
        env={**os.environ, "TERM": "xterm-256color", "FORCE_COLOR": "1"},
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert done.stderr == b""
    assert done.stdout.decode().splitlines()[0] == "BEFORE"


def test_on_a_terminal_no_thread_starts_so_the_result_scan_still_forks() -> None:
    """rich redraws from the caller's thread: the thread count stays, and a result scan
    started meanwhile runs in a forked child (a pid other than ours)."""
    master, slave = pty.openpty()
    os.set_blocking(master, False)
    stream = os.fdopen(slave, "w", encoding="utf-8")
    threads = threading.active_count()
    progress = ProgressLine(stream, min_interval_s=0.0)
    drawn = b""
    try:
        assert progress.enabled
        for done in range(0, 1000, 100):
            progress("queue celery", done, 1000)
            drawn += _drain(master)
        assert threading.active_count() == threads and only_fork_safe_threads()

        def work(report: Report, stop: threading.Event) -> list[str]:
            report((1, PackedStale.pack([])))
            return [str(os.getpid())]

        with ThreadPoolExecutor(max_workers=1) as side:
            found = BackgroundResults(side, work).wait(lambda *_: None)
        progress("unacked", 5, None)
    finally:
        progress.done()
        drawn += _drain(master)
        stream.close()
        os.close(master)
    assert found.scanned == 1
    if CAN_FORK:
        assert found.notes != [str(os.getpid())]
    assert b"queue celery" in drawn and b"unacked" in drawn


def _drain(fd: int) -> bytes:
    """What the terminal received so far (the pty's buffer must not fill up)."""
    time.sleep(0.01)
    data = b""
    while True:
        try:
            chunk = os.read(fd, 65536)
        except BlockingIOError:
            return data
        if not chunk:
            return data
        data += chunk
