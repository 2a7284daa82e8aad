"""Subcommands that act: cleanup, quick-fix, revoke, restore, history, init-db."""

from __future__ import annotations

import argparse
import getpass
import socket
import sys
from collections import Counter
from typing import Any

from maintenance.cli.exit_codes import ExitCode
from maintenance.cli.progress import ProgressLine
from maintenance.cli.render import finding_line, print_json, render_report, table
from maintenance.config import Settings
from maintenance.core.models import Outcome, RunMode
from maintenance.core.plan import Hold, Plan
from maintenance.core.report import ScanReport
from maintenance.errors import ConfigError
from maintenance.service import Maintenance, OperatorResult, RunHistory, RunOptions


def add_cleanup_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    cleanup = sub.add_parser(
        "cleanup",
        help="show the plan, ask, then remove confirmed orphans",
        description="Quarantine and revoke confirmed orphans, delete stale "
        "results and handle lost rows, with every safety check.",
    )
    _cleanup_args(cleanup)
    cleanup.add_argument("--dry-run", action="store_true", help="show the plan only")
    cleanup.add_argument("--force", action="store_true", help="do not ask (for scripts)")
    cleanup.set_defaults(handler=run_cleanup, mode=RunMode.CLEANUP)

    quick = sub.add_parser(
        "quick-fix",
        help="clean every confirmed orphan now, without asking",
        description="The seed's quick_fix_orphaned_tasks: cleanup --force.",
    )
    _cleanup_args(quick)
    quick.add_argument("--dry-run", action="store_true", help="show the plan only")
    quick.set_defaults(handler=run_cleanup, mode=RunMode.QUICK_FIX, force=True)

    revoke = sub.add_parser(
        "revoke",
        help="revoke named tasks: queued copies quarantined (restorable), held ones revoked",
        description="Take named tasks out of play: every queued copy, and every unacked copy no "
        "live worker holds, into the quarantine (state REVOKED, restorable with `restore`); a "
        "copy a live worker holds is revoked by a broadcast it acknowledges. Exit 1 when an id "
        "was found nowhere or not removed.",
    )
    revoke.add_argument("--task-id", action="append", required=True, metavar="ID")
    revoke.add_argument(
        "--force", action="store_true", help="revoke even a task whose row is still to run"
    )
    revoke.add_argument("--json", action="store_true")
    revoke.set_defaults(handler=run_revoke)

    restore = sub.add_parser("restore", help="put quarantined messages back, intact")
    group = restore.add_mutually_exclusive_group(required=True)
    group.add_argument("--task-id", action="append", metavar="ID")
    group.add_argument("--all", action="store_true", help="every quarantined message")
    restore.add_argument("--json", action="store_true")
    restore.set_defaults(handler=run_restore)

    history = sub.add_parser("history", help="past maintenance runs and what each one did")
    history.add_argument("--limit", type=int, default=20)
    history.add_argument("--run", metavar="RUN_ID", help="the actions of one run")
    history.add_argument("--json", action="store_true")
    history.set_defaults(handler=run_history)

    init_db = sub.add_parser("init-db", help="create this project's history tables")
    init_db.set_defaults(handler=run_init_db)


def _cleanup_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-v", "--verbose", action="store_true", help="list every planned action")
    parser.add_argument("--json", action="store_true", help="print the outcome as JSON")
    parser.add_argument(
        "--grace",
        type=float,
        metavar="S",
        help="seconds between the two checks of a missing row "
        "(default cleanup.grace_s; 0 for tests and emergencies)",
    )
    parser.add_argument(
        "--max-orphan-ratio",
        type=float,
        metavar="R",
        help="raise the circuit breaker's ratio for this run",
    )
    parser.add_argument(
        "--max-orphans",
        type=int,
        metavar="N",
        help="raise the circuit breaker's absolute limit for this run",
    )
    parser.add_argument("--no-results", action="store_true", help="leave result keys alone")


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


def _ask(plan: Plan, report: ScanReport) -> bool:
    print(render_report(report))
    print(render_plan(plan, verbose=False))
    if not plan.actions:
        return True
    answer = input("Proceed? [y/N] ").strip().lower()
    return answer in ("y", "yes")


def run_cleanup(args: argparse.Namespace, settings: Settings) -> int:
    if not args.force and not args.dry_run and not sys.stdin.isatty():
        raise ConfigError(
            "cleanup asks for confirmation, but stdin is not a terminal: use "
            "--force in scripts, or --dry-run to see the plan",
            key="--force",
            source="command line",
        )
    progress = ProgressLine()

    def on_wait(seconds: float, count: int) -> None:
        if seconds > 0:
            print(
                f"Waiting {seconds:.0f}s (grace period) before re-checking {count} "
                "finding(s) whose row was missing: a producer may not have committed yet.",
                file=sys.stderr,
                flush=True,
            )

    options = RunOptions(
        mode=args.mode,
        started_by=started_by(),
        dry_run=args.dry_run,
        grace_s=args.grace,
        max_orphan_ratio=args.max_orphan_ratio,
        max_orphans=args.max_orphans,
        scan_results=not args.no_results,
        confirm=None if args.force else _ask,
        on_wait=on_wait,
    )
    try:
        with Maintenance.open(settings) as maintenance:
            result = maintenance.cleanup(options, progress=progress)
    finally:
        progress.done()
    if args.json:
        print_json(result.summary())
    else:
        if args.force or args.dry_run:
            print(render_report(result.report))
        print(render_plan(result.plan, args.verbose))
        print(f"Outcome: {result.outcome}" + (f" (run {result.run_id})" if result.run_id else ""))
        if result.done:
            print(table(["done", "count"], sorted((k, f"{v:,}") for k, v in result.done.items())))
    if result.outcome is Outcome.DRY_RUN:
        return ExitCode.OK if result.report.consistent else ExitCode.FINDINGS
    if result.outcome not in (Outcome.OK, Outcome.DECLINED) or result.done.get("not_removed"):
        return ExitCode.FINDINGS  # refused, stopped early, or orphans left for the next run
    return ExitCode.OK


def run_revoke(args: argparse.Namespace, settings: Settings) -> int:
    with Maintenance.open(settings) as maintenance:
        result = maintenance.revoke(args.task_id, force=args.force, started_by=started_by())
    _print_operator(args, result)
    if result.done.get("not_found") or result.done.get("not_removed"):
        return ExitCode.FINDINGS  # some named task was not taken out of play
    return ExitCode.OK


def run_restore(args: argparse.Namespace, settings: Settings) -> int:
    with Maintenance.open(settings) as maintenance:
        result = maintenance.restore(None if args.all else args.task_id, started_by=started_by())
    _print_operator(args, result)
    return ExitCode.OK if result.done.get("restored") else ExitCode.FINDINGS


def _print_operator(args: argparse.Namespace, result: OperatorResult) -> None:
    if args.json:
        print_json({"run_id": result.run_id, "done": result.done, "details": result.details})
        return
    for line in result.details:
        print(line)
    print(
        f"run {result.run_id}: "
        + (", ".join(f"{k}={v}" for k, v in result.done.items()) or "nothing done")
    )


def run_history(args: argparse.Namespace, settings: Settings) -> int:
    with RunHistory.open(settings) as history:
        doc: Any = history.run_actions(args.run) if args.run else history.recent_runs(args.limit)
    if args.json:
        print_json(doc)
    elif args.run:
        print(
            table(
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
                    for a in doc
                ],
            )
        )
    else:
        print(
            table(
                ["run", "started by", "mode", "outcome", "done"],
                [
                    (
                        r["id"],
                        r["started_by"],
                        r["mode"],
                        r["outcome"],
                        ", ".join(f"{k}={v}" for k, v in (r["counts"].get("done") or {}).items())
                        or "-",
                    )
                    for r in doc
                ],
            )
        )
    return ExitCode.OK


def run_init_db(args: argparse.Namespace, settings: Settings) -> int:
    with RunHistory.open(settings) as history:
        history.init()
    print("history tables ready: maintenance_runs, maintenance_actions")
    return ExitCode.OK
