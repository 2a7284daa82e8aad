"""Where alerts go: `AlertSink.notify` sends one event to every configured channel.

`maybe_alert` is the one call a maintenance run makes after it ends (cleanup, the scheduled scan,
`monitor --scan`): it decides, sends, and returns what was delivered. It never raises and is
bounded by the channels' timeouts and retries, so an alert can never fail or hang the run.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import structlog

from maintenance.alerts.delivery import post_webhook, send_mail
from maintenance.alerts.events import AlertEvent, Trigger, decide, mail_text, webhook_body
from maintenance.alerts.settings import AlertSettings
from maintenance.core.report import ScanReport
from maintenance.core.summary import ScanSummary

if TYPE_CHECKING:
    from maintenance.config import Settings

log = structlog.get_logger(__name__)
Delivery = dict[str, bool]  # channel ("webhook", "mail") -> delivered


class AlertSink:
    def __init__(self, alerts: AlertSettings, env: Mapping[str, str] | None = None):
        self.alerts = alerts
        self.env = os.environ if env is None else env
        self.host = socket.gethostname()

    @property
    def channels(self) -> list[str]:
        return [
            name
            for name, on in (
                ("webhook", self.alerts.webhook_enabled),
                ("mail", self.alerts.mail_enabled),
            )
            if on
        ]

    def notify(self, event: AlertEvent, summary: Mapping[str, Any] | None = None) -> Delivery:
        """Send to every channel; one failing channel does not stop the others."""
        if summary is not None:
            event = AlertEvent(event.triggers, event.reasons, event.outcome, dict(summary))
        delivered: Delivery = {}
        try:
            if self.alerts.webhook_enabled:
                body = webhook_body(event, self.host, time.time())
                delivered["webhook"] = post_webhook(
                    self.alerts, body, self._secret(self.alerts.webhook_secret_env)
                )
            if self.alerts.mail_enabled:
                subject, text = mail_text(event, self.host)
                delivered["mail"] = send_mail(
                    self.alerts, subject, text, self._secret(self.alerts.smtp_password_env)
                )
        except Exception as exc:  # last line of defence: alerts never raise
            log.error("alerting failed", error=f"{type(exc).__name__}: {exc}")
            delivered.setdefault("error", False)
        log.info("alert sent", triggers=[t.value for t in event.triggers], delivered=delivered)
        return delivered

    def _secret(self, env_name: str) -> str | None:
        if not env_name:
            return None
        value = self.env.get(env_name)
        if not value:
            log.warning("alert secret not set in the environment", variable=env_name)
        return value or None


def summary_of(result: Any) -> dict[str, Any]:
    """A ScanReport, a ScanSummary or a run's summary mapping, as a plain JSON-able dict."""
    if isinstance(result, ScanReport):
        return ScanSummary.from_report(result, source="run").as_dict()
    if isinstance(result, ScanSummary):
        return result.as_dict()
    if isinstance(result, Mapping):
        return dict(result)
    return {}


def maybe_alert(
    settings: Settings, result: Any, outcome: str = "ok", *, env: Mapping[str, str] | None = None
) -> Delivery | None:
    """Alert if thresholds or the outcome say so; None when nothing fired. Never raises.

    `result` is a ScanReport, a ScanSummary, or a mapping with at least `counts`
    (e.g. a cleanup run's summary); `outcome` is the run's: ok, partial, failed, refused.
    """
    try:
        alerts = settings.alerts
        summary = summary_of(result)
        counts = summary.get("counts") or {}
        event = decide(alerts, counts if isinstance(counts, Mapping) else {}, outcome)
        if event is None:
            return None
        sink = AlertSink(alerts, env)
        if not sink.channels:
            log.info("alert not sent: no channel configured", reasons=list(event.reasons))
            return {}
        return sink.notify(event, summary)
    except Exception as exc:  # a run must never fail because of its alert
        log.error("alerting failed", error=f"{type(exc).__name__}: {exc}")
        return {"error": False}


def send_test(alerts: AlertSettings, env: Mapping[str, str] | None = None) -> Delivery:
    """What `task-cleanup notify --test` sends: a harmless event through every channel."""
    event = AlertEvent((Trigger.TEST,), ("test alert from task-cleanup notify --test",), "test")
    summary = {"counts": {}, "notes": ["This is a test: nothing is wrong."]}
    return AlertSink(alerts, env).notify(event, summary)
