"""Settings: one TOML file plus URL overrides from the environment, validated, frozen."""

from __future__ import annotations

import dataclasses
import os
import tomllib
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from importlib import resources
from pathlib import Path
from typing import Any, Literal

from maintenance.alerts.settings import AlertSettings, check_alert_settings
from maintenance.core.bindings import Binding, parse_binding
from maintenance.core.plan import StuckAction
from maintenance.errors import ConfigError
from maintenance.redaction import redact_url

DEFAULT_CONFIG_PATH = Path("config/maintenance.toml")
CONFIG_ENV = "MAINTENANCE_CONFIG"
# URL schemes of a Redis broker or result backend, as kombu and Celery take them.
REDIS_SCHEMES = ("redis://", "rediss://", "unix://", "sentinel://", "socket://")
URL_OVERRIDES = {  # environment variable -> (section, key)
    "REDIS_URL": ("redis", "broker_url"),
    "RESULT_BACKEND_URL": ("redis", "result_backend_url"),
    "DATABASE_URL": ("database", "url"),
}


@dataclass(frozen=True)
class RedisSettings:
    broker_url: str = "redis://localhost:6379/0"
    result_backend_url: str = ""  # empty: same as broker_url
    transport_options: dict[str, Any] = field(default_factory=dict)
    result_backend_transport_options: dict[str, Any] = field(default_factory=dict)
    ssl: dict[str, Any] = field(default_factory=dict)  # the app's broker_use_ssl (TLS files)
    result_backend_ssl: dict[str, Any] = field(default_factory=dict)  # redis_backend_use_ssl
    max_connections: int = 50
    retry_on_timeout: bool = True
    socket_timeout_s: float = 30.0
    chunk_size: int = 1000  # list elements / keys per Redis call
    pipeline_depth: int = 2  # LRANGE calls per round trip: deeper costs Redis more CPU

    @property
    def results_url(self) -> str:
        return self.result_backend_url or self.broker_url

    def __repr__(self) -> str:
        return f"RedisSettings(broker_url={redact_url(self.broker_url)!r}, ...)"


@dataclass(frozen=True)
class DatabaseSettings:
    url: str = "sqlite:///task_maintenance.db"
    batch_size: int = 5000  # ids per look-up query; at 10000 PostgreSQL hash-joins a full scan
    pool_size: int = 5
    connect_timeout_s: float = 10.0

    def __repr__(self) -> str:
        return f"DatabaseSettings(url={redact_url(self.url)!r}, batch_size={self.batch_size})"


@dataclass(frozen=True)
class TaskTableSettings:
    table: str = "tasks"
    id_column: str = "id"
    status_column: str = "status"
    active_statuses: tuple[str, ...] = ("pending", "queued", "processing")
    updated_at_column: str = ""  # optional: enables "lost row" detection
    celery_id_column: str = ""  # optional: the Celery task id stored on the row
    schema: str = ""  # optional database schema


@dataclass(frozen=True)
class SubTaskTableSettings:
    table: str = ""  # empty: no sub-task table
    id_column: str = "id"
    parent_column: str = "task_id"
    status_column: str = ""  # optional; uses tasks.active_statuses
    schema: str = ""

    @property
    def enabled(self) -> bool:
        return bool(self.table)


@dataclass(frozen=True)
class ScanSettings:
    queues: tuple[str, ...] = ("celery",)
    inspect_workers: bool = True  # ask live workers for active/reserved/scheduled tasks
    inspect_timeout_s: float = 2.0
    result_retention_h: float = 24.0
    stuck_after_h: float = 24.0
    hazards: bool = True  # report ETAs beyond the visibility timeout, duplicates, expired messages
    # scan_orphans split into Celery subtasks on the maintenance queue (scan/fanout.py)
    fan_out: bool = False
    fan_out_result_shards: int = 4  # result-key parts (+1 catch-all), by the id's first hex digit
    fan_out_start_timeout_s: float = 30.0  # fail when no maintenance worker takes a part sooner


@dataclass(frozen=True)
class CleanupSettings:
    grace_s: float = 60.0  # a missing row must be seen missing twice this far apart
    max_orphan_ratio: float = 0.5  # refuse when orphans exceed this share of managed messages
    max_orphans: int = 0  # refuse above this many orphans; 0: no absolute limit
    quarantine_retention_days: float = 7.0
    stuck_action: StuckAction = StuckAction.REPORT
    failed_status: str = "failed"  # stuck_action = "mark_failed" sets this status
    requeue_queue: str = ""  # stuck_action = "requeue" sends here; empty: the first scan queue
    revoke_batch_size: int = 500
    # elements from each end of a queue list one compaction piece may scan (~130-200 ns each
    # at 1 KB): tombstones deeper stay for workers; `cleanup --compact` removes all at once
    compact_depth: int = 50_000
    lock_ttl_s: float = 3900.0  # the longest a run holds the lock: it stops renewing after this
    lock_wait_s: float = 0.0  # how long a second run waits for the lock before giving up
    lock_lease_s: float = 60.0  # the lock expires this long after its holder last renewed it
    lock_renew_s: float = 20.0  # the holder renews its lease this often
    key_prefix: str = "task-maintenance"  # our own Redis keys (quarantine, lock, sightings)


@dataclass(frozen=True)
class GuardSettings:
    missing_retries: int = 10  # re-checks of a missing row before skipping it
    missing_retry_delay_s: float = 3.0
    db_retry_max_delay_s: float = 60.0  # backoff cap while the database is unreachable
    db_max_retries: int = 1000


@dataclass(frozen=True)
class ScheduleSettings:
    timezone: str = "UTC"
    scan_orphans: str = "0 2 * * *"  # crontab: minute hour day-of-month month day-of-week
    cleanup_expired_tasks: str = "0 2 * * *"
    interval_s: float = 0.0  # > 0 replaces both crontabs (demos and tests)
    time_limit_s: int = 3600
    soft_time_limit_s: int = 3300
    queue: str = "maintenance"


@dataclass(frozen=True)
class LoggingSettings:
    dir: str = "logs"
    level: str = "INFO"


@dataclass(frozen=True)
class MetricsSettings:
    """The maintenance worker's own Prometheus endpoint (`monitor --metrics-port` is the other)."""

    port: int = 0  # > 0: the worker serves /metrics on this port (8758 is ours by convention)
    addr: str = "0.0.0.0"
    min_interval_s: float = 5.0  # scrapes closer together than this share one snapshot


@dataclass(frozen=True)
class Settings:
    redis: RedisSettings = field(default_factory=RedisSettings)
    database: DatabaseSettings = field(default_factory=DatabaseSettings)
    tasks: TaskTableSettings = field(default_factory=TaskTableSettings)
    sub_tasks: SubTaskTableSettings = field(default_factory=SubTaskTableSettings)
    bindings: tuple[Binding, ...] = ()
    scan: ScanSettings = field(default_factory=ScanSettings)
    cleanup: CleanupSettings = field(default_factory=CleanupSettings)
    guards: GuardSettings = field(default_factory=GuardSettings)
    schedule: ScheduleSettings = field(default_factory=ScheduleSettings)
    logging: LoggingSettings = field(default_factory=LoggingSettings)
    alerts: AlertSettings = field(default_factory=AlertSettings)
    metrics: MetricsSettings = field(default_factory=MetricsSettings)
    source: str = "<defaults>"


_SECTIONS: dict[str, type] = {
    "redis": RedisSettings,
    "database": DatabaseSettings,
    "tasks": TaskTableSettings,
    "sub_tasks": SubTaskTableSettings,
    "scan": ScanSettings,
    "cleanup": CleanupSettings,
    "guards": GuardSettings,
    "schedule": ScheduleSettings,
    "logging": LoggingSettings,
    "alerts": AlertSettings,
    "metrics": MetricsSettings,
}


def resolve_config_path(cli_path: str | None, env: Mapping[str, str]) -> Path:
    """`--config`, else `$MAINTENANCE_CONFIG`, else `config/maintenance.toml`."""
    return Path(cli_path or env.get(CONFIG_ENV) or DEFAULT_CONFIG_PATH)


def load_settings(path: Path | str, env: Mapping[str, str] | None = None) -> Settings:
    """Read and validate the config file, then apply the URL overrides from `env`."""
    env = os.environ if env is None else env
    path = Path(path)
    source = str(path)
    if not path.is_file():
        raise ConfigError(
            "config file not found; write one for your app with `task-cleanup config init`, or "
            "start from the example (`task-cleanup config example > config/maintenance.toml`), "
            f"or pass --config / set ${CONFIG_ENV}",
            source=source,
        )
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"not valid TOML: {exc}", source=source) from None
    return settings_from_mapping(raw, env=env, source=source)


def settings_from_mapping(
    raw: Mapping[str, Any], *, env: Mapping[str, str] | None = None, source: str = "<mapping>"
) -> Settings:
    """Validate a parsed config document; every error names the key and the source."""
    env = {} if env is None else env
    data = {name: dict(value) for name, value in raw.items() if isinstance(value, dict)}
    for name, value in raw.items():
        if name == "bindings":
            continue
        if name not in _SECTIONS:
            raise ConfigError(
                f"unknown section; expected one of {sorted(_SECTIONS)}", key=name, source=source
            )
        if not isinstance(value, dict):
            raise ConfigError("must be a table", key=name, source=source)
    for var, (section, key) in URL_OVERRIDES.items():
        if env.get(var):
            data.setdefault(section, {})[key] = env[var]
    sections = {
        name: _build_section(cls, data.get(name, {}), name, source)
        for name, cls in _SECTIONS.items()
    }
    for name in ("tasks", "sub_tasks"):
        sections[name] = _split_schema(sections[name])
    bindings = _build_bindings(raw.get("bindings", []), source)
    settings = Settings(**sections, bindings=bindings, source=source)
    _check_consistency(settings)
    return settings


def example_config() -> str:
    """The example config shipped in the package (`task-cleanup config example`): users who
    installed from PyPI have no source tree to copy it from."""
    return resources.files("maintenance").joinpath("example_config.toml").read_text("utf-8")


def _split_schema(section: Any) -> Any:
    """`table = "app.jobs"` with no `schema` means table `jobs` in schema `app`, as in SQL."""
    schema, dot, table = section.table.partition(".")
    if section.schema or not dot or not schema or not table or "." in table:
        return section
    return dataclasses.replace(section, table=table, schema=schema)


def _build_bindings(raw: Any, source: str) -> tuple[Binding, ...]:
    if not isinstance(raw, list):
        raise ConfigError(
            "must be an array of tables ([[bindings]])", key="bindings", source=source
        )
    bindings = []
    for index, entry in enumerate(raw):
        key = f"bindings[{index}]"
        if not isinstance(entry, dict):
            raise ConfigError("must be a table", key=key, source=source)
        try:
            bindings.append(parse_binding(entry))
        except ValueError as exc:
            raise ConfigError(str(exc), key=key, source=source) from None
    return tuple(bindings)


def _build_section(cls: type, values: dict[str, Any], section: str, source: str) -> Any:
    hints = typing.get_type_hints(cls)
    known = {f.name for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in values.items():
        full_key = f"{section}.{key}"
        if key not in known:
            raise ConfigError(
                f"unknown key; expected one of {sorted(known)}", key=full_key, source=source
            )
        kwargs[key] = _coerce(value, hints[key], full_key, source)
    return cls(**kwargs)


def _coerce(value: Any, hint: Any, key: str, source: str) -> Any:
    """Check `value` against a field's type hint; ints are accepted where floats are."""
    origin = typing.get_origin(hint)
    if origin is Literal:
        allowed = typing.get_args(hint)
        if value not in allowed:
            raise ConfigError(
                f"must be one of {list(allowed)}, got {value!r}", key=key, source=source
            )
        return value
    if isinstance(hint, type) and issubclass(hint, StrEnum):
        choices = [member.value for member in hint]
        if value not in choices:
            raise ConfigError(f"must be one of {choices}, got {value!r}", key=key, source=source)
        return hint(value)
    if origin is tuple:
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise ConfigError("must be a list of strings", key=key, source=source)
        return tuple(value)
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError("must be a table", key=key, source=source)
        return dict(value)
    expected = {bool: "a boolean", int: "an integer", float: "a number", str: "a string"}
    ok = (
        (hint is bool and isinstance(value, bool))
        or (hint is int and isinstance(value, int) and not isinstance(value, bool))
        or (hint is float and isinstance(value, int | float) and not isinstance(value, bool))
        or (hint is str and isinstance(value, str))
    )
    if not ok:
        raise ConfigError(
            f"must be {expected.get(hint, hint)}, got {type(value).__name__} {value!r}",
            key=key,
            source=source,
        )
    return float(value) if hint is float else value


SSL_CERT_REQS = ("required", "optional", "none")


def _check_ssl(redis: RedisSettings, src: str) -> None:
    """`[redis] ssl` / `result_backend_ssl` hold redis-py's `ssl_*` arguments, as Celery's
    broker_use_ssl does; a typo would otherwise reach redis-py as an unknown argument."""
    for name in ("ssl", "result_backend_ssl"):
        for key, value in getattr(redis, name).items():
            if not key.startswith("ssl_"):
                raise ConfigError(
                    "unknown TLS option; expected ssl_cert_reqs, ssl_ca_certs, ssl_certfile, "
                    "ssl_keyfile, ssl_check_hostname or another redis-py ssl_* argument",
                    key=f"redis.{name}.{key}",
                    source=src,
                )
            if key == "ssl_cert_reqs" and value not in SSL_CERT_REQS:
                raise ConfigError(
                    f"must be one of {list(SSL_CERT_REQS)}, got {value!r}",
                    key=f"redis.{name}.{key}",
                    source=src,
                )


def _check_consistency(settings: Settings) -> None:
    """Cross-field rules that a single field's type cannot express."""
    src = settings.source
    positive = {
        "redis.chunk_size": settings.redis.chunk_size,
        "redis.pipeline_depth": settings.redis.pipeline_depth,
        "redis.max_connections": settings.redis.max_connections,
        "database.batch_size": settings.database.batch_size,
    }
    for key, value in positive.items():
        if value <= 0:
            raise ConfigError(f"must be greater than 0, got {value}", key=key, source=src)
    _check_ssl(settings.redis, src)
    if not settings.tasks.active_statuses:
        raise ConfigError("must name at least one status", key="tasks.active_statuses", source=src)
    if not settings.scan.queues:
        raise ConfigError("must name at least one queue", key="scan.queues", source=src)
    if not 1 <= settings.scan.fan_out_result_shards <= 16:
        raise ConfigError("must be from 1 to 16", key="scan.fan_out_result_shards", source=src)
    if not 0 < settings.cleanup.lock_renew_s < settings.cleanup.lock_lease_s:
        raise ConfigError(
            "must be greater than 0 and below cleanup.lock_lease_s",
            key="cleanup.lock_renew_s",
            source=src,
        )
    if not 0 <= settings.metrics.port <= 65535:
        raise ConfigError("must be a TCP port, or 0 for none", key="metrics.port", source=src)
    if not 0 < settings.cleanup.max_orphan_ratio <= 1:
        raise ConfigError("must be in (0, 1]", key="cleanup.max_orphan_ratio", source=src)
    for index, binding in enumerate(settings.bindings):
        if binding.kind == "sub_task" and not settings.sub_tasks.enabled:
            raise ConfigError(
                "binds a sub-task but [sub_tasks] has no table",
                key=f"bindings[{index}].kind",
                source=src,
            )
    if settings.schedule.soft_time_limit_s >= settings.schedule.time_limit_s:
        raise ConfigError(
            "must be lower than schedule.time_limit_s", key="schedule.soft_time_limit_s", source=src
        )
    check_alert_settings(settings.alerts, src)
