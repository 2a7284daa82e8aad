"""structlog configuration: JSON lines to `logs/task_cleanup.log`, readable console output.

Called once by each entry point (CLI `main`, the Celery worker's `setup_logging` signal); importing
this module configures nothing.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import structlog

from maintenance.redaction import redact_event

LOG_FILE = "task_cleanup.log"


def shared_processors() -> list[Any]:
    return [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_logger_name,
        structlog.stdlib.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        redact_event,
    ]


def configure_logging(
    log_dir: str | Path,
    level: str = "INFO",
    console_level: str = "WARNING",
    extra_files: dict[str, str] | None = None,
) -> Path:
    """Route structlog and stdlib logging to a JSON file and a human console on stderr.

    `extra_files` maps a logger name to a file name in `log_dir` (e.g. `celery` -> worker log).
    """
    level, console_level = level.upper(), console_level.upper()
    directory = Path(log_dir)
    directory.mkdir(parents=True, exist_ok=True)
    pre_chain = shared_processors()
    structlog.configure(
        processors=[
            *pre_chain,
            structlog.processors.StackInfoRenderer(),
            structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
        ],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )
    json_formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=pre_chain,
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            structlog.processors.format_exc_info,
            structlog.processors.JSONRenderer(ensure_ascii=False),
        ],
    )
    console_formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=pre_chain,
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty()),
        ],
    )
    root = logging.getLogger()
    for handler in list(root.handlers):
        if getattr(handler, "_task_maintenance", False):
            root.removeHandler(handler)
            handler.close()
    path = directory / LOG_FILE
    file_handler = _handler(logging.FileHandler(path, encoding="utf-8"), json_formatter, level)
    file_handler.addFilter(lambda record: record.name.startswith("maintenance"))
    console = _handler(logging.StreamHandler(sys.stderr), console_formatter, console_level)
    root.addHandler(file_handler)
    root.addHandler(console)
    for logger_name, file_name in (extra_files or {}).items():
        extra = _handler(
            logging.FileHandler(directory / file_name, encoding="utf-8"), json_formatter, level
        )
        extra.addFilter(_name_filter(logger_name))
        root.addHandler(extra)
    root.setLevel(min(logging.getLevelName(level), logging.getLevelName(console_level)))
    return path


def _name_filter(prefix: str) -> Callable[[logging.LogRecord], bool]:
    """`""` means "everything the other files do not take" (maintenance.*, celery.*)."""
    if prefix == "":
        return lambda record: not record.name.startswith(("maintenance", "celery"))
    return lambda record: record.name.startswith(prefix)


def _handler(handler: logging.Handler, formatter: logging.Formatter, level: str) -> logging.Handler:
    handler.setFormatter(formatter)
    handler.setLevel(level)
    handler._task_maintenance = True  # type: ignore[attr-defined]  # our marker on the handler
    return handler
