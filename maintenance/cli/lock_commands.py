"""`task-cleanup lock`: who holds the run lock, and breaking one whose holder is gone."""

from __future__ import annotations

import sys
import time

import click

from maintenance.cli.base import Command, finish, json_option, state
from maintenance.cli.exit_codes import ExitCode
from maintenance.cli.render import print_json
from maintenance.errors import ConfigError
from maintenance.service import Maintenance


@click.command(
    cls=Command,
    short_help="who holds the run lock; --break frees one whose holder is gone",
    epilog="Exit 0 free (or broken), 4 held.",
)
@click.option("--break", "break_it", is_flag=True, help="break a dead lock")
@click.option("--yes", is_flag=True, help="do not ask (with --break)")
@json_option()
def lock(break_it: bool, yes: bool, as_json: bool) -> None:
    """Show who holds the maintenance run lock. A run renews its lease every
    cleanup.lock_renew_s, so a dead run's lock frees itself within cleanup.lock_lease_s; --break
    frees it at once when its holder's process provably no longer exists (same host, pid gone),
    after confirmation (or --yes).

    \b
    Examples:
      task-cleanup lock
      task-cleanup lock --break --yes
    """
    finish(run_lock(break_it, yes, as_json))


def run_lock(break_it: bool, yes: bool, as_json: bool) -> int:
    with Maintenance.open(state().settings()) as maintenance:
        holder = maintenance.lock_holder()
        if as_json and not break_it:
            print_json({"held": holder is not None, "holder": holder and holder.public()})
            return ExitCode.OK if holder is None else ExitCode.LOCKED
        if holder is None:
            click.echo("run lock: free")
            return ExitCode.OK
        click.echo(f"run lock: held by {holder.describe(time.time())}")
        if not break_it:
            return ExitCode.LOCKED
        if not yes:
            if not sys.stdin.isatty():
                raise ConfigError(
                    "--break asks for confirmation: add --yes", key="--yes", source="command line"
                )
            if input("Break it? [y/N] ").strip().lower() not in ("y", "yes"):
                return ExitCode.LOCKED
        broken = maintenance.break_lock()  # LockHeld (exit 4) unless the holder is gone
    click.echo("run lock broken" if broken else "run lock: free")
    return ExitCode.OK
