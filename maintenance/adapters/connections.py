"""Open the broker and result-backend connections the way kombu and Celery would.

The composition (`maintenance.services`) builds every adapter over these clients; the opening
itself is I/O, with kombu's and Celery's URL errors translated here: a malformed URL is a config
error, a failed connection `BrokerUnavailable`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import redis
from celery import Celery
from celery.exceptions import ImproperlyConfigured

from maintenance.adapters.redis_layout import BrokerLayout, ResultLayout
from maintenance.adapters.redis_reader import broker_errors
from maintenance.adapters.sentinel import MasterPin
from maintenance.config import REDIS_SCHEMES, Settings
from maintenance.core.models import as_text
from maintenance.errors import ConfigError


@dataclass(frozen=True)
class Broker:
    """A plain client over kombu's own pool (same URL handling: TLS, sockets, Sentinel), and
    the key layout kombu uses, read from its channel."""

    client: redis.Redis
    layout: BrokerLayout
    release: Callable[[], None]


@dataclass(frozen=True)
class ResultBackend:
    backend: Any  # Celery's RedisBackend (or SentinelBackend)
    client: redis.Redis
    layout: ResultLayout


def check_urls(settings: Settings, app: Celery) -> None:
    """Config errors said up front, before anything connects."""
    if not settings.redis.broker_url.startswith(REDIS_SCHEMES):
        raise ConfigError(
            "must be a redis://, rediss://, unix:// or sentinel:// URL",
            key="redis.broker_url",
            source=settings.source,
        )
    _check_sentinel_options(settings, app)


def _check_sentinel_options(settings: Settings, app: Celery) -> None:
    """A `sentinel://` result backend without `master_name` is a config error, said so up front.

    kombu refuses a Sentinel broker without it when connecting (a ValueError, reported as a config
    error), but Celery's SentinelBackend asks the sentinels for master `None` and fails the first
    result read with "No master found for None", reported as Redis being unavailable.
    """
    url = str(app.conf.result_backend or "")
    options = app.conf.result_backend_transport_options or {}
    if url.startswith("sentinel://") and not options.get("master_name"):
        key = "redis.result_backend_transport_options"
        if not settings.redis.result_backend_url:
            key = "redis.transport_options"
        raise ConfigError(
            "a sentinel:// result backend needs master_name (the name the sentinels monitor)",
            key=key,
            source=settings.source,
        )


def connect_broker(settings: Settings, app: Celery, pin: MasterPin | None = None) -> Broker:
    """Connects and pings; behind Sentinel the client is pinned to the master (`pin`)."""
    with _url_errors("redis.broker_url", settings), broker_errors("connecting to the broker"):
        connection = app.connection_for_read()
        try:
            channel = connection.default_channel
            layout = BrokerLayout.from_channel(channel)
            client = redis.Redis(connection_pool=channel.pool)
        except BaseException:
            connection.release()
            raise
    return Broker(client if pin is None else pin.attach(client), layout, connection.release)


def connect_results(settings: Settings, app: Celery, pin: MasterPin) -> ResultBackend:
    key = "redis.result_backend_url" if settings.redis.result_backend_url else "redis.broker_url"
    with _url_errors(key, settings), broker_errors("connecting to the result backend"):
        backend = app.backend
        client = pin.attach(backend.client)
        layout = ResultLayout(task_keyprefix=as_text(backend.task_keyprefix))
    return ResultBackend(backend, client, layout)


@contextmanager
def _url_errors(key: str, settings: Settings) -> Iterator[None]:
    """kombu and Celery reject a malformed URL (bad port, database, scheme) as a config error."""
    try:
        yield
    except (ValueError, ImproperlyConfigured) as exc:
        raise ConfigError(f"invalid URL: {exc}", key=key, source=settings.source) from None
