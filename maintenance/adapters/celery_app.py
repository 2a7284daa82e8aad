"""Build a Celery app that speaks to the monitored app's broker and result backend.

Constructing it does no I/O: Celery connects lazily, on the first call that needs Redis.
"""

from __future__ import annotations

from typing import Any

from celery import Celery

from maintenance.config import Settings


def broker_transport_options(settings: Settings) -> dict[str, Any]:
    """The app's own transport options, plus our pool defaults where the app set none."""
    options: dict[str, Any] = {
        "max_connections": settings.redis.max_connections,
        "retry_on_timeout": settings.redis.retry_on_timeout,
        "socket_timeout": settings.redis.socket_timeout_s,
        "socket_connect_timeout": settings.redis.socket_timeout_s,
        # Our control connections (ping, inspect, revoke) are kombu consumers, and kombu has
        # every consumer move unacked messages past the visibility timeout back to their queues.
        # That is the app's workers' job; `check` must change nothing, so ours restores none.
        "unacked_restore_limit": 0,
    }
    options.update(settings.redis.transport_options)
    return options


def build_celery_app(settings: Settings, main: str = "task_maintenance") -> Celery:
    app = Celery(main, set_as_current=False)
    app.conf.update(
        broker_url=settings.redis.broker_url,
        result_backend=settings.redis.results_url,
        broker_transport_options=broker_transport_options(settings),
        result_backend_transport_options=dict(settings.redis.result_backend_transport_options),
        redis_max_connections=settings.redis.max_connections,
        redis_retry_on_timeout=settings.redis.retry_on_timeout,
        redis_socket_timeout=settings.redis.socket_timeout_s,
        redis_socket_connect_timeout=settings.redis.socket_timeout_s,
        broker_connection_retry_on_startup=True,
        result_extended=True,
        task_serializer="json",
        accept_content=["json"],
        result_accept_content=["json"],
        enable_utc=True,
        timezone=settings.schedule.timezone,
    )
    return app
