"""`config show`: the effective config, secrets redacted, and where each value came from.

A value comes from the config file, an environment variable (the URL overrides), the Celery app
named with `celery -A app maintenance` (its broker, result backend and transport options), or
the default. Knowing which one answers "why does it talk to *that* Redis?" without reading code.
"""

from __future__ import annotations

import dataclasses
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from enum import Enum
from typing import Any
from urllib.parse import urlsplit

from maintenance.config import (
    _SECTIONS,
    CONFIG_ENV,
    URL_OVERRIDES,
    Settings,
    load_settings,
    resolve_config_path,
)
from maintenance.redaction import redact_text, redact_url

SECRET_WORDS = ("password", "passwd", "secret", "token", "credential")
CELERY_APP = "the Celery app (-A)"


@dataclass(frozen=True)
class ConfigValue:
    key: str  # "section.name"
    value: Any  # redacted, JSON-ready
    source: str

    def as_dict(self) -> dict[str, Any]:
        return {"key": self.key, "value": self.value, "source": self.source}


@dataclass(frozen=True)
class EffectiveConfig:
    path: str
    path_from: str  # "--config", "$MAINTENANCE_CONFIG" or "the default path"
    values: tuple[ConfigValue, ...]
    bindings: tuple[dict[str, str], ...]

    def as_dict(self) -> dict[str, Any]:
        return {
            "config_file": self.path,
            "config_file_from": self.path_from,
            "values": [v.as_dict() for v in self.values],
            "bindings": list(self.bindings),
        }


def effective_config(
    cli_path: str | None,
    env: Mapping[str, str],
    adapt: Callable[[Settings], Settings] | None = None,
    load: Callable[[], Settings] | None = None,
) -> EffectiveConfig:
    """Load the config as every command does and say where each value came from. `load`: the
    settings come from a framework's own settings (e.g. Django's) unless --config is given."""
    file_source = "file"
    raw: dict[str, Any] = {}
    if load is not None and cli_path is None:
        base = load()
        path, path_from = base.source, "the framework's settings"
        file_source = "the framework's settings"
    else:
        config = resolve_config_path(cli_path, env)
        path = str(config)
        path_from = (
            "--config"
            if cli_path
            else f"${CONFIG_ENV}"
            if env.get(CONFIG_ENV)
            else "the default path"
        )
        base = load_settings(config, env)  # a missing or bad file: the ConfigError it always is
        raw = tomllib.loads(config.read_text(encoding="utf-8"))
    effective = adapt(base) if adapt is not None else base
    overrides = {where: var for var, where in URL_OVERRIDES.items() if env.get(var)}
    values = []
    for section, cls in _SECTIONS.items():
        in_file = raw.get(section, {})
        defaults = cls()
        for f in dataclasses.fields(cls):
            value = getattr(getattr(effective, section), f.name)
            if adapt is not None and value != getattr(getattr(base, section), f.name):
                source = CELERY_APP
            elif (section, f.name) in overrides:
                source = f"${overrides[section, f.name]}"
            elif f.name in in_file or (not raw and value != getattr(defaults, f.name)):
                source = file_source
            elif value != getattr(defaults, f.name):
                source = 'file (from table = "schema.table")'  # the only derived value
            else:
                source = "default"
            values.append(ConfigValue(f"{section}.{f.name}", redact(f.name, value), source))
    bindings = tuple(
        {"task": b.task, "id_from": b.id_from, "kind": b.kind} for b in effective.bindings
    )
    return EffectiveConfig(path, path_from, tuple(values), bindings)


def redact(key: str, value: Any) -> Any:
    """JSON-ready, with every secret hidden: URL passwords, a webhook's path and query (the
    URL itself is the credential for Slack-style hooks), and any option named like a secret."""
    if isinstance(value, Enum):
        return value.value
    if isinstance(value, tuple | list):
        return [redact(key, v) for v in value]
    if isinstance(value, dict):
        return {k: redact(str(k), v) for k, v in value.items()}
    if isinstance(value, str):
        named_secret = any(word in key.lower() for word in SECRET_WORDS)
        if value and named_secret and not key.endswith("_env"):  # `*_env` names a variable
            return "***"
        if key == "webhook_url" and value:
            parts = urlsplit(value)
            return f"{parts.scheme}://{parts.hostname or ''}/***"
        return redact_url(value) if "://" in value else redact_text(value)
    return value
