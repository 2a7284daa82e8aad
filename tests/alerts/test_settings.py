"""The [alerts] section: a channel switched on but incomplete is a config error naming its key."""

from __future__ import annotations

from typing import Any

import pytest

from maintenance.alerts.settings import AlertSettings, check_alert_settings
from maintenance.errors import ConfigError


@pytest.mark.parametrize(
    ("values", "key"),
    [
        ({"webhook_url": "ftp://x"}, "alerts.webhook_url"),
        ({"smtp_host": "mail"}, "alerts.smtp_host"),
        ({"webhook_retries": -1}, "alerts.webhook_retries"),
        ({"webhook_timeout_s": 0.0}, "alerts.webhook_timeout_s"),
        ({"smtp_password_env": "PW"}, "alerts.smtp_password_env"),
    ],
)
def test_incomplete_channels_are_config_errors(values: dict[str, Any], key: str) -> None:
    """A channel switched on but incomplete names its key."""
    with pytest.raises(ConfigError) as caught:
        check_alert_settings(AlertSettings(**values), "x.toml")
    assert caught.value.key == key
