"""The adapters' HTTP/1.1 client: keep-alive connections to each provider, one POST at a time
on each, bodies read as they arrive.

Why not ``aiohttp.ClientSession``: the gateway makes one kind of call (a JSON POST whose answer
is JSON, SSE or NDJSON) and aiohttp's general client (cookies, redirects, tracing, auth, proxy
and header merging, a request object, a response object and a payload writer per call) cost
about 90 µs of CPU per call on this machine; this client does the same exchange in about 40
(``tests/bench/upstream_client.py``). The answer is parsed by ``upstream_connection`` and handed
over as ``upstream_response.Response``. It speaks what the providers speak:

- ``http`` and ``https`` (the default SSL context: system CAs, hostname checked);
- bodies with ``content-length``, ``transfer-encoding: chunked`` or ended by the server closing
  the connection; ``content-encoding`` gzip and deflate (we ask for ``identity``);
- keep-alive: a connection goes back to its host's pool when its answer was read to the end
  and neither side said ``connection: close``; idle connections older than
  ``keepalive_timeout`` or closed by the server are not reused;
- at most ``limit_per_host`` connections per host; calls beyond that wait for one.

Timeouts (:class:`Timeout`): ``total`` bounds the whole exchange, body included (TimeoutError),
``connect`` the TCP and TLS handshake, ``read`` each wait for bytes (the headers, then every
piece of a stream). Failures: ``OSError`` (connection refused or reset, DNS,
:class:`ProtocolViolation` for an answer that is not HTTP/1.x), :class:`BodyCut` when the
connection ends before the body does, ``TimeoutError``.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.metadata
import ssl
import time
from collections import deque
from collections.abc import Callable, Mapping
from contextvars import ContextVar
from dataclasses import dataclass
from types import TracebackType
from urllib.parse import quote, urlencode, urlsplit

from gateway.providers.upstream_connection import Connection, unsent
from gateway.providers.upstream_proxy import (
    Proxy,
    ProxyLostAnswer,
    ProxyRefused,
    ProxyRules,
    open_tunnel,
    proxys_own_answer,
    reach,
)
from gateway.providers.upstream_response import Response, Timeout


def _version() -> str:
    try:
        return importlib.metadata.version("llm-gateway")
    except importlib.metadata.PackageNotFoundError:
        return "dev"


USER_AGENT = f"llm-gateway/{_version()}"
#: characters a path or a query keeps as they are (RFC 3986 pchar, and ``%`` of what is encoded)
_PATH_SAFE = "/:@!$&'()*+,;=-._~%"
_QUERY_SAFE = _PATH_SAFE + "?"


@dataclass(frozen=True, slots=True)
class _Origin:
    scheme: str
    host: str
    port: int
    host_header: str
    path: str
    #: the proxy the origin is reached through (``HTTPS_PROXY``, ``HTTP_PROXY``), or None
    proxy: Proxy | None = None
    #: the request head's ``proxy-authorization`` line (http through a proxy), or ""
    proxy_line: str = ""


#: seconds the current task's requests waited for a free connection (the router leaves them out
#: of the attempt's latency: a review saw the pool's queue as a provider's p50 of 8 s)
QUEUED: ContextVar[float] = ContextVar("upstream_queued", default=0.0)


class Wire:
    """How far the current attempt's request got: ``queued`` for a free connection,
    ``connecting``, ``sending``, ``sent`` whole (the provider has it, and may bill it), or
    ``answered`` with an error status (a refusal, not billed). The
    router gives each attempt one (:data:`WIRE`) and reads it when its own deadline cuts the
    attempt short, which no exception of the exchange then says."""

    __slots__ = ("state",)

    def __init__(self) -> None:
        self.state = "new"


#: the current task's attempt (set by the router per attempt)
WIRE: ContextVar[Wire | None] = ContextVar("upstream_wire", default=None)


#: whether the client of the current task's request has gone (set by the API per request)
CLIENT_GONE: ContextVar[Callable[[], bool] | None] = ContextVar("client_gone", default=None)


class ClientGone(Exception):
    """The request's client left while it waited for a connection: it was not sent (sent, the
    vendor would answer, and bill, a call nobody reads: a review saw 940 of 1,200 so)."""


class PoolBusy(Exception):
    """Every connection to the host stayed busy for the connect timeout: the request was not sent."""

    def __init__(self, limit: int) -> None:
        super().__init__(f"all {limit} of the gateway's connections to the provider were busy")


#: seconds after the request went out from which a connection that ends without an answer had
#: the request processed, as far as anyone can tell (:meth:`_Exchange.answer_lost`)
ANSWER_LOST_AFTER = 1.0


def _remaining(deadline: float | None) -> float | None:
    return None if deadline is None else max(deadline - asyncio.get_running_loop().time(), 0.0)


class _HostPool:
    """The connections to one origin: idle ones (most recently used first) and a count of all."""

    def __init__(self, client: UpstreamClient, origin: _Origin) -> None:
        self.client = client
        self.origin = origin
        self.idle: list[Connection] = []
        self.busy: set[Connection] = set()
        self.waiters: deque[asyncio.Future[None]] = deque()
        #: the timer that closes connections idle past the keep-alive timeout (one per pool)
        self._sweeper: asyncio.TimerHandle | None = None

    async def acquire(self, connect_timeout: float | None, deadline: float | None) -> Connection:
        """An idle connection, or a new one (waiting for a free slot first at the host's limit).
        Waiting and connecting end by ``deadline`` (loop time) with TimeoutError; waiting for a
        slot, also after ``connect_timeout`` (as aiohttp's connect timeout includes the pool's
        wait), with :class:`PoolBusy`: the request never left, the provider is not to blame."""
        now = time.monotonic()
        idle = self.idle
        keepalive = self.client.keepalive_timeout
        while idle:
            conn = idle.pop()
            if not conn.closed and now - conn.idle_since < keepalive:
                self.busy.add(conn)
                return conn
            conn._close()
        if len(self.busy) >= self.client.limit_per_host:
            loop = asyncio.get_running_loop()
            began = loop.time()
            wait_by = deadline
            if connect_timeout is not None and (wait_by is None or began + connect_timeout < wait_by):
                wait_by = began + connect_timeout
            if (wire := WIRE.get()) is not None:
                wire.state = "queued"
            try:
                while len(self.busy) >= self.client.limit_per_host and not idle:
                    await self._wait_for_slot(wait_by)
            finally:  # the wait is the gateway's, not the provider's: left out of its latency
                QUEUED.set(QUEUED.get() + loop.time() - began)
            if idle:  # a connection came back: take it (a wait again if another took it first)
                return await self.acquire(connect_timeout, deadline)
        conn = Connection(self)
        self.busy.add(conn)  # counts against the limit while it connects
        if (wire := WIRE.get()) is not None:
            wire.state = "connecting"
        remaining = _remaining(deadline)
        if connect_timeout is not None and (remaining is None or connect_timeout < remaining):
            remaining = connect_timeout
        try:
            await asyncio.wait_for(self._connect(conn), remaining)
        except BaseException:
            self.forget(conn)
            conn._close()
            raise
        return conn

    async def _wait_for_slot(self, wait_by: float | None) -> None:
        waiter = asyncio.get_running_loop().create_future()
        self.waiters.append(waiter)
        try:
            await asyncio.wait_for(waiter, _remaining(wait_by))
        except TimeoutError:
            raise PoolBusy(self.client.limit_per_host) from None
        except BaseException:
            if waiter.done() and not waiter.cancelled():  # woken for a slot, then cancelled:
                self._wake_one()  # the slot goes to the next in line
            raise
        finally:
            with contextlib.suppress(ValueError):
                self.waiters.remove(waiter)

    async def _connect(self, conn: Connection) -> None:
        origin = self.origin
        loop = asyncio.get_running_loop()
        tls = self.client.ssl_context if origin.scheme == "https" else None
        proxy = origin.proxy
        if proxy is None:
            await loop.create_connection(
                lambda: conn, origin.host, origin.port, ssl=tls, server_hostname=origin.host if tls else None
            )
        elif tls is not None:  # CONNECT, then TLS with the provider inside the tunnel
            await open_tunnel(proxy, origin.host, origin.port, conn, tls, origin.host)
        else:  # plain HTTP: the proxy takes the request in absolute form
            await reach(proxy, lambda: conn)

    def release(self, conn: Connection) -> None:
        self.busy.discard(conn)
        if self.client.closed:
            conn._close()
            return
        conn.idle_since = time.monotonic()
        self.idle.append(conn)
        self._wake_one()
        if self._sweeper is None:
            self._sweeper = asyncio.get_running_loop().call_later(self.client.keepalive_timeout, self._sweep)

    def _sweep(self) -> None:
        """Close the connections idle past the keep-alive timeout. They were only closed when the
        next call looked for one, so after a burst hundreds stayed open for good, each holding a
        socket here and a slot at the vendor (its server closes them sooner or later anyway)."""
        self._sweeper = None
        idle, keepalive = self.idle, self.client.keepalive_timeout
        now = time.monotonic()
        while idle and now - idle[0].idle_since >= keepalive:  # the oldest first
            idle.pop(0)._close()
        if idle:
            wait = idle[0].idle_since + keepalive - now
            self._sweeper = asyncio.get_running_loop().call_later(max(wait, 0.0), self._sweep)

    def forget(self, conn: Connection) -> None:
        if conn in self.busy:
            self.busy.discard(conn)
            self._wake_one()
        elif conn in self.idle:
            self.idle.remove(conn)

    def _wake_one(self) -> None:
        while self.waiters:
            waiter = self.waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return

    def close(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None
        for conn in [*self.idle, *self.busy]:
            conn._close()
        self.idle.clear()


class UpstreamClient:
    """Keep-alive HTTP/1.1 connections to the providers (one pool per origin)."""

    def __init__(
        self,
        *,
        limit_per_host: int = 256,
        keepalive_timeout: float = 15.0,
        ssl_context: ssl.SSLContext | None = None,
        user_agent: str = USER_AGENT,
        proxies: ProxyRules | None = None,
    ) -> None:
        self.limit_per_host = limit_per_host
        self.keepalive_timeout = keepalive_timeout
        self.ssl_context = ssl_context or ssl.create_default_context()
        self.proxies = proxies
        self.closed = False
        self._pools: dict[tuple[str, str, int], _HostPool] = {}
        self._origins: dict[str, _Origin] = {}
        self._fixed = f"user-agent: {user_agent}\r\naccept-encoding: identity\r\n"

    def post(
        self,
        url: str,
        *,
        data: bytes,
        headers: Mapping[str, str],
        timeout: Timeout,
        params: Mapping[str, str] | None = None,
    ) -> _Exchange:
        """``async with client.post(...) as response``: the answer once its headers are in;
        leaving the block before the body's end closes the connection."""
        if self.closed:
            raise RuntimeError("the upstream client is closed")
        origin = self._origins.get(url) or self._origin(url)
        path = origin.path
        if params:
            path = f"{path}{'&' if '?' in path else '?'}{urlencode(params)}"
        lines = [f"POST {path} HTTP/1.1\r\nhost: {origin.host_header}\r\n{self._fixed}{origin.proxy_line}"]
        for name, value in headers.items():
            if "\n" in value or "\r" in value or "\n" in name or "\r" in name or ":" in name:
                raise ValueError(f"invalid character in HTTP header {name!r}")
            lines.append(f"{name}: {value}\r\n")
        lines.append(f"content-length: {len(data)}\r\n\r\n")
        pool = self._pools.get((origin.scheme, origin.host, origin.port))
        if pool is None:
            pool = self._pools[(origin.scheme, origin.host, origin.port)] = _HostPool(self, origin)
        return _Exchange(pool, "".join(lines).encode("latin-1"), data, timeout)

    def _origin(self, url: str) -> _Origin:
        parts = urlsplit(url)
        scheme = parts.scheme.lower()
        if scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"not an http(s) URL: {url!r}")
        default = 443 if scheme == "https" else 80
        port = parts.port or default
        host = parts.hostname
        shown = f"[{host}]" if ":" in host else host
        # what the request line may carry: a space, a CR or LF, a non-ASCII character in a path
        # built from a client's model name is percent-encoded (what is encoded already stays)
        path = quote(parts.path or "/", safe=_PATH_SAFE)
        if parts.query:
            path += "?" + quote(parts.query, safe=_QUERY_SAFE)
        host_header = shown if port == default else f"{shown}:{port}"
        proxy = self.proxies.for_origin(scheme, host, port) if self.proxies is not None else None
        proxy_line = ""
        if proxy is not None and scheme == "http":  # the proxy forwards it: the absolute form
            path = f"http://{host_header}{path}"
            if proxy.authorization is not None:
                proxy_line = f"proxy-authorization: {proxy.authorization}\r\n"
        origin = _Origin(scheme, host, port, host_header, path, proxy, proxy_line)
        if len(self._origins) < 1024:
            self._origins[url] = origin
        return origin

    async def close(self) -> None:
        self.closed = True
        for pool in self._pools.values():
            pool.close()
        self._pools.clear()
        await asyncio.sleep(0)  # let the transports close

    async def __aenter__(self) -> UpstreamClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


class _Exchange:
    """One POST: connects (or reuses a connection), sends, waits for the answer's headers."""

    __slots__ = ("_answer_lost", "_conn", "_data", "_head", "_pool", "_response", "_timeout", "sent")

    def __init__(self, pool: _HostPool, head: bytes, data: bytes, timeout: Timeout) -> None:
        self._pool = pool
        self._head = head
        self._data = data
        self._timeout = timeout
        self._conn: Connection | None = None
        self._response: Response | None = None
        #: the whole request went out (the provider has it, and may bill it whatever follows)
        self.sent = False
        #: see :meth:`answer_lost`
        self._answer_lost = False

    async def __aenter__(self) -> Response:
        timeout = self._timeout
        total = timeout.total
        # the total timeout is a deadline every wait of the call honours (a pool slot, the
        # connection, the headers, each piece of the body): timers, no task cancellation
        deadline = None if total is None else asyncio.get_running_loop().time() + total
        try:
            waited = QUEUED.get()
            try:
                conn = self._conn = await self._pool.acquire(timeout.connect, deadline)
            except PoolBusy:
                if (gone := CLIENT_GONE.get()) is not None and gone():
                    raise ClientGone from None  # and the client left while it waited
                raise
            if QUEUED.get() != waited:
                if (gone := CLIENT_GONE.get()) is not None and gone():
                    # it waited for a connection, and its client left meanwhile: the connection,
                    # not used, goes back to the pool (abandoning an idle one would keep its slot)
                    self._conn = None
                    self._pool.release(conn)
                    raise ClientGone
                if deadline is not None and _remaining(deadline) == 0.0:
                    # its whole time went waiting for a connection: sent now, it would time out at
                    # once, a provider timeout it never had (a review: 300 calls against 256
                    # connections, 42 never sent and recorded as upstream timeouts)
                    self._conn = None
                    self._pool.release(conn)
                    raise PoolBusy(self._pool.client.limit_per_host)
            answer = conn.send(self._head, self._data, timeout.read, deadline, timeout.head)
            self.sent = True
            if (wire := WIRE.get()) is not None:
                wire.state = "sent"
            response = self._response = await answer
            origin = self._pool.origin
            if origin.proxy is not None and origin.scheme == "http":
                failed = proxys_own_answer(origin.proxy, response.status, response.reason, response.headers)
                if isinstance(failed, ProxyRefused):  # the proxy's, not the provider's: it never had it
                    self.sent = False
                    if wire is not None:
                        wire.state = "sending"
                if failed is not None:  # (or the provider had it, and its answer was lost)
                    self._response = None
                    raise failed
        except BaseException as exc:
            if self.sent and (conn.out_at is None or (conn.transport is not None and unsent(conn.transport))):
                self.sent = False  # part of the request was still here: the provider never had it
                if (wire := WIRE.get()) is not None:
                    wire.state = "sending"
            elif self.sent and self._response is None and isinstance(exc, OSError) and conn.out_at is not None:
                waited = asyncio.get_running_loop().time() - conn.out_at
                self._answer_lost = isinstance(exc, ProxyLostAnswer) or waited >= ANSWER_LOST_AFTER
            self._leave()
            raise
        return response

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._leave()

    def answer_lost(self) -> bool:
        """Whether the whole request went out and the connection then ended without an answer
        after a wait (:data:`ANSWER_LOST_AFTER`), or an HTTP proxy said the provider's answer was
        lost: the provider had the request and may have answered, and billed, it (a proxy's idle
        timeout that cut a slow call was recorded free, and the call paid again at the fallback:
        a review). A connection that ends at once is a keep-alive connection the server had
        closed: the request never reached it; one that ends while part of the request was still
        being written never gave the provider the request."""
        return self._answer_lost

    @property
    def answered(self) -> bool:
        """Whether the answer's head came (a failure after it is one of its body)."""
        return self._response is not None

    def _leave(self) -> None:
        conn = self._conn
        if conn is not None:
            response = self._response
            if response is None or not response.content.ended:
                conn.abandon()
            self._conn = None
