"""Composition: build the adapters for one settings object; the only place opening connections."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import redis
from celery import Celery
from celery.exceptions import ImproperlyConfigured

from maintenance.adapters.celery_app import build_celery_app
from maintenance.adapters.database import TaskDatabase, create_db_engine
from maintenance.adapters.redis_layout import BrokerLayout, OwnKeys, ResultLayout
from maintenance.adapters.redis_reader import RedisReader, broker_errors
from maintenance.adapters.workers import WorkerControl
from maintenance.config import Settings
from maintenance.errors import ConfigError


@dataclass
class Services:
    settings: Settings
    app: Celery
    broker: redis.Redis
    results: redis.Redis
    layout: BrokerLayout
    result_layout: ResultLayout
    own_keys: OwnKeys
    db: TaskDatabase
    reader: RedisReader
    workers: WorkerControl
    _closers: list[Any] = field(default_factory=list)

    def close(self) -> None:
        _close_all(self._closers)


def open_services(settings: Settings, app: Celery | None = None) -> Services:
    """Connect to Redis the way kombu and Celery would for the same settings."""
    app = app or build_celery_app(settings)
    if not settings.redis.broker_url.startswith(("redis://", "rediss://", "unix://",
                                                 "sentinel://", "socket://")):
        raise ConfigError("must be a redis://, rediss://, unix:// or sentinel:// URL",
                          key="redis.broker_url", source=settings.source)
    closers: list[Any] = []
    try:
        return _connect(settings, app, closers)
    except BaseException:
        _close_all(closers)  # release what was opened before the failure (long-lived workers)
        raise


def _close_all(closers: list[Any]) -> None:
    for closer in reversed(closers):
        with contextlib.suppress(Exception):  # best effort on the way out
            closer()


def _connect(settings: Settings, app: Celery, closers: list[Any]) -> Services:
    with _url_errors("redis.broker_url", settings), broker_errors("connecting to the broker"):
        connection = app.connection_for_read()
        closers.append(connection.release)
        channel = connection.default_channel  # connects and pings
        layout = BrokerLayout.from_channel(channel)
        # A plain client over kombu's own pool: same URL handling (TLS, sockets, sentinel),
        # and key names that we prefix ourselves from the layout.
        broker = redis.Redis(connection_pool=channel.pool)
    results_key = "redis.result_backend_url" if settings.redis.result_backend_url else (
        "redis.broker_url")
    with _url_errors(results_key, settings), broker_errors("connecting to the result backend"):
        backend = app.backend
        results = backend.client
        result_layout = ResultLayout(task_keyprefix=_text(backend.task_keyprefix))
    engine = create_db_engine(settings)
    closers.append(engine.dispose)
    db = TaskDatabase(engine, settings)
    reader = RedisReader(broker, layout, results, result_layout,
                         chunk_size=settings.redis.chunk_size, depth=settings.redis.pipeline_depth)
    workers = WorkerControl(app, timeout_s=settings.scan.inspect_timeout_s)
    return Services(settings, app, broker, results, layout, result_layout,
                    OwnKeys(settings.cleanup.key_prefix), db, reader, workers, closers)


@contextmanager
def _url_errors(key: str, settings: Settings) -> Iterator[None]:
    """kombu and Celery reject a malformed URL (bad port, database, scheme) as a config error."""
    try:
        yield
    except (ValueError, ImproperlyConfigured) as exc:
        raise ConfigError(f"invalid URL: {exc}", key=key, source=settings.source) from None


def _text(value: str | bytes) -> str:
    return value.decode() if isinstance(value, bytes) else value
