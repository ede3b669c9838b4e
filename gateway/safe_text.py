"""Text from outside (a client's tenant id, a model name an upstream answered with) made safe for
the two places where a line break would be an injection: a response header and a log line.

Both keep an ordinary value as it is (one C-level check), so the documented formats stay:
``x-llm-model: gpt-4o``, ``Cost | tenant=tenant_123 provider=openai model=gpt-4 cost=$0.000150``.
"""

from __future__ import annotations

import json
import re
from urllib.parse import urlsplit

#: longest header value the gateway sends from text it did not write itself
MAX_HEADER_TEXT = 256


def header_value(text: str) -> str:
    """``text`` for a response header: every non-printable character (line breaks, NUL, ...)
    replaced by ``?``, at most :data:`MAX_HEADER_TEXT` characters."""
    if not text.isprintable():
        text = "".join(c if c.isprintable() else "?" for c in text)
    return text if len(text) <= MAX_HEADER_TEXT else text[:MAX_HEADER_TEXT]


def log_value(text: str) -> str:
    """``text`` as one ``key=value`` field of a log line: as it is when it is one printable word
    without ``=`` or ``"``, else JSON-quoted (``tenant="acme corp"``, ``model="a\\nb"``), so no
    value can end the line or pass for another field."""
    if text and text.isprintable() and " " not in text and "=" not in text and '"' not in text:
        return text
    return json.dumps(text, ensure_ascii=False) if text.isprintable() else json.dumps(text)


#: credentials an upstream may echo in an error message (a key sent in the wrong header, a proxy
#: quoting the request): API keys with a known prefix, bearer tokens, key parameters
_SECRETS = re.compile(
    r"(?P<keep>\b(?:sk|pk|rk)-(?:ant-|proj-|svcacct-)?|\bAIza|\b(?:Bearer|Basic)\s+"
    r"|\b(?:api[_-]?key|x-api-key|key|token|secret|password)[\"']?\s*[:=]\s*[\"']?)"
    r"(?P<secret>[A-Za-z0-9_\-.~+/]{8,}=*)",
    re.IGNORECASE,
)


#: the credentials the gateway holds (its providers' keys, its own API keys): redacted wherever
#: they appear, whatever their shape (an Azure key is 32 hex digits, no prefix: a review saw it
#: come back whole from a vendor's 401 to a tenant's client and into the stores)
_KNOWN: list[str] = []  # longest first: a key holding another is redacted whole
#: the shortest credential redacted as such (shorter values would redact ordinary words)
MIN_SECRET = 8


def register_secret(value: str | None) -> None:
    """Redact ``value`` from every error text from now on (at start, for each configured key)."""
    if value and len(value.strip()) >= MIN_SECRET and value.strip() not in _KNOWN:
        _KNOWN.append(value.strip())
        _KNOWN.sort(key=len, reverse=True)


def url_password(url: str | None) -> str | None:
    """The password of a URL's user info (``https://user:pw@host``), a credential to redact."""
    try:
        return urlsplit(url).password if url else None
    except ValueError:
        return None


def redact_secrets(text: str) -> str:
    """``text`` with the gateway's own credentials and what looks like a credential replaced by
    ``***`` (the prefix of a known kind kept, so the message still says which kind): an
    upstream's error text reaches the client and the usage event, and a review saw
    ``Bearer sk-...`` come back whole in a 400."""
    for secret in _KNOWN:
        if secret in text:
            text = text.replace(secret, "***")
    if "-" not in text and "AIza" not in text and "=" not in text and ":" not in text and "earer" not in text:
        return text
    return _SECRETS.sub(lambda m: m.group("keep") + "***", text)
