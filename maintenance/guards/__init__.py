"""Guards for the app's own tasks: skip a Celery task whose row is gone or finished.

from maintenance.guards import configure_guards, validate_task_exists
"""

from maintenance.guards.decorators import SKIP_EVENT, validate_sub_task_exists, validate_task_exists
from maintenance.guards.runtime import (
    GUARD_RECHECKS,
    GUARD_SKIPS,
    GuardSkip,
    add_skip_listener,
    configure_guards,
    remove_skip_listener,
)

__all__ = [
    "GUARD_RECHECKS",
    "GUARD_SKIPS",
    "SKIP_EVENT",
    "GuardSkip",
    "add_skip_listener",
    "configure_guards",
    "remove_skip_listener",
    "validate_sub_task_exists",
    "validate_task_exists",
]
