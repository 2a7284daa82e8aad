"""Build a Celery app that speaks to the monitored app's broker and result backend.

Constructing it does no I/O: Celery connects lazily, on the first call that needs Redis.
"""

from __future__ import annotations

from typing import Any

from celery import Celery
from kombu.connection import Connection

from maintenance.config import RedisSettings, Settings


def broker_transport_options(settings: Settings) -> dict[str, Any]:
    """The app's own transport options, plus our pool defaults where the app set none."""
    return _transport_options(settings.redis)


def _transport_options(redis: RedisSettings) -> dict[str, Any]:
    options: dict[str, Any] = {
        "max_connections": redis.max_connections,
        "retry_on_timeout": redis.retry_on_timeout,
        "socket_timeout": redis.socket_timeout_s,
        "socket_connect_timeout": redis.socket_timeout_s,
        # Our control connections (ping, inspect, revoke) are kombu consumers, and kombu has
        # every consumer move unacked messages past the visibility timeout back to their queues.
        # That is the app's workers' job; `check` must change nothing, so ours restores none.
        "unacked_restore_limit": 0,
    }
    options.update(redis.transport_options)
    return options


def broker_ssl(redis: RedisSettings) -> dict[str, Any] | None:
    """`[redis] ssl` as Celery's broker_use_ssl, certificates verified unless it says otherwise
    (redis-py's own default; Celery's result backend refuses a TLS set-up that does not say)."""
    return {"ssl_cert_reqs": "required", **redis.ssl} if redis.ssl else None


def result_backend_ssl(redis: RedisSettings) -> dict[str, Any] | None:
    """`[redis] result_backend_ssl` as redis_backend_use_ssl; the broker's `ssl` when the results
    live on the broker (no result_backend_url)."""
    if redis.result_backend_ssl:
        return {"ssl_cert_reqs": "required", **redis.result_backend_ssl}
    return None if redis.result_backend_url else broker_ssl(redis)


def broker_connection(redis: RedisSettings, *, max_retries: int | None = None) -> Any:
    """A kombu connection (untyped) to the broker exactly as our Celery app opens one: URL forms,
    Sentinel, TLS, transport options. For a client that has no app: the guards' skip counter.
    `max_retries` caps kombu's reconnect attempts (by default it tries for ~7 s)."""
    options = _transport_options(redis)
    if max_retries is not None:
        options["max_retries"] = max_retries
    return Connection(  # type: ignore[no-untyped-call]
        redis.broker_url, transport_options=options, ssl=broker_ssl(redis) or False
    )


# The transport options that say how to reach a Sentinel-managed master (kombu's and Celery's).
SENTINEL_OPTIONS = ("master_name", "sentinel_kwargs", "min_other_sentinels")


def result_backend_transport_options(settings: Settings) -> dict[str, Any]:
    """The app's result backend options; with no result_backend_url the results live on the
    broker, so the broker's Sentinel options (master_name, ...) apply there too unless set.

    Celery's SentinelBackend reads `master_name` from its own transport options only: without
    this, `sentinel://` as the broker alone (the README's one-URL form) failed every result read
    with "No master found for None".
    """
    options = dict(settings.redis.result_backend_transport_options)
    if not settings.redis.result_backend_url:
        for key in SENTINEL_OPTIONS:
            if key in settings.redis.transport_options:
                options.setdefault(key, settings.redis.transport_options[key])
    return options


def build_celery_app(settings: Settings, main: str = "task_maintenance") -> Celery:
    app = Celery(main, set_as_current=False)
    app.conf.update(
        broker_url=settings.redis.broker_url,
        result_backend=settings.redis.results_url,
        broker_transport_options=broker_transport_options(settings),
        result_backend_transport_options=result_backend_transport_options(settings),
        broker_use_ssl=broker_ssl(settings.redis) or False,
        redis_backend_use_ssl=result_backend_ssl(settings.redis) or None,
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
