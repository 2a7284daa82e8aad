"""`task-cleanup lock`: who holds the run lock, and breaking one whose holder is gone."""

from __future__ import annotations

import argparse
import sys
import time

from maintenance.cli.exit_codes import ExitCode
from maintenance.cli.render import print_json
from maintenance.config import Settings
from maintenance.errors import ConfigError
from maintenance.service import Maintenance


def add_lock_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    lock = sub.add_parser(
        "lock",
        help="who holds the run lock; --break frees one whose holder is gone",
        description="Show who holds the maintenance run lock (exit 0 free, 4 held). A run renews "
        "its lease every cleanup.lock_renew_s, so a dead run's lock frees itself within "
        "cleanup.lock_lease_s; --break frees it at once when its holder's process provably no "
        "longer exists (same host, pid gone), after confirmation (or --yes).",
    )
    lock.add_argument("--break", dest="break_it", action="store_true", help="break a dead lock")
    lock.add_argument("--yes", action="store_true", help="do not ask (with --break)")
    lock.add_argument("--json", action="store_true")
    lock.set_defaults(handler=run_lock)


def run_lock(args: argparse.Namespace, settings: Settings) -> int:
    with Maintenance.open(settings) as maintenance:
        holder = maintenance.lock_holder()
        if args.json and not args.break_it:
            print_json({"held": holder is not None, "holder": holder and holder.public()})
            return ExitCode.OK if holder is None else ExitCode.LOCKED
        if holder is None:
            print("run lock: free")
            return ExitCode.OK
        print(f"run lock: held by {holder.describe(time.time())}")
        if not args.break_it:
            return ExitCode.LOCKED
        if not args.yes:
            if not sys.stdin.isatty():
                raise ConfigError(
                    "--break asks for confirmation: add --yes", key="--yes", source="command line"
                )
            if input("Break it? [y/N] ").strip().lower() not in ("y", "yes"):
                return ExitCode.LOCKED
        broken = maintenance.break_lock()  # LockHeld (exit 4) unless the holder is gone
    print("run lock broken" if broken else "run lock: free")
    return ExitCode.OK
