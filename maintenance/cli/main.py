"""`task-cleanup`: parse arguments, load settings, call the service, map errors to exit codes."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

import structlog

from maintenance.cli.commands import add_commands
from maintenance.cli.exit_codes import ExitCode
from maintenance.config import Settings, load_settings, resolve_config_path
from maintenance.errors import ConfigError, LockHeld, PlanRefused, UnavailableError
from maintenance.logging_setup import configure_logging
from maintenance.redaction import redact_text

# Named, not __name__: run as `python -m maintenance.cli.main` this module is __main__, whose
# lines the log file (maintenance.*) would not take.
log = structlog.get_logger("maintenance.cli.main")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="task-cleanup",
        description="Keep a database task table and Celery's Redis state consistent.",
        epilog="Exit codes: 0 consistent/done, 1 inconsistencies found or action refused, "
        "2 usage or config error, 3 Redis or database unavailable, 4 another run holds "
        "the lock.",
    )
    parser.add_argument(
        "--config",
        metavar="PATH",
        help="config file (default: $MAINTENANCE_CONFIG, else config/maintenance.toml)",
    )
    parser.add_argument("--log-level", default=None, help="console log level (default WARNING)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    add_commands(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        settings = load_settings(resolve_config_path(args.config, os.environ), os.environ)
        _configure_logging(settings, args)
        return int(args.handler(args, settings))
    except ConfigError as exc:
        return _fail(ExitCode.USAGE, f"configuration error: {exc}")
    except UnavailableError as exc:
        return _fail(
            ExitCode.UNAVAILABLE, f"{exc}\nNo verdict: nothing was changed after the failure."
        )
    except LockHeld as exc:
        return _fail(ExitCode.LOCKED, str(exc))
    except PlanRefused as exc:
        return _fail(ExitCode.FINDINGS, f"refused: {exc}")
    except KeyboardInterrupt:
        return _fail(130, "interrupted")
    except Exception as exc:  # a bug of ours: keep the traceback in the log, not on the screen
        log.exception("internal error")
        return _fail(
            ExitCode.INTERNAL,
            f"internal error: {type(exc).__name__}: {exc} (traceback in the log file)",
        )


def _configure_logging(settings: Settings, args: argparse.Namespace) -> None:
    try:
        configure_logging(
            settings.logging.dir,
            settings.logging.level,
            console_level=(args.log_level or "WARNING").upper(),
        )
    except OSError as exc:
        raise ConfigError(
            f"cannot write the log directory: {exc}", key="logging.dir", source=settings.source
        ) from None
    except ValueError as exc:
        raise ConfigError(
            f"unknown log level: {exc}", key="logging.level", source=settings.source
        ) from None


def _fail(code: int, message: str) -> int:
    print(f"task-cleanup: {redact_text(message)}", file=sys.stderr)
    return int(code)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
