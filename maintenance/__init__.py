"""task-maintenance: keep a database task table and Celery's Redis state consistent."""

from typing import TYPE_CHECKING, Any

__all__ = ["RedisTaskCleaner"]

if TYPE_CHECKING:
    from maintenance.api import RedisTaskCleaner


def __getattr__(name: str) -> Any:
    # Lazy, so that importing the package pulls in neither Celery nor SQLAlchemy.
    if name == "RedisTaskCleaner":
        from maintenance.api import RedisTaskCleaner

        return RedisTaskCleaner
    raise AttributeError(name)
