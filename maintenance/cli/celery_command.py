"""`celery -A proj maintenance …`: the `task-cleanup` commands inside Celery's own CLI.

Registered through the `celery.commands` entry point, as Flower registers `celery flower`. The
config file still describes the tables; what the app given with `-A` knows better is taken from
it: its broker URL, result backend and transport options (visibility timeout, priority steps,
key prefix). `REDIS_URL` / `RESULT_BACKEND_URL` in the environment still win, as everywhere.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import replace
from typing import Any

import click

from maintenance.cli.base import SettingsHook
from maintenance.cli.main import make_group
from maintenance.config import REDIS_SCHEMES, Settings
from maintenance.errors import ConfigError


def settings_from_app(
    settings: Settings, conf: Mapping[str, Any], env: Mapping[str, str]
) -> Settings:
    """The Redis settings of a Celery app's configuration over those of the config file."""
    redis = settings.redis
    broker = str(conf.get("broker_url") or "")
    if broker and not env.get("REDIS_URL"):
        if not broker.startswith(REDIS_SCHEMES):
            raise ConfigError(
                f"the Celery app's broker is not Redis ({broker.split('://')[0]}://); this tool "
                "reads Celery's Redis state only",
                key="broker_url",
                source="the Celery app (-A)",
            )
        redis = replace(redis, broker_url=broker)
    backend = str(conf.get("result_backend") or "")
    if backend.startswith(REDIS_SCHEMES) and not env.get("RESULT_BACKEND_URL"):
        redis = replace(redis, result_backend_url=backend)
    transport = dict(conf.get("broker_transport_options") or {})
    results_transport = dict(conf.get("result_backend_transport_options") or {})
    redis = replace(
        redis,
        transport_options={**redis.transport_options, **transport},
        result_backend_transport_options={
            **redis.result_backend_transport_options,
            **results_transport,
        },
    )
    # The app's TLS files (its broker_use_ssl / redis_backend_use_ssl dicts): without them a
    # `rediss://` URL with no query would reach the app's Redis unverified, or not at all.
    broker_ssl, backend_ssl = conf.get("broker_use_ssl"), conf.get("redis_backend_use_ssl")
    if isinstance(broker_ssl, Mapping) and broker_ssl:
        redis = replace(redis, ssl={**redis.ssl, **broker_ssl})
    if isinstance(backend_ssl, Mapping) and backend_ssl:
        redis = replace(redis, result_backend_ssl={**redis.result_backend_ssl, **backend_ssl})
    return replace(settings, redis=redis)


def _from_celery_app(ctx: click.Context) -> SettingsHook | None:
    """Only when `-A` named an app: Celery's default app knows nothing of the user's broker."""
    root = ctx.find_root()
    if not root.params.get("app"):
        return None
    app = getattr(ctx.obj, "app", None)  # Celery's CLIContext
    if app is None:
        return None
    conf = app.conf
    return lambda settings: settings_from_app(settings, conf, os.environ)


maintenance = make_group("maintenance", adapt=_from_celery_app)
