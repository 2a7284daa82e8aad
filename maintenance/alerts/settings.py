"""The `[alerts]` config section: when to alert, and through which channels.

Kept beside the alerts rather than in `config.py`; the generic loader validates types, and
`check_alert_settings` the rules a type cannot say. Secrets are never in the file: the file names
the environment variables that hold them, read when an alert is sent.
"""

from __future__ import annotations

from dataclasses import dataclass

from maintenance.errors import ConfigError


@dataclass(frozen=True)
class AlertSettings:
    min_orphans: int = 1  # alert when a scan finds at least this many orphans; 0: never
    min_lost: int = 1  # same for lost rows; 0: never
    on_failure: bool = True  # alert when a maintenance run fails
    on_breaker: bool = True  # alert when the circuit breaker refuses a plan
    webhook_url: str = ""  # empty: no webhook
    webhook_timeout_s: float = 5.0  # per attempt
    webhook_retries: int = 2  # further attempts after a failed one (5xx, 429, network)
    webhook_secret_env: str = ""  # env var holding the HMAC secret; empty: unsigned
    smtp_host: str = ""  # empty: no e-mail
    smtp_port: int = 25
    smtp_starttls: bool = False
    smtp_username: str = ""  # empty: no login
    smtp_password_env: str = ""  # env var holding the SMTP password
    smtp_timeout_s: float = 10.0  # per attempt
    smtp_retries: int = 1
    mail_from: str = ""
    mail_to: tuple[str, ...] = ()
    retry_backoff_s: float = 1.0  # wait before a first retry (webhook or mail); doubles each time

    @property
    def webhook_enabled(self) -> bool:
        return bool(self.webhook_url)

    @property
    def mail_enabled(self) -> bool:
        return bool(self.smtp_host)

    def __repr__(self) -> str:
        return (
            f"AlertSettings(webhook={'on' if self.webhook_enabled else 'off'}, "
            f"mail={'on' if self.mail_enabled else 'off'}, min_orphans={self.min_orphans})"
        )


def check_alert_settings(alerts: AlertSettings, source: str) -> None:
    """Cross-field rules: a channel that is switched on must be complete."""

    def fail(message: str, key: str) -> None:
        raise ConfigError(message, key=f"alerts.{key}", source=source)

    for key in ("min_orphans", "min_lost", "webhook_retries", "smtp_retries", "smtp_port"):
        if getattr(alerts, key) < 0:
            fail("must not be negative", key)
    for key in ("webhook_timeout_s", "smtp_timeout_s"):
        if getattr(alerts, key) <= 0:
            fail("must be greater than 0", key)
    if alerts.retry_backoff_s < 0:
        fail("must not be negative", "retry_backoff_s")
    if alerts.webhook_url and not alerts.webhook_url.startswith(("http://", "https://")):
        fail("must be an http:// or https:// URL", "webhook_url")
    if alerts.smtp_host and not (alerts.mail_from and alerts.mail_to):
        fail("e-mail alerts need mail_from and at least one address in mail_to", "smtp_host")
    if alerts.smtp_password_env and not alerts.smtp_username:
        fail("a password needs smtp_username", "smtp_password_env")
