"""One check of an http(s) URL, for every place that takes one: upstream base URLs (settings),
the operator commands' ``--url`` and image URLs a vendor fetches."""

from __future__ import annotations

from urllib.parse import urlsplit


def http_url_problem(value: str) -> str | None:
    """What keeps ``value`` from being an http(s) URL a client can reach (None: nothing): another
    scheme, no host (``https://:443/``, ``http://@/``), a port that is no port number, a bracketed
    host that is no IPv6 address, a blank in the host."""
    try:
        parts = urlsplit(value)
        _ = parts.port  # raises on a port that is no number or out of range
    except ValueError as exc:
        return f"is not a valid http(s) URL ({exc})"
    if parts.scheme.lower() not in ("http", "https"):
        return "is not an http(s) URL"
    if not parts.hostname:
        return "is an http(s) URL without a host"
    if any(c.isspace() for c in parts.netloc):
        return "is an http(s) URL with a blank in its host"
    return None
