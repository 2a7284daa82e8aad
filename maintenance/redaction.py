"""Hide passwords in URLs before they reach a log line, an error message or a repr."""

from __future__ import annotations

import re
from collections.abc import MutableMapping
from typing import Any
from urllib.parse import urlsplit, urlunsplit

_URL_IN_TEXT = re.compile(
    r"(?P<scheme>[a-zA-Z][a-zA-Z0-9+.\-]*://)(?P<user>[^:@/\s]*):(?P<pw>[^@/\s]+)@"
)


def redact_url(url: str) -> str:
    """`redis://:secret@host/0` -> `redis://:***@host/0`; URLs without a password are unchanged."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return redact_text(url)
    if parts.password is None:
        # A sentinel URL's first host may have none and the next ones one:
        # `sentinel://h1:26379;sentinel://:pw@h2:26379` (urlsplit sees only the first).
        return redact_text(url)
    userinfo = f"{parts.username or ''}:***"
    host = parts.netloc.rsplit("@", 1)[1]
    # Sentinel URLs list several `scheme://user:pw@host` in one string: redact the rest too.
    return redact_text(urlunsplit(parts._replace(netloc=f"{userinfo}@{host}")))


def redact_text(text: str) -> str:
    """Redact every `scheme://user:password@` found anywhere in free text."""
    return _URL_IN_TEXT.sub(lambda m: f"{m['scheme']}{m['user']}:***@", text)


def redact_event(_: Any, __: str, event_dict: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """structlog processor: redact URL passwords in every string value of a log event."""
    for key, value in event_dict.items():
        if isinstance(value, str) and "://" in value:
            event_dict[key] = redact_text(value)
    return event_dict
