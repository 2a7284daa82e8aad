"""The subcommands. Each is a thin caller of `Maintenance`; rendering lives in `render`."""

from __future__ import annotations

import argparse
import io
import sys
from dataclasses import replace

from maintenance.cli.cleanup_commands import add_cleanup_commands
from maintenance.cli.exit_codes import ExitCode
from maintenance.cli.lock_commands import add_lock_commands
from maintenance.cli.monitor.commands import add_monitor_commands
from maintenance.cli.progress import ProgressLine
from maintenance.cli.render import render_report, write_report_json
from maintenance.config import Settings
from maintenance.core.report import ScanReport
from maintenance.service import Maintenance


def add_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    check = sub.add_parser(
        "check",
        help="report every inconsistency (read-only)",
        description="Report every inconsistency between Redis and the database, changing nothing.",
    )
    check.add_argument("-v", "--verbose", action="store_true", help="one line per finding")
    check.add_argument(
        "--task-id",
        metavar="ID",
        help="only this Celery task id or database id: where it is, what is wrong",
    )
    check.add_argument("--json", action="store_true", help="print the report as JSON")
    check.add_argument("--no-results", action="store_true", help="skip the result keys")
    check.add_argument(
        "--no-workers", action="store_true", help="do not ask live workers what they hold"
    )
    check.set_defaults(handler=run_check)
    add_cleanup_commands(sub)
    add_lock_commands(sub)
    add_monitor_commands(sub)


def run_check(args: argparse.Namespace, settings: Settings) -> int:
    if args.no_workers:
        settings = replace(settings, scan=replace(settings.scan, inspect_workers=False))
    progress = ProgressLine()
    try:
        with Maintenance.open(settings) as maintenance:
            report = maintenance.check(args.task_id, results=not args.no_results, progress=progress)
    finally:
        progress.done()
    if args.json:
        _print_report_json(report)
    else:
        print(render_report(report, verbose=args.verbose))
    return ExitCode.OK if report.consistent else ExitCode.FINDINGS


def _print_report_json(report: ScanReport) -> None:
    sys.stdout.flush()
    binary = getattr(sys.stdout, "buffer", None)  # absent when stdout was swapped for text
    if binary is not None:
        write_report_json(report, binary)
        return
    buf = io.BytesIO()
    write_report_json(report, buf)
    sys.stdout.write(buf.getvalue().decode())
