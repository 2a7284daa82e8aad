"""Settings: validation of the TOML document, environment overrides, defaults and redacted reprs;
the example config documents every key, with the real defaults, and loads."""

from __future__ import annotations

import dataclasses
import tomllib
from pathlib import Path
from typing import Any

import pytest

from maintenance.config import (
    _SECTIONS,
    CONFIG_ENV,
    DEFAULT_CONFIG_PATH,
    load_settings,
    resolve_config_path,
    settings_from_mapping,
)
from maintenance.core.bindings import Binding
from maintenance.errors import ConfigError
from tests.conftest import ROOT

SUB_TASKS = {"table": "sub_tasks"}
BINDING = {"task": "demo.*", "id_from": "args[0]"}
EXAMPLE = ROOT / "config" / "maintenance.example.toml"


@pytest.mark.parametrize(
    ("raw", "key", "words"),
    [
        ({"redis": {"brokr_url": "redis://x"}}, "redis.brokr_url", "unknown key"),
        ({"reddis": {}}, "reddis", "unknown section"),
        ({"redis": "redis://x"}, "redis", "must be a table"),
        ({"redis": {"max_connections": "50"}}, "redis.max_connections", "must be an integer"),
        ({"redis": {"max_connections": 5.5}}, "redis.max_connections", "must be an integer"),
        ({"redis": {"max_connections": True}}, "redis.max_connections", "must be an integer"),
        ({"redis": {"retry_on_timeout": 1}}, "redis.retry_on_timeout", "must be a boolean"),
        ({"redis": {"transport_options": []}}, "redis.transport_options", "must be a table"),
        ({"redis": {"max_connections": 0}}, "redis.max_connections", "greater than 0"),
        ({"redis": {"chunk_size": -1}}, "redis.chunk_size", "greater than 0"),
        ({"database": {"batch_size": 0}}, "database.batch_size", "greater than 0"),
        ({"database": {"url": 5}}, "database.url", "must be a string"),
        ({"scan": {"queues": "celery"}}, "scan.queues", "list of strings"),
        ({"scan": {"queues": ["a", 1]}}, "scan.queues", "list of strings"),
        ({"scan": {"queues": []}}, "scan.queues", "at least one queue"),
        ({"scan": {"result_retention_h": "1d"}}, "scan.result_retention_h", "must be a number"),
        ({"tasks": {"active_statuses": []}}, "tasks.active_statuses", "at least one status"),
        ({"cleanup": {"stuck_action": "delete"}}, "cleanup.stuck_action", "must be one of"),
        ({"cleanup": {"max_orphan_ratio": 0}}, "cleanup.max_orphan_ratio", "(0, 1]"),
        ({"schedule": {"soft_time_limit_s": 3600}}, "schedule.soft_time_limit_s", "lower"),
        ({"bindings": {"task": "x", "id_from": "task_id"}}, "bindings", "array of tables"),
        ({"bindings": ["demo.x"]}, "bindings[0]", "must be a table"),
        ({"bindings": [BINDING, {"task": "x", "id_from": "args[a]"}]}, "bindings[1]", "id_from"),
        ({"bindings": [{**BINDING, "kind": "sub_task"}]}, "bindings[0].kind", "[sub_tasks]"),
    ],
)
def test_bad_value_names_the_key_and_the_source(raw: dict[str, Any], key: str, words: str) -> None:
    """Every validation error names the offending key and the file it came from."""
    with pytest.raises(ConfigError) as caught:
        settings_from_mapping(raw, source="/etc/tm.toml")
    assert caught.value.key == key
    assert caught.value.source == "/etc/tm.toml"
    message = str(caught.value)
    assert words in message
    assert f"key '{key}'" in message and "/etc/tm.toml" in message
    assert "\n" not in message


def test_defaults_follow_the_seed() -> None:
    """An empty document gives the seed's pool settings and the 24 h thresholds."""
    settings = settings_from_mapping({})
    assert settings.redis.max_connections == 50
    assert settings.redis.retry_on_timeout is True
    assert settings.scan.result_retention_h == 24.0
    assert settings.scan.stuck_after_h == 24.0
    assert settings.bindings == ()
    assert not settings.sub_tasks.enabled


def test_values_are_typed_and_frozen() -> None:
    """Integers are accepted for floats, lists become tuples, bindings are parsed."""
    settings = settings_from_mapping(
        {
            "scan": {"queues": ["a", "b"], "inspect_timeout_s": 3},
            "sub_tasks": SUB_TASKS,
            "bindings": [BINDING, {"task": "seg", "id_from": "kwargs.sid", "kind": "sub_task"}],
        }
    )
    assert settings.scan.queues == ("a", "b")
    assert settings.scan.inspect_timeout_s == 3.0
    assert isinstance(settings.scan.inspect_timeout_s, float)
    assert settings.bindings == (
        Binding("demo.*", "args[0]"),
        Binding("seg", "kwargs.sid", "sub_task"),
    )
    with pytest.raises(AttributeError):
        settings.scan.queues = ("c",)  # type: ignore[misc]  # frozen: the assignment must fail


@pytest.mark.parametrize(
    ("env", "section", "key", "expected"),
    [
        ({"REDIS_URL": "redis://env:1/0"}, "redis", "broker_url", "redis://env:1/0"),
        ({"RESULT_BACKEND_URL": "redis://res/1"}, "redis", "result_backend_url", "redis://res/1"),
        ({"DATABASE_URL": "postgresql://u@h/db"}, "database", "url", "postgresql://u@h/db"),
        ({"REDIS_URL": ""}, "redis", "broker_url", "redis://file/0"),
        ({}, "database", "url", "sqlite:///file.db"),
    ],
)
def test_environment_overrides_the_urls(
    env: dict[str, str], section: str, key: str, expected: str
) -> None:
    """REDIS_URL, RESULT_BACKEND_URL and DATABASE_URL replace the file's URLs when set."""
    raw = {"redis": {"broker_url": "redis://file/0"}, "database": {"url": "sqlite:///file.db"}}
    settings = settings_from_mapping(raw, env=env)
    assert getattr(getattr(settings, section), key) == expected


def test_result_url_defaults_to_the_broker() -> None:
    """Without a result backend URL, results are read from the broker's Redis."""
    settings = settings_from_mapping({"redis": {"broker_url": "redis://b/2"}})
    assert settings.redis.results_url == "redis://b/2"


@pytest.mark.parametrize(
    ("cli", "env", "expected"),
    [
        ("given.toml", {CONFIG_ENV: "env.toml"}, Path("given.toml")),
        (None, {CONFIG_ENV: "env.toml"}, Path("env.toml")),
        (None, {}, DEFAULT_CONFIG_PATH),
    ],
)
def test_config_path_resolution(cli: str | None, env: dict[str, str], expected: Path) -> None:
    """`--config`, else $MAINTENANCE_CONFIG, else config/maintenance.toml."""
    assert resolve_config_path(cli, env) == expected


def test_missing_file_is_a_config_error(tmp_path: Path) -> None:
    """A missing file is reported with its path, not as a traceback."""
    path = tmp_path / "absent.toml"
    with pytest.raises(ConfigError) as caught:
        load_settings(path, env={})
    assert str(path) in str(caught.value)
    assert "not found" in str(caught.value)


def test_invalid_toml_is_a_config_error(tmp_path: Path) -> None:
    """A syntax error names the file and the TOML parser's position."""
    path = tmp_path / "bad.toml"
    path.write_text("[redis]\nbroker_url = \n")
    with pytest.raises(ConfigError) as caught:
        load_settings(path, env={})
    assert "not valid TOML" in str(caught.value)
    assert "line 2" in str(caught.value)
    assert str(path) in str(caught.value)


def test_file_is_read_and_env_applied(tmp_path: Path) -> None:
    """load_settings reads the file and applies the environment passed to it, not os.environ."""
    path = tmp_path / "ok.toml"
    path.write_text('[redis]\nbroker_url = "redis://file/0"\n[scan]\nqueues = ["q"]\n')
    settings = load_settings(path, env={"DATABASE_URL": "sqlite:///env.db"})
    assert settings.source == str(path)
    assert settings.redis.broker_url == "redis://file/0"
    assert settings.database.url == "sqlite:///env.db"
    assert settings.scan.queues == ("q",)


def test_repr_hides_passwords() -> None:
    """Printing the settings never shows a URL password."""
    settings = settings_from_mapping(
        {
            "redis": {
                "broker_url": "redis://:brokerpw@h/0",
                "result_backend_url": "redis://:resultpw@h/1",
                "transport_options": {"sentinel_kwargs": {"password": "sentinelpw"}},
            },
            "database": {"url": "postgresql://app:dbpw@db/app"},
        }
    )
    text = repr(settings)
    for secret in ("brokerpw", "resultpw", "sentinelpw", "dbpw"):
        assert secret not in text
    assert "redis://:***@h/0" in text
    assert "postgresql://app:***@db/app" in text


# -- the example config -------------------------------------------------------------------------
def test_example_config_loads() -> None:
    """The example is a valid config as it stands."""
    settings = load_settings(EXAMPLE, env={})
    assert settings.redis.max_connections == 50
    assert settings.redis.retry_on_timeout is True


def test_example_config_names_every_key_with_its_default() -> None:
    """Each field of each section appears in the example with the dataclass default."""
    doc = tomllib.loads(EXAMPLE.read_text())
    for section, cls in _SECTIONS.items():
        assert section in doc, f"[{section}] missing from the example"
        defaults = cls()
        for f in dataclasses.fields(cls):
            assert f.name in doc[section], f"{section}.{f.name} missing from the example"
            value = doc[section][f.name]
            expected = getattr(defaults, f.name)
            if isinstance(expected, tuple):
                value = tuple(value)
            assert value == expected, f"{section}.{f.name}: example {value!r} != {expected!r}"
