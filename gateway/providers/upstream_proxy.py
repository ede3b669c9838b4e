"""The egress proxy of the provider calls: ``HTTPS_PROXY``, ``HTTP_PROXY`` and ``NO_PROXY``.

A platform's network often reaches the vendors only through an HTTP proxy. The SDKs (httpx),
curl and LiteLLM honour these variables, so the gateway does too:

- an ``https`` provider is reached through a ``CONNECT`` tunnel to the proxy, and TLS runs
  end to end inside it (the proxy sees the vendor's host name, never the request or the key);
  the gateway does not resolve the vendor's name itself (the proxy does, as a network whose
  DNS knows only internal names needs);
- an ``http`` provider (an Ollama on another host) is asked through the proxy in absolute form
  (``POST http://host:port/path``);
- ``NO_PROXY`` (comma-separated): ``*``, host names (``example.com`` and ``.example.com`` both
  take its subdomains), IP addresses and networks (``10.0.0.0/8``), each with an optional
  ``:port``. Loopback (``localhost``, ``127.0.0.0/8``, ``::1``) is always reached directly: a
  proxy would connect to its own loopback, not the gateway's;
- credentials in the proxy's URL (``http://user:pass@proxy:3128``, percent-encoded) go as
  ``proxy-authorization: Basic``; they never appear in a log or an error.

Only ``http://`` proxies (the usual kind: squid, a corporate egress): an ``https://`` or SOCKS
proxy is refused at start, in one line.
"""

from __future__ import annotations

import asyncio
import base64
import ipaddress
import ssl
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TypeVar
from urllib.parse import unquote_to_bytes, urlsplit

#: the largest answer head a proxy may send to a CONNECT
MAX_REPLY_HEAD = 64 * 1024

_Network = ipaddress.IPv4Network | ipaddress.IPv6Network
P = TypeVar("P", bound=asyncio.BaseProtocol)


class ProxyRefused(ConnectionError):
    """The proxy answered the ``CONNECT`` with something else than 2xx (407: it wants
    credentials, 403: the destination is not allowed, 502: it could not reach the provider), or
    refused a plain-HTTP request itself (:func:`proxys_own_answer`). The request was not sent
    to the provider."""


class ProxyLostAnswer(ConnectionError):
    """An HTTP proxy forwarded a plain-HTTP provider's request and says the answer was lost (its
    read timeout, a reset): the provider had the request, and may bill it."""


class ProxyUnreachable(ConnectionError):
    """The proxy itself could not be reached (its name, its port): the provider is not to blame,
    and the log names the proxy, not the vendor's host the gateway never resolves (a review)."""


@dataclass(frozen=True, slots=True)
class Proxy:
    host: str
    port: int
    #: the ``proxy-authorization`` value, or None
    authorization: str | None
    #: the proxy's URL without its credentials (for logs and errors)
    shown: str


def parse_proxy(url: str, variable: str) -> Proxy:
    """``http://[user:pass@]host[:port]`` (a bare ``host:port`` is taken as ``http://``); any
    other scheme, or no host, is a ValueError naming the variable (not the URL: it may hold a
    password)."""
    text = url.strip()
    if "://" not in text:
        text = "http://" + text
    try:
        parts = urlsplit(text)
    except ValueError:  # "Invalid IPv6 URL", without the variable's name
        raise ValueError(f"{variable}: not a URL (http://[user:password@]host[:port])") from None
    scheme = parts.scheme.lower()
    if scheme != "http":
        raise ValueError(
            f"{variable}: only an http:// proxy is supported (got {scheme}://); the tunnel to an "
            "https provider through it is TLS end to end all the same"
        )
    try:
        port = parts.port or 80
    except ValueError:
        raise ValueError(f"{variable}: the proxy's port is not a number from 1 to 65535") from None
    host = parts.hostname
    if not host:
        raise ValueError(f"{variable}: the proxy URL names no host")
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        raise ValueError(f"{variable}: a proxy URL is http://[user:password@]host[:port], without a path")
    authorization = None
    if parts.username is not None:
        # the bytes the percent-escapes say, as curl sends them (a Latin-1 password's %E9 was
        # decoded as UTF-8 into a replacement character, and refused: a review)
        pair = unquote_to_bytes(parts.username) + b":" + unquote_to_bytes(parts.password or "")
        authorization = "Basic " + base64.b64encode(pair).decode("ascii")
    shown_host = f"[{host}]" if ":" in host else host
    return Proxy(host, port, authorization, f"http://{shown_host}:{port}")


@dataclass(frozen=True, slots=True)
class _Exempt:
    """One ``NO_PROXY`` entry."""

    name: str | None  # a host name, lower case, without its leading dot
    network: _Network | None
    port: int | None

    def covers(self, host: str, address: ipaddress.IPv4Address | ipaddress.IPv6Address | None, port: int) -> bool:
        if self.port is not None and self.port != port:
            return False
        if self.network is not None:
            return address is not None and address in self.network
        name = self.name or ""
        return host == name or host.endswith("." + name)


def _exemption(entry: str) -> _Exempt | None:
    text = entry.strip().lower()
    if not text:
        return None
    if "://" in text or text.count("/") > 1:
        raise ValueError(f"NO_PROXY: {entry.strip()!r} is a URL: give its host alone (or an address/network)")
    port: int | None = None
    if text.startswith("["):  # [::1]:8080
        close = text.find("]")
        rest = text[close + 1 :]
        if rest.startswith(":") and rest[1:].isdigit():
            port = int(rest[1:])
        text = text[1:close]
    elif text.count(":") == 1:
        text, _, digits = text.partition(":")
        if not digits.isdigit():
            raise ValueError(f"NO_PROXY: {entry.strip()!r} has a port that is not a number")
        port = int(digits)
    try:
        return _Exempt(None, ipaddress.ip_network(text, strict=False), port)
    except ValueError:
        pass
    name = text.lstrip(".").lstrip("*").lstrip(".").rstrip(".")  # a trailing dot is the same name
    if not name:
        raise ValueError(f"NO_PROXY: {entry.strip()!r} names no host")
    return _Exempt(name, None, port)


def _address(host: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        return None


class ProxyRules:
    """Which proxy, if any, a provider's origin goes through. Built once at start."""

    def __init__(self, https: Proxy | None = None, http: Proxy | None = None, no_proxy: str = "") -> None:
        self.https = https
        self.http = http
        self.no_proxy = no_proxy.strip()
        entries = [entry for entry in no_proxy.split(",") if entry.strip()]
        self.everything_direct = any(entry.strip() == "*" for entry in entries)
        self._exempt = [] if self.everything_direct else [e for e in map(_exemption, entries) if e is not None]

    @classmethod
    def from_settings(cls, https_proxy: str | None, http_proxy: str | None, no_proxy: str | None) -> ProxyRules:
        """The rules of the variables (a blank one is no proxy); a bad one is a ValueError."""
        https = parse_proxy(https_proxy, "HTTPS_PROXY") if https_proxy and https_proxy.strip() else None
        http = parse_proxy(http_proxy, "HTTP_PROXY") if http_proxy and http_proxy.strip() else None
        return cls(https, http, no_proxy or "")

    @property
    def active(self) -> bool:
        return (self.https is not None or self.http is not None) and not self.everything_direct

    def for_origin(self, scheme: str, host: str, port: int) -> Proxy | None:
        proxy = self.https if scheme == "https" else self.http
        if proxy is None or self.everything_direct:
            return None
        name = host.lower().rstrip(".")
        address = _address(name)
        if name == "localhost" or name.endswith(".localhost") or (address is not None and address.is_loopback):
            return None
        if any(exempt.covers(name, address, port) for exempt in self._exempt):
            return None
        return proxy

    def describe(self) -> str:
        """One line for the start's log (no credentials)."""
        parts = []
        if self.https is not None:
            parts.append(f"https providers through {self.https.shown}")
        if self.http is not None:
            parts.append(f"http providers through {self.http.shown}")
        direct = "loopback" + (f", NO_PROXY {self.no_proxy}" if self.no_proxy else "")
        return "; ".join(parts) + f" (direct: {direct})"


class _ConnectReply(asyncio.Protocol):
    """Reads the proxy's answer head to a ``CONNECT``; nothing else may come before the tunnel."""

    def __init__(self) -> None:
        self.head: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
        self._buffer = b""
        self.extra = b""  # bytes after the head: none may come before the client's TLS hello

    def data_received(self, data: bytes) -> None:
        if self.head.done():
            return
        self._buffer += data
        end = self._buffer.find(b"\r\n\r\n")
        if end >= 0:
            self.head.set_result(self._buffer[: end + 4])
            self.extra = self._buffer[end + 4 :]
        elif len(self._buffer) > MAX_REPLY_HEAD:
            self.head.set_exception(
                ProxyRefused(f"the proxy's answer to CONNECT has a head over {MAX_REPLY_HEAD} bytes")
            )

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.head.done():
            self.head.set_exception(ConnectionResetError("the proxy closed the connection before it answered CONNECT"))

    def eof_received(self) -> bool | None:
        self.connection_lost(None)
        return None


async def reach(proxy: Proxy, protocol: Callable[[], P]) -> tuple[asyncio.Transport, P]:
    """A connection to the proxy; :class:`ProxyUnreachable` naming it when there is none."""
    try:
        transport, made = await asyncio.get_running_loop().create_connection(protocol, proxy.host, proxy.port)
    except OSError as exc:
        raise ProxyUnreachable(f"the proxy {proxy.shown} cannot be reached: {exc}") from exc
    return transport, made


#: the errors an HTTP proxy reports after it forwarded the request (RFC 9209's ``Proxy-Status``
#: error types, squid's ``X-Squid-Error`` codes): the provider had it, and its answer was lost (a
#: squid 504 ERR_READ_TIMEOUT was recorded free: a diff review). Any other error the proxy marks
#: came before the provider had the request (a list of those missed ERR_SHUTTING_DOWN, ICAP
#: failures and others, and billed them: a re-test)
_AFTER_FORWARDING = (
    "connection_terminated",
    "connection_read_timeout",
    "http_response_",
    "http_protocol_error",
    "err_read_timeout",
    "err_read_error",
    "err_zero_size_object",
    "err_invalid_resp",
    "err_lifetime_exp",
)


def proxys_own_answer(
    proxy: Proxy, status: int, reason: str, headers: Mapping[str, str]
) -> ProxyRefused | ProxyLostAnswer | None:
    """For a plain-HTTP provider asked through the proxy, an answer that is the proxy's own, not
    the provider's (squid's 403 for a host it does not allow, its 503 for one it cannot reach
    were the provider's: its key refused, an overload retried; a review): a 407, or one it marks
    with RFC 9209's ``Proxy-Status`` ``error=`` or squid's ``X-Squid-Error``. A refusal when the
    error came before the provider had the request, else the provider's answer lost. None: the
    provider's answer, as the proxy relays it."""
    if status == 407:
        return ProxyRefused(f"the proxy {proxy.shown} refused the request: {status} {reason}".rstrip())
    field = headers.get("proxy-status", "").lower()
    error = field.partition("error=")[2].split(";")[0].split(",")[0].strip().strip('"') if "error=" in field else ""
    error = error or headers.get("x-squid-error", "").lower().split(" ")[0]
    if not error:
        return None
    if error.startswith(_AFTER_FORWARDING):
        return ProxyLostAnswer(f"the proxy {proxy.shown} lost the provider's answer: {status} {reason} ({error})")
    return ProxyRefused(f"the proxy {proxy.shown} refused the request: {status} {reason} ({error})")


def _status(head: bytes) -> tuple[int, str]:
    line = head.split(b"\r\n", 1)[0].decode("latin-1")
    version, _, rest = line.partition(" ")
    code, _, reason = rest.partition(" ")
    if not version.startswith("HTTP/1.") or len(code) != 3 or not code.isdigit():
        raise ProxyRefused(f"the proxy answered CONNECT with something that is not HTTP: {line[:80]!r}")
    return int(code), reason.strip()


async def open_tunnel(
    proxy: Proxy, host: str, port: int, protocol: asyncio.Protocol, tls: ssl.SSLContext, server_hostname: str
) -> asyncio.Transport:
    """A TLS connection to ``host:port`` through the proxy's ``CONNECT``, handed to ``protocol``
    (whose ``connection_made`` is called with it). Raises :class:`ProxyRefused` for a refusal or
    an answer that is no HTTP, :class:`ProxyUnreachable` for a proxy that cannot be reached."""
    loop = asyncio.get_running_loop()
    transport, reply = await reach(proxy, _ConnectReply)
    try:
        authority = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        lines = [f"CONNECT {authority} HTTP/1.1\r\nhost: {authority}\r\n"]
        if proxy.authorization is not None:
            lines.append(f"proxy-authorization: {proxy.authorization}\r\n")
        lines.append("\r\n")
        transport.write("".join(lines).encode("latin-1"))
        code, reason = _status(await reply.head)
        if not 200 <= code < 300:
            raise ProxyRefused(f"the proxy {proxy.shown} refused the tunnel to {authority}: {code} {reason}".rstrip())
        if reply.extra:
            raise ProxyRefused(f"the proxy {proxy.shown} sent bytes before the tunnel's TLS began")
        tunneled = await loop.start_tls(transport, protocol, tls, server_hostname=server_hostname)
    except BaseException:
        transport.close()
        raise
    if tunneled is None:  # the loop closed the connection under us
        raise ConnectionResetError("the tunnel through the proxy closed during the TLS handshake")
    protocol.connection_made(tunneled)
    return tunneled
