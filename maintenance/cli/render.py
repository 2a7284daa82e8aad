"""Human-readable rendering of scan reports: a summary table and one line per finding."""

from __future__ import annotations

import io
import json
import sys
from collections.abc import Sequence
from typing import Any, BinaryIO

import orjson
from rich.box import Box
from rich.console import Console, RenderableType
from rich.table import Table
from rich.text import Text

from maintenance.core.models import Finding
from maintenance.core.report import ScanReport

# Headers over a rule of dashes, columns apart by spaces, no frame: the same on a terminal (in
# colour) and in a pipe (plain text that `grep`, `awk` and `split()` read as before).
PLAIN = Box("    \n    \n -  \n    \n    \n    \n    \n    \n")
WIDE = 10_000  # a table is never wrapped or cut to the terminal: scripts read whole lines


def table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A rich table rendered to text; the first column left-aligned, the others right."""
    grid = Table(box=PLAIN, show_edge=False, pad_edge=False, header_style="bold")
    for index, header in enumerate(headers):
        grid.add_column(Text(str(header)), justify="right" if index else "left")
    for row in rows:
        grid.add_row(*(Text(str(cell)) for cell in row))
    return render_text(grid)


def render_text(renderable: RenderableType) -> str:
    """Render for stdout: styled on a terminal (unless NO_COLOR), plain text in a pipe."""
    buf = io.StringIO()
    terminal = sys.stdout.isatty()
    console = Console(
        file=buf,
        width=WIDE,
        force_terminal=terminal,
        color_system="auto" if terminal else None,
        highlight=False,
    )
    console.print(renderable)
    return "\n".join(line.rstrip() for line in buf.getvalue().rstrip("\n").splitlines())


def print_json(doc: Any) -> None:
    json.dump(doc, sys.stdout, indent=2, default=str, ensure_ascii=False)
    sys.stdout.write("\n")


def finding_line(f: Finding) -> str:
    age = f" age={f.age_s:.0f}s" if f.age_s is not None else ""
    db = f" row={f.db_id}" if f.db_id else ""
    name = f" {f.task_name}" if f.task_name else ""
    detail = f" ({f.detail})" if f.detail else ""
    return (
        f"{f.kind.value:<12} {f.reason.value:<16} {f.task_id or '-'}{name}{db} "
        f"at {f.location.describe()}{age}{detail}"
    )


def render_report(report: ScanReport, verbose: bool = False) -> str:
    counts = report.counts()
    out = []
    duration = report.finished_at - report.started_at
    verdict = "consistent" if report.consistent else "INCONSISTENT"
    out.append(
        f"Scan {verdict}: {report.managed_messages:,} managed messages, "
        f"{report.results_scanned:,} result keys, {len(report.workers)} live workers "
        f"({duration:.2f}s)"
    )
    out.append("")
    out.append(table(["finding", "count"], [(kind, f"{n:,}") for kind, n in counts.items()]))
    if report.places:
        out.append("")
        rows = [
            (
                name,
                f"{s.messages:,}",
                f"{s.managed:,}",
                f"{s.unmanaged:,}",
                f"{s.orphans:,}",
                f"{s.unreadable:,}",
            )
            for name, s in sorted(report.places.items())
        ]
        out.append(
            table(["place", "messages", "managed", "unmanaged", "orphans", "unreadable"], rows)
        )
    reasons = report.reasons()
    if reasons:
        out.append("")
        out.append(table(["kind:reason", "count"], sorted(reasons.items())))
    for note in report.notes:
        out.append(f"note: {note}")
    if verbose or report.only is not None:
        out.append("")
        out.extend(finding_line(f) for f in report.findings)
    elif report.findings:
        out.append("")
        out.append("Run with -v for every finding, or --json for machines.")
    return "\n".join(out)


def write_report_json(report: ScanReport, out: BinaryIO, flush_bytes: int = 1 << 20) -> None:
    """The report as indented JSON, streamed: one finding dict at a time, never all at once.

    A scan can have a million findings; as dicts all at once they would take more memory than
    the whole scan, and the stdlib encoder more time. The report's store keeps them in bounded
    memory (a temporary file past a bound), so this reads them back a batch at a time.
    """
    indent = orjson.OPT_INDENT_2
    head = orjson.dumps(report.as_dict(with_findings=False), option=indent, default=str)
    buf = bytearray(head[:-2])  # reopen the object: drop the closing "\n}"
    buf += b',\n  "findings": ['
    # The store's dicts: a stale result key goes from its compact row straight to its dict.
    for i, doc in enumerate(report.findings.dicts()):
        buf += b",\n    " if i else b"\n    "
        buf += orjson.dumps(doc, option=indent, default=str).replace(b"\n", b"\n    ")
        if len(buf) >= flush_bytes:
            out.write(buf)
            buf.clear()
    buf += b"\n  ]\n}\n" if report.findings else b"]\n}\n"
    out.write(buf)
    out.flush()
