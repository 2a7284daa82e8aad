"""Alerts delivered to a real HTTP server and a real SMTP server on loopback."""

from __future__ import annotations

import hashlib
import hmac
import json
import time
from email import message_from_bytes
from pathlib import Path

from maintenance.alerts import maybe_alert
from maintenance.alerts.delivery import SIGNATURE_HEADER
from maintenance.config import load_settings
from tests.alert_servers import Hook, Inbox, hook_fixture, smtp_fixture  # noqa: F401  # fixtures, used by name
from tests.conftest import run_cli
from tests.servers import free_port


def config(tmp_path: Path, alerts: str) -> Path:
    path = tmp_path / "alerts.toml"
    path.write_text(f'[logging]\ndir = "{tmp_path / "logs"}"\n\n[alerts]\n{alerts}\n')
    return path


def test_webhook_is_signed_and_retried_after_a_500(tmp_path: Path, hook: Hook) -> None:
    """A 500 is retried; the delivered body carries the summary and a valid HMAC signature."""
    hook.statuses = [500]
    settings = load_settings(
        config(
            tmp_path,
            f"""
webhook_url = "{hook.url}"
webhook_secret_env = "TM_HOOK_SECRET"
retry_backoff_s = 0.05
min_orphans = 2
""",
        ),
        env={},
    )
    summary = {"counts": {"orphan": 3, "lost": 0}, "top_findings": [{"task_id": "cid-9"}]}
    delivered = maybe_alert(settings, summary, "ok", env={"TM_HOOK_SECRET": "k3y"})
    assert delivered == {"webhook": True}
    assert len(hook.requests) == 2 and hook.requests[0][1] == hook.requests[1][1]
    headers, body = hook.requests[-1]
    expected = "sha256=" + hmac.new(b"k3y", body, hashlib.sha256).hexdigest()
    assert headers[SIGNATURE_HEADER] == expected
    doc = json.loads(body)
    assert doc["event"] == ["orphans"] and doc["summary"]["counts"]["orphan"] == 3
    assert doc["top_findings"] == [{"task_id": "cid-9"}]


def test_below_threshold_sends_nothing(tmp_path: Path, hook: Hook) -> None:
    """No trigger fires, so no request is made."""
    settings = load_settings(
        config(tmp_path, f'webhook_url = "{hook.url}"\nmin_orphans = 5'), env={}
    )
    assert maybe_alert(settings, {"counts": {"orphan": 4}}, "ok") is None
    assert hook.requests == []


def test_a_dead_endpoint_is_bounded_and_never_raises(tmp_path: Path) -> None:
    """Connection refused on every attempt: False after the retries, quickly, no exception."""
    settings = load_settings(
        config(
            tmp_path,
            f"""
webhook_url = "http://127.0.0.1:{free_port()}/x"
webhook_retries = 2
retry_backoff_s = 0.05
webhook_timeout_s = 1.0
""",
        ),
        env={},
    )
    started = time.monotonic()
    assert maybe_alert(settings, {"counts": {}}, "failed") == {"webhook": False}
    assert time.monotonic() - started < 5


def test_a_4xx_is_not_retried(tmp_path: Path, hook: Hook) -> None:
    """A client error cannot be fixed by retrying: one request only."""
    hook.statuses = [404]
    settings = load_settings(config(tmp_path, f'webhook_url = "{hook.url}"'), env={})
    assert maybe_alert(settings, {"counts": {}}, "refused") == {"webhook": False}
    assert len(hook.requests) == 1


def test_mail_is_delivered_with_login(tmp_path: Path, smtp: tuple[Inbox, int]) -> None:
    """A failed run is mailed in plain text, logging in with the password from the env."""
    inbox, port = smtp
    settings = load_settings(
        config(
            tmp_path,
            f"""
smtp_host = "127.0.0.1"
smtp_port = {port}
smtp_username = "alerts"
smtp_password_env = "TM_SMTP_PASSWORD"
mail_from = "maintenance@example.org"
mail_to = ["ops@example.org", "oncall@example.org"]
""",
        ),
        env={},
    )
    delivered = maybe_alert(
        settings, {"counts": {"orphan": 0}}, "failed", env={"TM_SMTP_PASSWORD": "s3cret"}
    )
    assert delivered == {"mail": True}
    ((sender, recipients, content),) = inbox.messages
    assert sender == "maintenance@example.org"
    assert recipients == ["ops@example.org", "oncall@example.org"]
    mail = message_from_bytes(content)
    assert mail["Subject"] == "[task-maintenance] a maintenance run failed"
    assert "outcome: failed" in mail.get_payload()


def test_notify_test_reaches_both_channels(
    tmp_path: Path, hook: Hook, smtp: tuple[Inbox, int]
) -> None:
    """`task-cleanup notify --test` posts the webhook and sends the mail, exit 0."""
    inbox, port = smtp
    path = config(
        tmp_path,
        f"""
webhook_url = "{hook.url}"
smtp_host = "127.0.0.1"
smtp_port = {port}
mail_from = "maintenance@example.org"
mail_to = ["ops@example.org"]
""",
    )
    result = run_cli("--config", str(path), "notify", "--test")
    assert result.returncode == 0, result.stderr
    assert "webhook: delivered" in result.stdout and "mail: delivered" in result.stdout
    assert json.loads(hook.requests[0][1])["event"] == ["test"]
    assert len(inbox.messages) == 1


def test_notify_test_without_channels_is_a_usage_error(tmp_path: Path) -> None:
    """Nothing configured: exit 2 and a message naming the config file."""
    result = run_cli("--config", str(config(tmp_path, "min_orphans = 1")), "notify", "--test")
    assert result.returncode == 2 and "no alert channel configured" in result.stderr
