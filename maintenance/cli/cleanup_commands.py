"""Commands that act: cleanup, quick-fix, revoke, restore; and the history they leave."""

from __future__ import annotations

import getpass
import socket
import sys
from collections import Counter
from collections.abc import Callable
from typing import Any, TypeVar

import click

from maintenance.cli.base import Command, finish, json_option, state
from maintenance.cli.exit_codes import ExitCode
from maintenance.cli.progress import ProgressLine
from maintenance.cli.render import finding_line, print_json, render_report, table
from maintenance.core.models import Outcome, RunMode
from maintenance.core.plan import Hold, Plan
from maintenance.core.report import ScanReport
from maintenance.errors import ConfigError
from maintenance.service import Maintenance, OperatorResult, RunHistory, RunOptions

F = TypeVar("F", bound=Callable[..., Any])


def cleanup_options(command: F) -> F:
    """The options `cleanup` and `quick-fix` share."""
    for option in reversed(
        (
            click.option("-v", "--verbose", is_flag=True, help="list every planned action"),
            json_option("print the outcome as JSON"),
            click.option(
                "--grace",
                type=float,
                metavar="S",
                help="seconds between the two checks of a missing row "
                "(default cleanup.grace_s; 0 for tests and emergencies)",
            ),
            click.option(
                "--max-orphan-ratio",
                type=float,
                metavar="R",
                help="raise the circuit breaker's ratio for this run",
            ),
            click.option(
                "--max-orphans",
                type=int,
                metavar="N",
                help="raise the circuit breaker's absolute limit for this run",
            ),
            click.option("--no-results", is_flag=True, help="leave result keys alone"),
            click.option(
                "--compact",
                is_flag=True,
                help="remove every tombstone with one whole-list LREM per list: blocks Redis "
                "~0.3 s (quiet) to 1.4 s (busy) at 1M messages, ten times that at 10M; by "
                "default bounded pieces remove those near either end and leave deeper ones "
                "for workers to discard",
            ),
            click.option("--dry-run", is_flag=True, help="show the plan only"),
        )
    ):
        command = option(command)
    return command


@click.command(
    cls=Command,
    short_help="show the plan, ask, then remove confirmed orphans",
    epilog="Exit 0 done (or a dry run that found nothing), 1 findings left, plan refused or "
    "orphans not removed, 2 usage error (e.g. no terminal to confirm on: use --force), "
    "3 Redis or the database unavailable, 4 another run holds the lock.",
)
@cleanup_options
@click.option("--force", is_flag=True, help="do not ask (for scripts)")
def cleanup(force: bool, **options: Any) -> None:
    """Quarantine and revoke confirmed orphans, delete stale results and handle lost rows, with
    every safety check. Everything quarantined can be put back with `restore`.

    \b
    Examples:
      task-cleanup cleanup --dry-run         the plan, exactly as a real run would act
      task-cleanup cleanup                   the plan, then "Proceed? [y/N]"
      task-cleanup cleanup --force --json    for cron: no question, a JSON outcome
    """
    finish(run_cleanup(RunMode.CLEANUP, force=force, **options))


@click.command(
    "quick-fix",
    cls=Command,
    short_help="clean every confirmed orphan now, without asking",
)
@cleanup_options
def quick_fix(**options: Any) -> None:
    """The seed's quick_fix_orphaned_tasks: `cleanup --force`.

    \b
    Examples:
      task-cleanup quick-fix --dry-run
      task-cleanup quick-fix --grace 0
    """
    finish(run_cleanup(RunMode.QUICK_FIX, force=True, **options))


@click.command(
    cls=Command,
    short_help="revoke named tasks: queued copies quarantined (restorable), held ones revoked",
    epilog="Exit 0 every named task taken out of play, 1 when an id was found nowhere or not "
    "removed.",
)
@click.option("--task-id", "task_ids", multiple=True, required=True, metavar="ID")
@click.option("--force", is_flag=True, help="revoke even a task whose row is still to run")
@json_option()
def revoke(task_ids: tuple[str, ...], force: bool, as_json: bool) -> None:
    """Take named tasks out of play: every queued copy, and every unacked copy no live worker
    holds, into the quarantine (state REVOKED, restorable with `restore`); a copy a live worker
    holds is revoked by a broadcast it acknowledges.

    \b
    Examples:
      task-cleanup revoke --task-id 3f2c... --task-id 9a41...
      task-cleanup revoke --task-id 3f2c... --force    even though its row is still to run
    """
    with Maintenance.open(state().settings()) as maintenance:
        result = maintenance.revoke(list(task_ids), force=force, started_by=started_by())
    _print_operator(as_json, result)
    if result.done.get("not_found") or result.done.get("not_removed"):
        finish(ExitCode.FINDINGS)  # some named task was not taken out of play
    finish(ExitCode.OK)


@click.command(cls=Command, short_help="put quarantined messages back, intact")
@click.option("--task-id", "task_ids", multiple=True, metavar="ID")
@click.option("--all", "restore_all", is_flag=True, help="every quarantined message")
@json_option()
def restore(task_ids: tuple[str, ...], restore_all: bool, as_json: bool) -> None:
    """Put quarantined messages back where they were, intact (exit 1 when nothing was restored).

    \b
    Examples:
      task-cleanup restore --task-id 3f2c...
      task-cleanup restore --all
    """
    if bool(task_ids) == restore_all:
        raise click.UsageError("give either --task-id (one or more) or --all")
    with Maintenance.open(state().settings()) as maintenance:
        result = maintenance.restore(
            None if restore_all else list(task_ids), started_by=started_by()
        )
    _print_operator(as_json, result)
    finish(ExitCode.OK if result.done.get("restored") else ExitCode.FINDINGS)


@click.command(cls=Command, short_help="past maintenance runs and what each one did")
@click.option("--limit", type=int, default=20, show_default=True)
@click.option("--run", "run_id", metavar="RUN_ID", help="the actions of one run")
@json_option()
def history(limit: int, run_id: str | None, as_json: bool) -> None:
    """Past maintenance runs and what each one did, from the history tables.

    \b
    Examples:
      task-cleanup history
      task-cleanup history --run 20261201T020000-4f2a --json
    """
    with RunHistory.open(state().settings()) as runs:
        doc: Any = runs.run_actions(run_id) if run_id else runs.recent_runs(limit)
    if as_json:
        print_json(doc)
    elif run_id:
        click.echo(render_actions(doc))
    else:
        click.echo(render_runs(doc))
    finish(ExitCode.OK)


@click.command("init-db", cls=Command, short_help="create this project's history tables")
def init_db() -> None:
    """Create the history tables (maintenance_runs, maintenance_actions) if they do not exist.

    \b
    Example:
      task-cleanup init-db        once, before the first cleanup records its run
    """
    with RunHistory.open(state().settings()) as runs:
        runs.init()
    click.echo("history tables ready: maintenance_runs, maintenance_actions")
    finish(ExitCode.OK)


def started_by() -> str:
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = "unknown"
    return f"cli:{user}@{socket.gethostname()}"


def render_plan(plan: Plan, verbose: bool) -> str:
    counts = Counter(p.action.value for p in plan.actions)
    held = Counter(h.value for _, h in plan.held)
    rows: list[tuple[str, str]] = [(f"act: {k}", f"{v:,}") for k, v in sorted(counts.items())]
    rows += [(f"hold: {k}", f"{v:,}") for k, v in sorted(held.items())]
    out = ["Plan:", table(["step", "count"], rows or [("nothing to do", "0")])]
    if plan.refused:
        out.append(f"REFUSED by the circuit breaker: {plan.refused}")
    if held.get(Hold.AWAITING_GRACE):
        out.append(
            "awaiting_grace: rows missing once, maybe not committed yet; a real run waits the "
            "grace period (cleanup.grace_s, --grace), reads them again and acts on those still "
            "missing"
        )
    if verbose:
        out.extend(f"{p.action.value:<18} {finding_line(p.finding)}" for p in plan.actions)
        out.extend(f"{'hold:' + h.value:<18} {finding_line(f)}" for f, h in plan.held)
    return "\n".join(out)


def _ask(progress: ProgressLine) -> Callable[[Plan, ScanReport], bool]:
    def ask(plan: Plan, report: ScanReport) -> bool:
        progress.done()  # the scan is over: its bar must not be drawn over the question
        click.echo(render_report(report))
        click.echo(render_plan(plan, verbose=False))
        if not plan.actions:
            return True
        answer = input("Proceed? [y/N] ").strip().lower()
        return answer in ("y", "yes")

    return ask


def run_cleanup(
    mode: RunMode,
    *,
    force: bool,
    dry_run: bool,
    verbose: bool,
    as_json: bool,
    grace: float | None,
    max_orphan_ratio: float | None,
    max_orphans: int | None,
    no_results: bool,
    compact: bool = False,
) -> int:
    if not force and not dry_run and not sys.stdin.isatty():
        raise ConfigError(
            "cleanup asks for confirmation, but stdin is not a terminal: use "
            "--force in scripts, or --dry-run to see the plan",
            key="--force",
            source="command line",
        )
    settings = state().settings()
    progress = ProgressLine()

    def on_wait(seconds: float, count: int) -> None:
        if seconds > 0:
            progress.done()  # the bar would be drawn over the message
            click.echo(
                f"Waiting {seconds:.0f}s (grace period) before re-checking {count} "
                "finding(s) whose row was missing: a producer may not have committed yet.",
                err=True,
            )

    options = RunOptions(
        mode=mode,
        started_by=started_by(),
        dry_run=dry_run,
        grace_s=grace,
        max_orphan_ratio=max_orphan_ratio,
        max_orphans=max_orphans,
        scan_results=not no_results,
        compact_whole=compact,
        confirm=None if force else _ask(progress),
        on_wait=on_wait,
    )
    try:
        with Maintenance.open(settings) as maintenance:
            result = maintenance.cleanup(options, progress=progress)
    finally:
        progress.done()
    if as_json:
        print_json(result.summary())
    else:
        if force or dry_run:
            click.echo(render_report(result.report))
        click.echo(render_plan(result.plan, verbose))
        click.echo(
            f"Outcome: {result.outcome}" + (f" (run {result.run_id})" if result.run_id else "")
        )
        if result.done:
            click.echo(
                table(["done", "count"], sorted((k, f"{v:,}") for k, v in result.done.items()))
            )
    if result.outcome is Outcome.DRY_RUN:
        return ExitCode.OK if result.report.consistent else ExitCode.FINDINGS
    if result.outcome not in (Outcome.OK, Outcome.DECLINED) or result.done.get("not_removed"):
        return ExitCode.FINDINGS  # refused, stopped early, or orphans left for the next run
    return ExitCode.OK


def _print_operator(as_json: bool, result: OperatorResult) -> None:
    if as_json:
        print_json({"run_id": result.run_id, "done": result.done, "details": result.details})
        return
    for line in result.details:
        click.echo(line)
    click.echo(
        f"run {result.run_id}: "
        + (", ".join(f"{k}={v}" for k, v in result.done.items()) or "nothing done")
    )


def render_actions(actions: list[dict[str, Any]]) -> str:
    return table(
        ["action", "kind", "reason", "task id", "row", "where"],
        [
            (
                a["action"],
                a["kind"],
                a["reason"],
                a["task_id"],
                a["db_id"] or "-",
                a["location"] or "",
            )
            for a in actions
        ],
    )


def render_runs(runs: list[dict[str, Any]]) -> str:
    return table(
        ["run", "started by", "mode", "outcome", "done"],
        [
            (
                r["id"],
                r["started_by"],
                r["mode"],
                r["outcome"],
                ", ".join(f"{k}={v}" for k, v in (r["counts"].get("done") or {}).items()) or "-",
            )
            for r in runs
        ],
    )
