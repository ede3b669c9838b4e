"""What keeps a web page from driving an open gateway (no API keys: local use) through its
visitor's browser.

A keyless gateway bound to 127.0.0.1 is out of reach of other machines, not of the browser on
the same one: a page of any site can POST to ``http://127.0.0.1:8080`` (a ``text/plain`` body is
a "simple" request, sent without a CORS preflight), and a site whose name it re-points at
127.0.0.1 (DNS rebinding) can read the answers as its own. A review spent money for a tenant of
the page's choosing, ran SQL and started a replay that way. So an open gateway refuses:

- a request whose ``Origin`` (browsers send it on every cross-origin request, and on every POST)
  is not a loopback origin (``http://localhost:3000``, ``http://127.0.0.1:5173`` pass: a local
  tool's page), or whose ``Sec-Fetch-Site`` says ``cross-site``;
- when it listens on loopback only, a request whose ``Host`` is not a loopback name or address
  (a rebound name): SDKs, curl and local tools send ``127.0.0.1:8080`` or ``localhost:8080``.

Clients that are not browsers send no ``Origin``. With API keys, none of this applies: a page
has no key to send, and browsers add no ``Authorization`` header of their own.
"""

from __future__ import annotations

import ipaddress
from functools import lru_cache
from urllib.parse import urlsplit

from aiohttp import web

from gateway.errors import PermissionDenied

_HINT = "configure api_keys for a gateway browsers may call, or call it from a page served on localhost"


def refuse_browser_cross_site(request: web.Request, *, loopback: bool) -> None:
    """Raise :class:`PermissionDenied` for a request an open gateway must not take (see above)."""
    headers = request.headers
    origin = headers.get("origin")
    if origin is not None and not _loopback_origin(origin):
        raise PermissionDenied(
            f"A page of another site ({origin[:100]!r}) may not call a gateway without API keys: {_HINT}",
            code="cross_site_refused",
        )
    if headers.get("sec-fetch-site") == "cross-site":
        raise PermissionDenied(f"A cross-site browser request may not call a gateway without API keys: {_HINT}",
                               code="cross_site_refused")  # fmt: skip
    # no Host at all (HTTP/1.0, an in-process call): no browser sent it
    if loopback and (host := headers.get("host")) and not is_loopback_host(host):
        raise PermissionDenied(
            f"This gateway listens on loopback and takes requests for a loopback host, not {host[:100]!r} "
            f"(a name pointed at this machine from a web page; a reverse proxy in front: have it send "
            f"'Host: 127.0.0.1'): {_HINT}",
            code="cross_site_refused",
        )


def _loopback_origin(origin: str) -> bool:
    try:
        parts = urlsplit(origin.strip())
        host = parts.hostname
    except ValueError:
        return False
    return parts.scheme in ("http", "https") and host is not None and _loopback_name(host)


@lru_cache(maxsize=256)  # a request's Host, parsed (2 µs) once per distinct one
def is_loopback_host(host: str) -> bool:
    """Whether a ``Host`` header (``name[:port]``, ``[v6][:port]``) names this machine's loopback."""
    host = host.strip()
    if host.startswith("["):
        end = host.find("]")
        name = host[1:end] if end > 0 else ""
    else:
        name = host.rsplit(":", 1)[0] if host.count(":") == 1 else host
    return _loopback_name(name)


def _loopback_name(name: str) -> bool:
    name = name.lower().rstrip(".")
    if name == "localhost" or name.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False
