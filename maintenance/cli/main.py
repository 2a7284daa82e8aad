"""`task-cleanup`: the command group; each command is a thin caller of the service.

The same commands run under Celery's own CLI as `celery -A proj maintenance …`
(`maintenance.cli.celery_command`).
"""

from __future__ import annotations

import gc
import sys
from collections.abc import Callable, Sequence
from importlib.metadata import PackageNotFoundError, version

import click

from maintenance.cli.base import CliState, Group, SettingsHook, SettingsLoader, run_standalone
from maintenance.cli.cleanup_commands import (
    cleanup,
    history,
    init_db,
    quick_fix,
    restore,
    revoke,
)
from maintenance.cli.commands import check, completion
from maintenance.cli.config_commands import config_group
from maintenance.cli.lock_commands import lock
from maintenance.cli.monitor.commands import monitor, notify
from maintenance.cli.queue_commands import purge, queues

PROG = "task-cleanup"
CONTEXT = {"help_option_names": ["-h", "--help"], "max_content_width": 100}
EXIT_CODES = (
    "Exit codes: 0 consistent/done, 1 inconsistencies found or action refused, 2 usage or "
    "config error, 3 Redis or database unavailable, 4 another run holds the lock, 70 internal "
    "error."
)
COMMANDS = (
    check,
    cleanup,
    quick_fix,
    revoke,
    restore,
    history,
    init_db,
    lock,
    monitor,
    notify,
    config_group,
    queues,
    purge,
)


def package_version() -> str:
    try:
        return version("task-maintenance")
    except PackageNotFoundError:  # run from a source tree that was never installed
        return "unknown"


def make_group(
    name: str,
    adapt: Callable[[click.Context], SettingsHook | None] | None = None,
    *,
    load: SettingsLoader | None = None,
    prog: str | None = None,
) -> click.Group:
    """The command group, as `task-cleanup`, or as Celery's `maintenance` command, where `adapt`
    reads the Celery app of the parent command and gives what to take from it, or as Django's
    `manage.py task_cleanup`, where `load` builds the settings from Django's instead of a file
    and `prog` names the program in error messages."""

    @click.group(
        name=name,
        cls=Group,
        context_settings=CONTEXT,
        epilog=EXIT_CODES,
        help="Keep a database task table and Celery's Redis state consistent.",
    )
    @click.option(
        "--config",
        "config_path",
        metavar="PATH",
        help="config file (default: $MAINTENANCE_CONFIG, else config/maintenance.toml)",
    )
    @click.option(
        "--log-level",
        envvar="TASK_CLEANUP_LOG_LEVEL",
        show_envvar=True,
        help="console log level (default WARNING)",
    )
    # the version is read from the package metadata when asked for, not at import
    @click.version_option(
        package_name="task-maintenance", prog_name=PROG, message="%(prog)s %(version)s"
    )
    @click.pass_context
    def group(ctx: click.Context, config_path: str | None, log_level: str | None) -> None:
        ctx.obj = CliState(
            config_path=config_path,
            log_level=log_level,
            prog=prog or (PROG if adapt is None else f"celery {name}"),
            adapt=None if adapt is None else adapt(ctx),
            load=load,
        )

    for command in (*COMMANDS, completion):
        group.add_command(command)
    return group


cli = make_group(PROG)


def main(argv: Sequence[str] | None = None) -> int:
    code = run_standalone(cli, argv, PROG)
    if argv is None:  # the console script: the process ends now
        # The interpreter's final garbage collection walks every object the imports made
        # (SQLAlchemy, Celery, kombu, redis): on this project's 2-core machine it took longer
        # than a small check itself. Frozen objects are left to the exit; buffered output is
        # still flushed and atexit handlers (logging's) still run.
        gc.freeze()
    return code


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
