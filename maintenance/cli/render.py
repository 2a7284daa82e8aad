"""Human-readable rendering of scan reports: a summary table and one line per finding."""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from typing import Any, BinaryIO

import orjson

from maintenance.core.models import Finding
from maintenance.core.report import ScanReport


def table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    cells = [[str(h) for h in headers]] + [[str(c) for c in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]

    def line(row: Sequence[str]) -> str:
        return "  ".join(
            c.rjust(w) if i else c.ljust(w)
            for i, (c, w) in enumerate(zip(row, widths, strict=True))
        ).rstrip()

    rule = "  ".join("-" * w for w in widths)
    return "\n".join([line(cells[0]), rule, *(line(r) for r in cells[1:])])


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

    A million-message scan can have a few hundred thousand findings; as dicts all at once they
    would take more memory than the whole scan, and the stdlib encoder more time.
    """
    indent = orjson.OPT_INDENT_2
    head = orjson.dumps(report.as_dict(with_findings=False), option=indent, default=str)
    buf = bytearray(head[:-2])  # reopen the object: drop the closing "\n}"
    buf += b',\n  "findings": ['
    for i, finding in enumerate(report.findings):
        buf += b",\n    " if i else b"\n    "
        buf += orjson.dumps(finding.as_dict(), option=indent, default=str).replace(b"\n", b"\n    ")
        if len(buf) >= flush_bytes:
            out.write(buf)
            buf.clear()
    buf += b"\n  ]\n}\n" if report.findings else b"]\n}\n"
    out.write(buf)
    out.flush()
