"""The example config documents every key, with the real defaults, and loads."""

from __future__ import annotations

import dataclasses
import tomllib

from maintenance.config import _SECTIONS, load_settings
from tests.conftest import ROOT

EXAMPLE = ROOT / "config" / "maintenance.example.toml"


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
