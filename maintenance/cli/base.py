"""What every command shares: the settings loaded on first use, errors mapped to exit codes.

The same command group runs as `task-cleanup …` and as `celery -A proj maintenance …`. Celery
runs its commands in click's standalone mode, which ignores a command's return value, so every
command ends by raising `click.exceptions.Exit(code)` and the group maps our errors to exit codes
itself: the exit codes are the same whichever program ran the command.
"""

from __future__ import annotations

import importlib
import os
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

import click
import structlog
from click_didyoumean import DYMGroup

from maintenance.cli.exit_codes import ExitCode
from maintenance.config import Settings, load_settings, resolve_config_path
from maintenance.errors import ConfigError, LockHeld, PlanRefused, UnavailableError
from maintenance.logging_setup import configure_logging
from maintenance.redaction import redact_text

# Named, not __name__: run as `python -m maintenance.cli.main` the entry module is __main__, whose
# lines the log file (maintenance.*) would not take.
log = structlog.get_logger("maintenance.cli.main")

F = TypeVar("F", bound=Callable[..., Any])
SettingsHook = Callable[[Settings], Settings]
SettingsLoader = Callable[[], Settings]


@dataclass
class CliState:
    """The group's options; the settings are read when a command first asks for them, so that
    `--help` and `completion` work without a config file."""

    config_path: str | None = None
    log_level: str | None = None
    prog: str = "task-cleanup"
    adapt: SettingsHook | None = None  # `celery … maintenance`: the app's broker settings
    # `manage.py task_cleanup`: the settings come from the framework's (Django's), not a file;
    # an explicit `--config` still wins, since it is what the operator typed.
    load: SettingsLoader | None = None
    env: Mapping[str, str] = field(default_factory=lambda: os.environ)
    _settings: Settings | None = None

    def settings(self) -> Settings:
        if self._settings is None:
            if self.load is not None and self.config_path is None:
                settings = self.load()
            else:
                settings = load_settings(resolve_config_path(self.config_path, self.env), self.env)
            if self.adapt is not None:
                settings = self.adapt(settings)
            _configure_logging(settings, self.log_level)
            self._settings = settings
        return self._settings


def state() -> CliState:
    return click.get_current_context().ensure_object(CliState)


def finish(code: int) -> None:
    """End the command with this exit code, under `task-cleanup` and `celery` alike."""
    raise click.exceptions.Exit(int(code))


def fail(code: int, message: str) -> None:
    click.echo(f"{state().prog}: {redact_text(message)}", err=True)
    finish(code)


class Command(click.Command):
    """A click command that still takes the unique prefixes of long options (`--dry` for
    `--dry-run`), as the argparse CLI it replaces did: command lines in cron jobs keep working."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        return super().parse_args(ctx, expand_prefixes(args, self._long_options(ctx)))

    def _long_options(self, ctx: click.Context) -> list[str]:
        names = [
            opt
            for param in self.get_params(ctx)
            if isinstance(param, click.Option)
            for opt in (*param.opts, *param.secondary_opts)
        ]
        return [name for name in names if name.startswith("--")]


def expand_prefixes(args: Sequence[str], long_options: Sequence[str]) -> list[str]:
    """Replace each `--prefix[=value]` that starts exactly one long option by that option."""
    expanded: list[str] = []
    for index, arg in enumerate(args):
        if arg == "--":
            return [*expanded, *args[index:]]
        name, eq, value = arg.partition("=")
        if name.startswith("--") and name not in long_options:
            matches = [opt for opt in long_options if opt.startswith(name)]
            if len(matches) == 1:
                arg = matches[0] + eq + value
        expanded.append(arg)
    return expanded


class Group(DYMGroup):  # type: ignore[misc]  # click-didyoumean ships no type hints
    """Suggests the command meant on a typo, and maps our errors to exit codes (see above).

    Commands named in `lazy` (name → "module:attribute") are imported when first asked for
    (click's own lazy-loading pattern): `check` then imports what a check needs, not what
    `monitor`, `cleanup` or `config` need, which is most of a small check's wall time."""

    command_class = Command

    def __init__(self, *args: Any, lazy: Mapping[str, str] | None = None, **kwargs: Any) -> None:
        kwargs.setdefault("max_suggestions", 2)
        kwargs.setdefault("cutoff", 0.7)
        super().__init__(*args, **kwargs)
        self.lazy = dict(lazy or {})

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*super().list_commands(ctx), *self.lazy})

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name not in self.commands and cmd_name in self.lazy:
            module, _, attribute = self.lazy[cmd_name].partition(":")
            command = getattr(importlib.import_module(module), attribute)
            if not isinstance(command, click.Command):  # a wrong entry: a bug of ours
                raise TypeError(f"{self.lazy[cmd_name]} is not a click command")
            self.add_command(command, cmd_name)
        result: click.Command | None = super().get_command(ctx, cmd_name)
        return result

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except (click.exceptions.Exit, click.ClickException, click.exceptions.Abort):
            raise
        except ConfigError as exc:
            fail(ExitCode.USAGE, f"configuration error: {exc}")
        except UnavailableError as exc:
            fail(ExitCode.UNAVAILABLE, f"{exc}\nNo verdict: nothing was changed after the failure.")
        except LockHeld as exc:
            fail(ExitCode.LOCKED, str(exc))
        except PlanRefused as exc:
            fail(ExitCode.FINDINGS, f"refused: {exc}")
        except KeyboardInterrupt:
            fail(130, "interrupted")
        except BrokenPipeError:  # `task-cleanup queues --task-name '*' | head`: the reader left
            _silence_stdout()
            finish(141)  # 128 + SIGPIPE, as a shell pipeline reports it
        except Exception as exc:  # a bug of ours: keep the traceback in the log, not on screen
            log.exception("internal error")
            fail(
                ExitCode.INTERNAL,
                f"internal error: {type(exc).__name__}: {exc} (traceback in the log file)",
            )
        return None  # pragma: no cover - fail() always raises


def _silence_stdout() -> None:
    """Python flushes stdout again at exit; to a closed pipe that would print an error."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):  # stdout already gone, or not a real file
        pass
    finally:
        os.close(devnull)


def json_option(help_text: str = "print the result as JSON") -> Callable[[F], F]:
    return click.option("--json", "as_json", is_flag=True, help=help_text)


def run_standalone(group: click.Group, argv: Sequence[str] | None, prog: str) -> int:
    """Run `group` and return its exit code instead of exiting (tests and scripts call this)."""
    args = list(sys.argv[1:] if argv is None else argv)
    try:
        result = group.main(args=args, prog_name=prog, standalone_mode=False)
    except click.exceptions.Exit as exc:
        return int(exc.exit_code)
    except click.ClickException as exc:
        exc.show()
        return int(exc.exit_code)
    except click.exceptions.Abort:
        click.echo(f"{prog}: interrupted", err=True)
        return 130
    return int(result) if isinstance(result, int) else int(ExitCode.OK)


def _configure_logging(settings: Settings, log_level: str | None) -> None:
    try:
        configure_logging(
            settings.logging.dir,
            settings.logging.level,
            console_level=(log_level or "WARNING").upper(),
        )
    except OSError as exc:
        raise ConfigError(
            f"cannot write the log directory: {exc}", key="logging.dir", source=settings.source
        ) from None
    except ValueError as exc:
        raise ConfigError(
            f"unknown log level: {exc}", key="logging.level", source=settings.source
        ) from None
