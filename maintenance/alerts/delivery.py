"""Deliver one alert over HTTP (webhook) or SMTP (e-mail), with bounded retries and timeouts.

A notification must never fail or hang a maintenance run: every attempt has a timeout, retries are
few and spaced by a doubling backoff, and every failure ends as a log line and a False result.
"""

from __future__ import annotations

import hashlib
import hmac
import smtplib
import ssl
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from email.message import EmailMessage
from urllib.parse import urlsplit

import structlog

from maintenance.alerts.settings import AlertSettings

log = structlog.get_logger(__name__)
SIGNATURE_HEADER = "X-Task-Maintenance-Signature"
MAX_BACKOFF_S = 30.0


class Permanent(Exception):
    """A failure that retrying cannot fix (a 4xx answer, a refused login)."""


def sign(body: bytes, secret: str) -> str:
    """GitHub-style: `sha256=<hex HMAC-SHA256 of the exact body>`."""
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def with_retries(
    channel: str,
    attempt: Callable[[], None],
    retries: int,
    backoff_s: float,
    sleep: Callable[[float], None] = time.sleep,
) -> bool:
    """True once an attempt succeeds; False (logged) after a permanent error or the last retry."""
    for number in range(retries + 1):
        try:
            attempt()
            return True
        except Permanent as exc:
            log.warning("alert not delivered", channel=channel, error=str(exc), retry=False)
            return False
        except Exception as exc:  # a notification never raises into a run
            last = number == retries
            log.warning(
                "alert attempt failed",
                channel=channel,
                attempt=number + 1,
                error=f"{type(exc).__name__}: {exc}",
                retry=not last,
            )
            if not last:
                sleep(min(backoff_s * 2**number, MAX_BACKOFF_S))
    return False


def post_webhook(alerts: AlertSettings, body: bytes, secret: str | None) -> bool:
    headers = {"Content-Type": "application/json", "User-Agent": "task-maintenance"}
    if secret:
        headers[SIGNATURE_HEADER] = sign(body, secret)

    def attempt() -> None:
        request = urllib.request.Request(
            alerts.webhook_url, data=body, headers=headers, method="POST"
        )
        try:
            with urllib.request.urlopen(request, timeout=alerts.webhook_timeout_s) as response:
                response.read(1024)
        except urllib.error.HTTPError as exc:
            if exc.code == 429 or exc.code >= 500:
                raise RuntimeError(f"HTTP {exc.code}") from None
            raise Permanent(f"HTTP {exc.code} {exc.reason}") from None

    delivered = with_retries("webhook", attempt, alerts.webhook_retries, alerts.retry_backoff_s)
    log.info("alert webhook", delivered=delivered, host=urlsplit(alerts.webhook_url).netloc)
    return delivered


def send_mail(alerts: AlertSettings, subject: str, body: str, password: str | None) -> bool:
    message = EmailMessage()
    message["Subject"] = subject
    message["From"] = alerts.mail_from
    message["To"] = ", ".join(alerts.mail_to)
    message.set_content(body)

    def attempt() -> None:
        try:
            with smtplib.SMTP(
                alerts.smtp_host, alerts.smtp_port, timeout=alerts.smtp_timeout_s
            ) as smtp:
                smtp.ehlo()
                if alerts.smtp_starttls:
                    smtp.starttls(context=ssl.create_default_context())
                    smtp.ehlo()
                if alerts.smtp_username:
                    smtp.login(alerts.smtp_username, password or "")
                smtp.send_message(message)
        except (
            smtplib.SMTPAuthenticationError,
            smtplib.SMTPRecipientsRefused,
            smtplib.SMTPSenderRefused,
            smtplib.SMTPNotSupportedError,
        ) as exc:
            raise Permanent(f"{type(exc).__name__}: {exc}") from None

    delivered = with_retries("mail", attempt, alerts.smtp_retries, alerts.retry_backoff_s)
    log.info("alert mail", delivered=delivered, to=len(alerts.mail_to))
    return delivered
