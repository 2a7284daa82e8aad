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

PROG = "task-cleanup"
CONTEXT = {"help_option_names": ["-h", "--help"], "max_content_width": 100}
EXIT_CODES = (
    "Exit codes: 0 consistent/done, 1 inconsistencies found or action refused, 2 usage or "
    "config error, 3 Redis or database unavailable, 4 another run holds the lock, 70 internal "
    "error."
)
# Each command is imported when it is asked for (`Group`): name → "module:attribute".
COMMANDS = {
    "check": "maintenance.cli.commands:check",
    "cleanup": "maintenance.cli.cleanup_commands:cleanup",
    "quick-fix": "maintenance.cli.cleanup_commands:quick_fix",
    "revoke": "maintenance.cli.cleanup_commands:revoke",
    "restore": "maintenance.cli.cleanup_commands:restore",
    "history": "maintenance.cli.cleanup_commands:history",
    "init-db": "maintenance.cli.cleanup_commands:init_db",
    "lock": "maintenance.cli.lock_commands:lock",
    "monitor": "maintenance.cli.monitor.commands:monitor",
    "notify": "maintenance.cli.monitor.commands:notify",
    "config": "maintenance.cli.config_commands:config_group",
    "queues": "maintenance.cli.queue_commands:queues",
    "purge": "maintenance.cli.queue_commands:purge",
    "completion": "maintenance.cli.commands:completion",
}


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
        lazy=COMMANDS,
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
