"""`check`, the read-only report, and `completion`. Rendering lives in `render`."""

from __future__ import annotations

import io
import sys
from dataclasses import replace

import click
from click.shell_completion import get_completion_class

from maintenance.cli.base import Command, finish, json_option, state
from maintenance.cli.exit_codes import ExitCode
from maintenance.cli.progress import ProgressLine
from maintenance.cli.render import render_report, write_report_json
from maintenance.core.report import ScanReport
from maintenance.service import Maintenance


@click.command(
    cls=Command,
    short_help="report every inconsistency (read-only)",
    epilog="Exit 0 consistent, 1 inconsistencies found, 2 config error, 3 Redis or the database "
    "unavailable (no verdict).",
)
@click.option("-v", "--verbose", is_flag=True, help="one line per finding")
@click.option(
    "--task-id",
    metavar="ID",
    help="only this Celery task id or database id: where it is, what is wrong",
)
@json_option("print the report as JSON")
@click.option("--no-results", is_flag=True, help="skip the result keys")
@click.option("--no-workers", is_flag=True, help="do not ask live workers what they hold")
def check(
    verbose: bool, task_id: str | None, as_json: bool, no_results: bool, no_workers: bool
) -> None:
    """Report every inconsistency between Redis and the database, changing nothing.

    \b
    Examples:
      task-cleanup check                  all inconsistencies, summarised
      task-cleanup check -v               every finding, one per line
      task-cleanup check --task-id ID     where is this task (Celery id or row id)
      task-cleanup check --json | jq .counts
    """
    settings = state().settings()
    if no_workers:
        settings = replace(settings, scan=replace(settings.scan, inspect_workers=False))
    progress = ProgressLine()
    try:
        with Maintenance.open(settings) as maintenance:
            report = maintenance.check(task_id, results=not no_results, progress=progress)
    finally:
        progress.done()
    if as_json:
        _print_report_json(report)
    else:
        click.echo(render_report(report, verbose=verbose))
    finish(ExitCode.OK if report.consistent else ExitCode.FINDINGS)


def _print_report_json(report: ScanReport) -> None:
    sys.stdout.flush()
    binary = getattr(sys.stdout, "buffer", None)  # absent when stdout was swapped for text
    if binary is not None:
        write_report_json(report, binary)
        return
    buf = io.BytesIO()
    write_report_json(report, buf)
    sys.stdout.write(buf.getvalue().decode())


@click.command(cls=Command, short_help="print the shell completion script")
@click.argument("shell", type=click.Choice(["bash", "zsh", "fish"]))
@click.pass_context
def completion(ctx: click.Context, shell: str) -> None:
    """Print the completion script for SHELL (click's own completion).

    \b
    Examples:
      eval "$(task-cleanup completion bash)"          # in ~/.bashrc
      task-cleanup completion fish > ~/.config/fish/completions/task-cleanup.fish
    """
    root = ctx.find_root()
    prog = root.info_name or "task-cleanup"
    complete_var = "_{}_COMPLETE".format(prog.replace("-", "_").replace(".", "_").upper())
    cls = get_completion_class(shell)
    assert cls is not None  # the choice above admits only shells click knows
    click.echo(cls(root.command, {}, prog, complete_var).source())
    finish(ExitCode.OK)
