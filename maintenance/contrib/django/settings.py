"""The maintenance settings of a Django project: `settings.TASK_MAINTENANCE` plus what Django and
Celery already know.

`TASK_MAINTENANCE` is either `{"config": "/path/to/maintenance.toml"}` (the file holds everything)
or a dict shaped like the TOML file, in which

- `tasks` / `sub_tasks` may name a model (`"model": "videos.Task"`) and its fields
  (`status_field`, `updated_at_field`, `celery_id_field`, `parent_field`) instead of the table and
  columns: the names come from the model's `_meta`, so a `db_table` or `db_column` is followed;
- `database` defaults to Django's `DATABASES["default"]` (`"alias"` picks another);
- the broker, result backend and transport options are the Celery app's: the `CELERY_*` settings
  that `app.config_from_object("django.conf:settings", namespace="CELERY")` reads, or the app
  named by `"celery_app": "proj.celery:app"`. Keys set in `TASK_MAINTENANCE["redis"]` win over
  them.

The environment overrides (`DATABASE_URL`, `REDIS_URL`, `RESULT_BACKEND_URL`) still win over all,
as everywhere. Nothing here touches Django at import: Django is imported by the functions that need
it, once the project is set up.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode

from maintenance.cli.celery_command import settings_from_app
from maintenance.config import REDIS_SCHEMES, Settings, load_settings, settings_from_mapping
from maintenance.errors import ConfigError

SOURCE = "settings.TASK_MAINTENANCE"
# Our own keys of TASK_MAINTENANCE, beside the config file's sections.
_OWN_KEYS = ("config", "celery_app", "celery_namespace")
# `<name>_field` keys of a section -> the column key of the config file each one fills.
_TASK_FIELDS = {
    "status_field": "status_column",
    "updated_at_field": "updated_at_column",
    "celery_id_field": "celery_id_column",
}
_SUB_TASK_FIELDS = {"parent_field": "parent_column", "status_field": "status_column"}
# The Celery settings we read, by their names in `app.conf`.
_CELERY_KEYS = (
    "broker_url",
    "result_backend",
    "broker_transport_options",
    "result_backend_transport_options",
)
# libpq connection parameters Django passes through OPTIONS; Django's own (pool, isolation_level,
# server_side_binding, ...) are not connection parameters and would be refused by psycopg2.
_LIBPQ_OPTIONS = frozenset(
    {
        "sslmode",
        "sslrootcert",
        "sslcert",
        "sslkey",
        "sslcrl",
        "connect_timeout",
        "application_name",
        "options",
        "target_session_attrs",
        "service",
        "passfile",
        "keepalives",
        "keepalives_idle",
    }
)

GetModel = Callable[[str], Any]


def load_from_django() -> Settings:
    """The settings of the running Django project (`manage.py task_cleanup`, the guards)."""
    from django.conf import settings

    return settings_from_django(settings, os.environ)


def settings_from_django(
    django_settings: Any, env: Mapping[str, str], *, get_model: GetModel | None = None
) -> Settings:
    """Validated settings from a Django settings object; every error names the key it is about.

    `get_model` resolves "app_label.Model" (default: Django's app registry, so the apps must be
    ready); the tests pass their own.
    """
    raw = getattr(django_settings, "TASK_MAINTENANCE", None)
    if raw is None:
        raise ConfigError(
            "not set: add TASK_MAINTENANCE to your Django settings (a dict shaped like the "
            'TOML config, or {"config": "/path/to/maintenance.toml"})',
            source="the Django settings",
        )
    if not isinstance(raw, Mapping):
        raise ConfigError(f"must be a dict, got {type(raw).__name__}", source=SOURCE)
    if "config" in raw:
        extra = sorted(set(raw) - {"config"})
        if extra:
            raise ConfigError(
                f"with 'config' the file holds the whole configuration; move {extra} into it",
                key="config",
                source=SOURCE,
            )
        path = raw["config"]
        if not isinstance(path, str | os.PathLike):
            raise ConfigError("must be a file path", key="config", source=SOURCE)
        return load_settings(Path(path), env)
    document = {name: value for name, value in raw.items() if name not in _OWN_KEYS}
    tasks_model = _translate_tasks(document, get_model)
    _translate_sub_tasks(document, get_model, tasks_model)
    document["database"] = _database_section(document.get("database"), django_settings, env)
    settings = settings_from_mapping(document, env=env, source=SOURCE)
    conf, broker_key, conf_source = _celery_conf(raw, django_settings)
    conf = _explicit_first(conf, document.get("redis"))
    broker = str(conf.get("broker_url") or "")
    if broker and not env.get("REDIS_URL") and not broker.startswith(REDIS_SCHEMES):
        raise ConfigError(
            f"the Celery broker is not Redis ({broker.split('://')[0]}://); this tool reads "
            "Celery's Redis state only",
            key=broker_key,
            source=conf_source,
        )
    return settings_from_app(settings, conf, env)


def database_url(database: Mapping[str, Any], alias: str = "default") -> str:
    """A SQLAlchemy URL for one entry of Django's `DATABASES`."""
    engine = str(database.get("ENGINE") or "")
    backend = engine.rsplit(".", 1)[-1]  # wrappers (django_prometheus, gis) end like the original
    name = str(database.get("NAME") or "")
    key = f"DATABASES[{alias!r}]"
    if backend in ("sqlite3", "spatialite"):
        return f"sqlite:///{name}"
    if backend in ("postgresql", "postgis"):
        scheme, socket_param = "postgresql+psycopg2", "host"
        options = {
            k: v
            for k, v in dict(database.get("OPTIONS") or {}).items()
            if k in _LIBPQ_OPTIONS and isinstance(v, str | int)
        }
    elif backend == "mysql":
        scheme, socket_param = "mysql+pymysql", "unix_socket"
        charset = dict(database.get("OPTIONS") or {}).get("charset")
        options = {"charset": charset} if isinstance(charset, str) else {}
    else:
        raise ConfigError(
            f"ENGINE {engine!r} is not supported (PostgreSQL, MySQL/MariaDB or SQLite); set "
            "TASK_MAINTENANCE['database']['url'] or DATABASE_URL",
            key=f"{key}['ENGINE']",
            source="the Django settings",
        )
    user, password = str(database.get("USER") or ""), str(database.get("PASSWORD") or "")
    host, port = str(database.get("HOST") or ""), str(database.get("PORT") or "")
    if host.startswith("/"):  # a Unix socket directory (PostgreSQL) or path (MySQL)
        options[socket_param], host = host, ""
    auth = quote(user, safe="") + (f":{quote(password, safe='')}" if password else "")
    netloc = (f"{auth}@" if auth else "") + host + (f":{port}" if port else "")
    query = f"?{urlencode(options)}" if options else ""
    return f"{scheme}://{netloc}/{quote(name, safe='')}{query}"


def _translate_tasks(document: dict[str, Any], get_model: GetModel | None) -> Any:
    """`tasks.model` and its `*_field` keys -> table and columns; the model, or None."""
    section = _section(document, "tasks")
    if section is None:
        return None
    label = str(section.get("model"))
    model, _ = _resolve(section, "tasks", _TASK_FIELDS, get_model)
    if model is not None and "status_column" not in section:  # the usual name, checked
        section["status_column"] = _column(model, label, "status", "tasks.status_field")
    document["tasks"] = section
    return model


def _translate_sub_tasks(
    document: dict[str, Any], get_model: GetModel | None, tasks_model: Any
) -> None:
    """The same for `sub_tasks`; the parent is the one foreign key to the task model unless
    `parent_field` names it, and must refer to the task model."""
    section = _section(document, "sub_tasks")
    if section is None:
        return
    label = str(section.get("model"))
    model, given = _resolve(section, "sub_tasks", _SUB_TASK_FIELDS, get_model)
    document["sub_tasks"] = section
    if model is None or tasks_model is None:
        return
    parent = given.get("parent_field")
    if parent is None and "parent_column" not in section:
        parent = _the_foreign_key(model, label, tasks_model)
        section["parent_column"] = _column(model, label, parent, "sub_tasks.parent_field")
    related = getattr(model._meta.get_field(parent), "related_model", None) if parent else None
    if related is not None and related is not tasks_model:
        raise ConfigError(
            f"{label}.{parent} refers to {related._meta.label}, not to the tasks model "
            f"{tasks_model._meta.label}",
            key="sub_tasks.parent_field",
            source=SOURCE,
        )


def _section(document: dict[str, Any], name: str) -> dict[str, Any] | None:
    value = document.get(name)
    if value is None:
        return None
    if not isinstance(value, Mapping):
        raise ConfigError("must be a dict", key=name, source=SOURCE)
    return dict(value)


def _resolve(
    section: dict[str, Any], name: str, fields: Mapping[str, str], get_model: GetModel | None
) -> tuple[Any, dict[str, str]]:
    """Replace the section's model and `*_field` keys by the table, id and column names; the
    model (None without one) and the field names given."""
    given = {key: section.pop(key) for key in list(section) if key in fields}
    label = section.pop("model", None)
    if label is None:
        if given:
            key = next(iter(given))
            raise ConfigError("needs 'model' (app_label.Model)", key=f"{name}.{key}", source=SOURCE)
        return None, {}
    if not isinstance(label, str):
        raise ConfigError("must be 'app_label.Model'", key=f"{name}.model", source=SOURCE)
    model = _model(label, f"{name}.model", get_model)
    for key in ("table", "id_column"):
        if key in section:
            raise ConfigError(
                f"given twice: by the model {label} and here", key=f"{name}.{key}", source=SOURCE
            )
    meta = model._meta
    section["table"], section["id_column"] = str(meta.db_table), str(meta.pk.column)
    for key, field_name in given.items():
        column_key = fields[key]
        if column_key in section:
            raise ConfigError(
                f"give either {key} or {column_key}", key=f"{name}.{key}", source=SOURCE
            )
        if not isinstance(field_name, str):
            raise ConfigError("must be a field name", key=f"{name}.{key}", source=SOURCE)
        section[column_key] = _column(model, label, field_name, f"{name}.{key}")
    return model, given


def _model(label: str, key: str, get_model: GetModel | None) -> Any:
    if get_model is None:
        from django.apps import apps

        get_model = apps.get_model
    try:
        return get_model(label)
    except (LookupError, ValueError) as exc:
        raise ConfigError(f"no model {label!r}: {exc}", key=key, source=SOURCE) from None


def _column(model: Any, label: str, field_name: str, key: str) -> str:
    """The database column of a model field; a clear error when there is no such field."""
    from django.core.exceptions import FieldDoesNotExist

    try:
        field = model._meta.get_field(field_name)
    except FieldDoesNotExist:
        names = sorted(f.name for f in model._meta.get_fields() if getattr(f, "column", None))
        raise ConfigError(
            f"model {label} has no field {field_name!r}; its fields: {', '.join(names)}",
            key=key,
            source=SOURCE,
        ) from None
    column = getattr(field, "column", None)
    if not column:
        raise ConfigError(
            f"{label}.{field_name} has no column of its own (a reverse or many-to-many relation)",
            key=key,
            source=SOURCE,
        )
    return str(column)


def _the_foreign_key(model: Any, label: str, tasks_model: Any) -> str:
    names = [
        f.name
        for f in model._meta.get_fields()
        if getattr(f, "column", None) and getattr(f, "related_model", None) is tasks_model
    ]
    if len(names) != 1:
        raise ConfigError(
            f"{label} has {len(names)} foreign keys to {tasks_model._meta.label}: name the "
            "parent with parent_field",
            key="sub_tasks.parent_field",
            source=SOURCE,
        )
    return str(names[0])


def _database_section(value: Any, django_settings: Any, env: Mapping[str, str]) -> dict[str, Any]:
    """`DATABASES[alias]` as a URL, unless the section or `DATABASE_URL` gives one."""
    if value is None:
        value = {}
    if not isinstance(value, Mapping):
        raise ConfigError("must be a dict", key="database", source=SOURCE)
    section = dict(value)
    alias = section.pop("alias", "default")
    if "url" in section or env.get("DATABASE_URL"):
        return section
    databases = getattr(django_settings, "DATABASES", None) or {}
    if alias not in databases:
        raise ConfigError(
            f"DATABASES has no alias {alias!r} (it has {sorted(databases)})",
            key="database.alias",
            source=SOURCE,
        )
    section["url"] = database_url(databases[alias], str(alias))
    return section


def _celery_conf(raw: Mapping[str, Any], django_settings: Any) -> tuple[dict[str, Any], str, str]:
    """The Celery app's broker settings, the broker URL's key and where it was read."""
    target = raw.get("celery_app")
    if target is not None:
        app = _import_app(target)
        return {key: app.conf.get(key) for key in _CELERY_KEYS}, "broker_url", str(target)
    namespace = raw.get("celery_namespace", "CELERY")
    if not isinstance(namespace, str):
        raise ConfigError("must be a string", key="celery_namespace", source=SOURCE)
    prefix = f"{namespace}_" if namespace else ""
    conf = {key: getattr(django_settings, prefix + key.upper(), None) for key in _CELERY_KEYS}
    return conf, f"{prefix}BROKER_URL", "the Django settings"


def _import_app(target: Any) -> Any:
    """`"package.module:attribute"`, as `celery -A` takes it."""
    module_name, colon, attribute = str(target).partition(":")
    if not isinstance(target, str) or not colon or not module_name or not attribute:
        raise ConfigError(
            "must be 'package.module:app', e.g. 'proj.celery:app'", key="celery_app", source=SOURCE
        )
    try:
        app = getattr(importlib.import_module(module_name), attribute)
    except (ImportError, AttributeError) as exc:
        raise ConfigError(
            f"cannot import {target}: {exc}", key="celery_app", source=SOURCE
        ) from None
    if not hasattr(app, "conf"):
        raise ConfigError(f"{target} is not a Celery app", key="celery_app", source=SOURCE)
    return app


def _explicit_first(conf: dict[str, Any], redis: Any) -> dict[str, Any]:
    """What `TASK_MAINTENANCE["redis"]` sets itself wins over the Celery app's settings."""
    if not isinstance(redis, Mapping):
        return conf
    conf = dict(conf)
    if "broker_url" in redis:
        conf["broker_url"] = None
    if "result_backend_url" in redis:
        conf["result_backend"] = None
    for ours, theirs in (
        ("transport_options", "broker_transport_options"),
        ("result_backend_transport_options", "result_backend_transport_options"),
    ):
        if isinstance(redis.get(ours), Mapping):
            conf[theirs] = {**dict(conf.get(theirs) or {}), **redis[ours]}
    return conf
