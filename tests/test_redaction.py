"""Redaction: URL passwords never reach a log line, an error message or a repr."""

from __future__ import annotations

import pytest
import structlog

from maintenance.redaction import redact_event, redact_text, redact_url


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("redis://:secret@host:6379/0", "redis://:***@host:6379/0"),
        (
            "rediss://user:secret@host/1?ssl_cert_reqs=required",
            "rediss://user:***@host/1?ssl_cert_reqs=required",
        ),
        (
            "postgresql+psycopg2://app:s3cr%40t@db:5432/app",
            "postgresql+psycopg2://app:***@db:5432/app",
        ),
        (
            "mysql+pymysql://app:s3cr%2Ft@db:3306/app?charset=utf8mb4",
            "mysql+pymysql://app:***@db:3306/app?charset=utf8mb4",
        ),
        ("unix://:secret@/run/redis.sock?db=2", "unix://:***@/run/redis.sock?db=2"),
        (
            "sentinel://:pw1@h1:26379;sentinel://:pw2@h2:26379/0",
            "sentinel://:***@h1:26379;sentinel://:***@h2:26379/0",
        ),
        (  # kombu takes the password from the first host; every host's is hidden all the same
            "sentinel://:pw@h1:1/0;sentinel://:pw@h2:2/0;sentinel://:pw@h3:3/0",
            "sentinel://:***@h1:1/0;sentinel://:***@h2:2/0;sentinel://:***@h3:3/0",
        ),
        (  # the first host without one: urlsplit sees no password, the later hosts have one
            "sentinel://h1:26379;sentinel://user:pw@h2:26379",
            "sentinel://h1:26379;sentinel://user:***@h2:26379",
        ),
        ("sentinel://h1:26379;sentinel://h2:26379/1", "sentinel://h1:26379;sentinel://h2:26379/1"),
        (
            "rediss://:pw@127.0.0.1:6380/0?ssl_cert_reqs=required&ssl_ca_certs=/etc/ca.pem",
            "rediss://:***@127.0.0.1:6380/0?ssl_cert_reqs=required&ssl_ca_certs=/etc/ca.pem",
        ),
        ("redis://host:6379/0", "redis://host:6379/0"),
        ("redis://user@host/0", "redis://user@host/0"),
        ("sqlite:///tmp/x.db", "sqlite:///tmp/x.db"),
        ("", ""),
    ],
)
def test_redact_url(url: str, expected: str) -> None:
    """The password part of every URL is replaced by ***; everything else is kept."""
    assert redact_url(url) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("connect to redis://:pw@h:1/0 failed", "connect to redis://:***@h:1/0 failed"),
        (
            "broker sentinel://:pw@h1:1;sentinel://:pw@h2:2/0 down",
            "broker sentinel://:***@h1:1;sentinel://:***@h2:2/0 down",
        ),
        (
            "a=postgresql://u:p@db/x b=redis://:q@r/0",
            "a=postgresql://u:***@db/x b=redis://:***@r/0",
        ),
        (
            "Error 111 connecting to 127.0.0.1:6379. Connection refused.",
            "Error 111 connecting to 127.0.0.1:6379. Connection refused.",
        ),
        (
            "redis://h:6379/0 and http://example.com:80/x",
            "redis://h:6379/0 and http://example.com:80/x",
        ),
    ],
)
def test_redact_text(text: str, expected: str) -> None:
    """Passwords are redacted anywhere in free text; host:port pairs are not mistaken for them."""
    assert redact_text(text) == expected


def test_redact_event_covers_every_string_value() -> None:
    """The structlog processor redacts URLs in the event and in every string field."""
    event = {
        "event": "connecting to redis://:pw@h/0",
        "url": "postgresql://u:dbpw@d/x",
        "count": 3,
        "other": "plain",
    }
    out = redact_event(None, "info", event)
    assert out == {
        "event": "connecting to redis://:***@h/0",
        "url": "postgresql://u:***@d/x",
        "count": 3,
        "other": "plain",
    }


def test_redaction_applies_to_real_log_output() -> None:
    """A log call through structlog with the processor in the chain never shows the password."""
    with structlog.testing.capture_logs(processors=[redact_event]) as logs:
        structlog.get_logger("t").warning("broker down", url="redis://:hunter2@h/0")
    assert logs[0]["url"] == "redis://:***@h/0"
    assert "hunter2" not in repr(logs)
