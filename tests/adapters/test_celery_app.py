"""The maintenance app's Celery settings."""

from __future__ import annotations

from maintenance.adapters.celery_app import broker_transport_options, build_celery_app
from maintenance.config import settings_from_mapping


def test_our_connections_never_restore_other_workers_unacked_messages() -> None:
    """kombu consumers restore visible unacked messages; ours must not (check is read-only)."""
    settings = settings_from_mapping({"redis": {"transport_options": {"visibility_timeout": 60}}})
    options = broker_transport_options(settings)
    assert options["unacked_restore_limit"] == 0
    assert options["visibility_timeout"] == 60
    app = build_celery_app(settings)
    assert app.conf.broker_transport_options["unacked_restore_limit"] == 0


def test_pool_settings_come_from_the_config() -> None:
    """max_connections and retry_on_timeout reach kombu and the result backend (the seed's)."""
    settings = settings_from_mapping({"redis": {"max_connections": 7, "retry_on_timeout": False}})
    app = build_celery_app(settings)
    assert app.conf.broker_transport_options["max_connections"] == 7
    assert app.conf.redis_max_connections == 7
    assert app.conf.redis_retry_on_timeout is False
