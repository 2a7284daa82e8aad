"""`python manage.py task_cleanup …`: the `task-cleanup` commands inside a Django project.

The arguments go straight to the same click group as `task-cleanup`, so `--help`, the options
and the exit codes are exactly the CLI's; only the settings differ: they are built from
`settings.TASK_MAINTENANCE`, `DATABASES` and the `CELERY_*` settings instead of a config file
(an explicit `--config PATH` still reads that file).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar, NoReturn

from django.core.management.base import BaseCommand, CommandParser

from maintenance.cli.base import run_standalone
from maintenance.cli.main import make_group
from maintenance.contrib.django.settings import load_from_django

# Django's own options, already applied by manage.py before it chose the command (it sets
# DJANGO_SETTINGS_MODULE and sys.path from them); the click group would refuse them.
_DJANGO_OPTIONS = ("--settings", "--pythonpath")


def run(args: Sequence[str], prog: str) -> int:
    """Run one `task-cleanup` command line with the Django project's settings; its exit code."""
    group = make_group("task_cleanup", load=load_from_django, prog=prog)
    return run_standalone(group, list(args), prog)


def without_django_options(args: Sequence[str]) -> list[str]:
    """`args` without `--settings X`, `--settings=X`, `--pythonpath X`, `--pythonpath=X`."""
    kept: list[str] = []
    skip = False
    for index, arg in enumerate(args):
        if skip:
            skip = False
        elif arg == "--":
            return [*kept, *args[index:]]
        elif arg in _DJANGO_OPTIONS:
            skip = True
        elif not arg.startswith(tuple(f"{option}=" for option in _DJANGO_OPTIONS)):
            kept.append(arg)
    return kept


class Command(BaseCommand):  # type: ignore[misc]  # Django ships no type hints
    help = (
        "Keep the task table and Celery's Redis state consistent: the task-cleanup commands "
        "(check, cleanup, revoke, restore, history, monitor, lock, ...); see --help."
    )
    requires_system_checks: ClassVar[Sequence[str]] = ()  # reads nothing they look at

    def run_from_argv(self, argv: list[str]) -> NoReturn:
        """`manage.py task_cleanup ARGS`: the click group parses ARGS, not Django's argparse."""
        prog = f"{Path(argv[0]).name} {argv[1]}"
        sys.exit(run(without_django_options(argv[2:]), prog))

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("args", nargs=argparse.REMAINDER, help="a task-cleanup command line")

    def handle(self, *args: str, **options: Any) -> None:
        """`call_command("task_cleanup", "check", "--json")` from code: a non-zero exit code
        raises SystemExit, as the command line would exit."""
        code = run(args, "task_cleanup")
        if code:
            raise SystemExit(code)
