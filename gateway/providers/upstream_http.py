"""The adapters' HTTP/1.1 client: keep-alive connections to each provider, one POST at a time
on each, bodies read as they arrive.

Why not ``aiohttp.ClientSession``: the gateway makes one kind of call (a JSON POST whose answer
is JSON, SSE or NDJSON) and aiohttp's general client (cookies, redirects, tracing, auth, proxy
and header merging, a request object, a response object and a payload writer per call) cost
about 90 µs of CPU per call on this machine; this client does the same exchange in about 30
(``tests/bench/upstream_client.py``). It speaks what the providers speak:

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
import zlib
from collections import deque
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from types import TracebackType
from typing import Any
from urllib.parse import urlencode, urlsplit

from multidict import CIMultiDict, CIMultiDictProxy


def _version() -> str:
    try:
        return importlib.metadata.version("llm-gateway")
    except importlib.metadata.PackageNotFoundError:
        return "dev"


USER_AGENT = f"llm-gateway/{_version()}"
#: the largest status line + headers accepted
MAX_HEAD = 64 * 1024
#: stop reading from the socket while this much body is buffered and unread
HIGH_WATER = 1 << 20
_NO_BODY_STATUSES = frozenset((204, 304))


class ProtocolViolation(ConnectionError):
    """The server's answer is not valid HTTP/1.x."""


class BodyCut(Exception):
    """The connection ended (or broke) before the end of the answer's body."""


@dataclass(frozen=True, slots=True)
class Timeout:
    total: float | None = None
    connect: float | None = None
    read: float | None = None


@dataclass(frozen=True, slots=True)
class _Origin:
    scheme: str
    host: str
    port: int
    host_header: str
    path: str


class Body:
    """The answer's body as it arrives (the interface the adapters use of aiohttp's
    ``StreamReader``): ``readany()`` returns what has arrived (``b""`` at the end),
    ``iter_any()`` iterates that, ``async for line in body`` iterates lines (with their
    ``\\n``), ``read()`` returns the rest."""

    __slots__ = ("_conn", "_decoder", "_done", "_error", "_pieces", "_read_timeout", "_size", "_waiter")

    def __init__(self, conn: _Connection | None, read_timeout: float | None) -> None:
        self._pieces: deque[bytes] = deque()
        self._size = 0
        self._done = False
        self._error: BaseException | None = None
        self._waiter: asyncio.Future[None] | None = None
        self._read_timeout = read_timeout
        self._conn = conn
        self._decoder: Any = None

    # --- fed by the connection ----------------------------------------------------------------
    def _feed(self, data: bytes) -> None:
        if self._decoder is not None:
            try:
                data = self._decoder.decompress(data)
            except zlib.error as e:
                self._fail(BodyCut(f"cannot decompress the body: {e}"))
                return
        if data:
            self._pieces.append(data)
            self._size += len(data)
            self._wake()

    def _finish(self) -> None:
        if self._decoder is not None:
            tail = self._decoder.flush()
            if tail:
                self._pieces.append(tail)
                self._size += len(tail)
        self._done = True
        self._conn = None
        self._wake()

    def _fail(self, error: BaseException) -> None:
        if not self._done:
            self._error = error
            self._done = True
            self._conn = None
            self._wake()

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    # --- read by the adapter ------------------------------------------------------------------
    async def readany(self) -> bytes:
        while not self._pieces:
            if self._done:
                if self._error is not None:
                    raise self._error
                return b""
            await self._wait()
        pieces = self._pieces
        data = pieces.popleft() if len(pieces) == 1 else b"".join(pieces)
        if len(pieces) > 1:
            pieces.clear()
        self._size = 0
        conn = self._conn
        if conn is not None and conn.paused:
            conn.resume()
        return data

    async def read(self) -> bytes:
        parts = []
        while piece := await self.readany():
            parts.append(piece)
        return parts[0] if len(parts) == 1 else b"".join(parts)

    async def iter_any(self) -> AsyncIterator[bytes]:
        while piece := await self.readany():
            yield piece

    async def __aiter__(self) -> AsyncIterator[bytes]:
        rest = b""
        while piece := await self.readany():
            lines = (rest + piece).split(b"\n")
            rest = lines.pop()
            for line in lines:
                yield line + b"\n"
        if rest:
            yield rest

    def at_eof(self) -> bool:
        return self._done and not self._pieces

    @property
    def buffered(self) -> int:
        return self._size

    async def _wait(self) -> None:
        loop = asyncio.get_running_loop()
        waiter = self._waiter = loop.create_future()
        timer = None if self._read_timeout is None else loop.call_later(self._read_timeout, _expire, waiter)
        try:
            await waiter
        finally:
            self._waiter = None
            if timer is not None:
                timer.cancel()


def _expire(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_exception(TimeoutError("no data from the server within the read timeout"))


class Response:
    """A provider's answer: ``status``, ``reason``, ``headers`` (case-insensitive) and
    ``content`` (:class:`Body`)."""

    __slots__ = ("content", "headers", "reason", "status")

    def __init__(self, status: int, reason: str, headers: CIMultiDictProxy[str], content: Body) -> None:
        self.status = status
        self.reason = reason
        self.headers = headers
        self.content = content

    async def read(self) -> bytes:
        return await self.content.read()

    async def text(self) -> str:
        return (await self.content.read()).decode(_charset(self.headers.get("content-type")), errors="replace")


def _charset(content_type: str | None) -> str:
    if content_type:
        for param in content_type.split(";")[1:]:
            name, _, value = param.partition("=")
            if name.strip().lower() == "charset" and value.strip():
                charset = value.strip().strip('"')
                try:
                    "".encode(charset)
                    return charset
                except LookupError:
                    break
    return "utf-8"


# parser states
_HEAD, _LENGTH, _CHUNK_SIZE, _CHUNK_DATA, _CHUNK_END, _TRAILERS, _UNTIL_CLOSE, _IDLE = range(8)


class _Connection(asyncio.Protocol):
    """One keep-alive connection: parses the answer to the request in flight."""

    def __init__(self, pool: _HostPool) -> None:
        self.pool = pool
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.paused = False
        self.reusable = True
        self.idle_since = 0.0
        self._buffer = b""
        self._state = _IDLE
        self._remaining = 0
        self._head: asyncio.Future[Response] | None = None
        self._head_timer: asyncio.TimerHandle | None = None
        self._read_timeout: float | None = None
        self._body: Body | None = None

    # --- asyncio.Protocol ---------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        if self._state == _IDLE:  # bytes nobody asked for: the connection cannot be trusted
            self.reusable = False
            self._close()
            return
        self._buffer = self._buffer + data if self._buffer else data
        try:
            self._parse()
        except ProtocolViolation as e:
            self._error(e)

    def eof_received(self) -> bool | None:
        self._lost(None)
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        self._lost(exc)

    # --- one exchange -------------------------------------------------------------------------
    def send(self, head: bytes, body: bytes, read_timeout: float | None) -> asyncio.Future[Response]:
        loop = asyncio.get_running_loop()
        self._head = future = loop.create_future()
        self._state = _HEAD
        self._read_timeout = read_timeout
        if read_timeout is not None:
            self._head_timer = loop.call_later(read_timeout, _expire_head, future)
        assert self.transport is not None
        self.transport.writelines((head, body))
        return future

    def abandon(self) -> None:
        """The caller stopped before the end of the answer: this connection cannot be reused."""
        if self._state != _IDLE:
            self.reusable = False
            self._close()

    def pause(self) -> None:
        if not self.paused and self.transport is not None:
            self.paused = True
            self.transport.pause_reading()

    def resume(self) -> None:
        if self.paused:
            self.paused = False
            if self.transport is not None:
                self.transport.resume_reading()

    # --- parsing ------------------------------------------------------------------------------
    def _parse(self) -> None:
        while self._buffer or (self._state == _LENGTH and self._remaining == 0):
            state = self._state
            if state == _HEAD:
                if not self._parse_head():
                    return
            elif state == _LENGTH:
                self._parse_length()
            elif state == _CHUNK_SIZE:
                if not self._parse_chunk_size():
                    return
            elif state == _CHUNK_DATA:
                self._parse_chunk_data()
            elif state == _CHUNK_END:
                if len(self._buffer) < 2:
                    return
                if self._buffer[:2] != b"\r\n":
                    raise ProtocolViolation("a chunk does not end with CRLF")
                self._buffer = self._buffer[2:]
                self._state = _CHUNK_SIZE
            elif state == _TRAILERS:
                if not self._parse_trailers():
                    return
            elif state == _UNTIL_CLOSE:
                self._deliver(self._buffer)
                self._buffer = b""
            else:  # _IDLE: more bytes after a complete answer
                self.reusable = False
                self._close()
                return

    def _parse_head(self) -> bool:
        buffer = self._buffer
        end = buffer.find(b"\r\n\r\n")
        if end < 0:
            if len(buffer) > MAX_HEAD:
                raise ProtocolViolation("the answer's headers are too large")
            return False
        lines = buffer[:end].decode("latin-1").split("\r\n")
        self._buffer = buffer[end + 4 :]
        version, _, rest = lines[0].partition(" ")
        code, _, reason = rest.partition(" ")
        if not version.startswith("HTTP/1.") or len(code) != 3 or not code.isdigit():
            raise ProtocolViolation(f"not an HTTP/1.x status line: {lines[0][:100]!r}")
        status = int(code)
        headers: CIMultiDict[str] = CIMultiDict()
        for line in lines[1:]:
            name, colon, value = line.partition(":")
            if not colon or not name or name != name.strip():
                raise ProtocolViolation(f"malformed header line: {line[:100]!r}")
            headers.add(name, value.strip())
        if 100 <= status < 200:  # an interim answer (100 Continue, 103 Early Hints): skip it
            return True
        if version == "HTTP/1.0" or "close" in headers.get("connection", "").lower():
            self.reusable = False
        body = Body(self, self._read_timeout)
        encoding = headers.get("content-encoding", "identity").strip().lower()
        if encoding in ("gzip", "x-gzip", "deflate"):
            body._decoder = zlib.decompressobj(47 if encoding != "deflate" else zlib.MAX_WBITS)
        elif encoding != "identity":
            raise ProtocolViolation(f"unsupported content-encoding {encoding!r}")
        self._body = body
        transfer = headers.get("transfer-encoding")
        length = headers.get("content-length")
        if status in _NO_BODY_STATUSES:
            self._state, self._remaining = _LENGTH, 0
        elif transfer is not None:
            if transfer.strip().lower() != "chunked":
                raise ProtocolViolation(f"unsupported transfer-encoding {transfer!r}")
            self._state = _CHUNK_SIZE
        elif length is not None:
            if not length.strip().isdigit() or "," in length:
                raise ProtocolViolation(f"bad content-length {length!r}")
            self._state, self._remaining = _LENGTH, int(length)
        else:
            self._state = _UNTIL_CLOSE
            self.reusable = False
        head = self._head
        self._head = None
        self._cancel_head_timer()
        if head is not None and not head.done():
            head.set_result(Response(status, reason, CIMultiDictProxy(headers), body))
        return True

    def _parse_length(self) -> None:
        take = self._remaining
        buffer = self._buffer
        if len(buffer) <= take:
            piece, self._buffer = buffer, b""
        else:
            piece, self._buffer = buffer[:take], buffer[take:]
        self._remaining -= len(piece)
        if piece:
            self._deliver(piece)
        if self._remaining == 0:
            self._complete()

    def _parse_chunk_size(self) -> bool:
        buffer = self._buffer
        end = buffer.find(b"\r\n")
        if end < 0:
            if len(buffer) > 1024:
                raise ProtocolViolation("a chunk size line is too long")
            return False
        size_text = buffer[:end].split(b";", 1)[0].strip()
        try:
            size = int(size_text, 16)
        except ValueError:
            raise ProtocolViolation(f"bad chunk size {size_text[:20]!r}") from None
        if size < 0:
            raise ProtocolViolation(f"bad chunk size {size_text[:20]!r}")
        self._buffer = buffer[end + 2 :]
        if size == 0:
            self._state = _TRAILERS
        else:
            self._state, self._remaining = _CHUNK_DATA, size
        return True

    def _parse_chunk_data(self) -> None:
        take = self._remaining
        buffer = self._buffer
        if len(buffer) <= take:
            piece, self._buffer = buffer, b""
        else:
            piece, self._buffer = buffer[:take], buffer[take:]
        self._remaining -= len(piece)
        self._deliver(piece)
        if self._remaining == 0:
            self._state = _CHUNK_END

    def _parse_trailers(self) -> bool:
        buffer = self._buffer
        if buffer.startswith(b"\r\n"):
            self._buffer = buffer[2:]
        else:
            end = buffer.find(b"\r\n\r\n")
            if end < 0:
                if len(buffer) > MAX_HEAD:
                    raise ProtocolViolation("the answer's trailers are too large")
                return False
            self._buffer = buffer[end + 4 :]
        self._complete()
        return True

    def _deliver(self, piece: bytes) -> None:
        body = self._body
        if body is not None:
            body._feed(piece)
            if body._size > HIGH_WATER:
                self.pause()

    def _complete(self) -> None:
        body, self._body = self._body, None
        self._state = _IDLE
        if self._buffer:  # bytes after the answer: never reuse
            self.reusable = False
        if body is not None:
            body._finish()
        if self.reusable and not self.closed:
            self.resume()
            self.pool.release(self)
        else:
            self._close()
            self.pool.forget(self)

    # --- the end ------------------------------------------------------------------------------
    def _lost(self, exc: Exception | None) -> None:
        if self.closed:
            return
        self.closed = True
        if self._state == _UNTIL_CLOSE:
            body, self._body = self._body, None
            self._state = _IDLE
            if body is not None:
                body._finish()
        elif self._state != _IDLE:
            reason = f": {exc}" if exc else ""
            self._error(ConnectionResetError(f"the server closed the connection{reason}"))
        self.pool.forget(self)
        if self.transport is not None:
            self.transport.close()

    def _error(self, error: BaseException) -> None:
        head, self._head = self._head, None
        self._cancel_head_timer()
        if head is not None and not head.done():
            head.set_exception(error)
        body, self._body = self._body, None
        if body is not None:
            body._fail(error if isinstance(error, ProtocolViolation) else BodyCut(str(error)))
        self._state = _IDLE
        self.reusable = False
        self._close()

    def _cancel_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _close(self) -> None:
        if not self.closed:
            self.closed = True
            self.pool.forget(self)
        if self.transport is not None:
            self.transport.close()


def _expire_head(future: asyncio.Future[Response]) -> None:
    if not future.done():
        future.set_exception(TimeoutError("no answer from the server within the read timeout"))


class _HostPool:
    """The connections to one origin: idle ones (most recently used first) and a count of all."""

    def __init__(self, client: UpstreamClient, origin: _Origin) -> None:
        self.client = client
        self.origin = origin
        self.idle: list[_Connection] = []
        self.busy: set[_Connection] = set()
        self.waiters: deque[asyncio.Future[None]] = deque()

    async def acquire(self, connect_timeout: float | None) -> _Connection:
        now = time.monotonic()
        idle = self.idle
        keepalive = self.client.keepalive_timeout
        while idle:
            conn = idle.pop()
            if not conn.closed and now - conn.idle_since < keepalive:
                self.busy.add(conn)
                return conn
            conn._close()
        while len(self.busy) >= self.client.limit_per_host:
            waiter = asyncio.get_running_loop().create_future()
            self.waiters.append(waiter)
            try:
                await waiter
            finally:
                with contextlib.suppress(ValueError):
                    self.waiters.remove(waiter)
            if idle:
                return await self.acquire(connect_timeout)
        conn = _Connection(self)
        self.busy.add(conn)  # counts against the limit while it connects
        try:
            await asyncio.wait_for(self._connect(conn), connect_timeout)
        except BaseException:
            self.forget(conn)
            conn._close()
            raise
        return conn

    async def _connect(self, conn: _Connection) -> None:
        origin = self.origin
        loop = asyncio.get_running_loop()
        tls = self.client.ssl_context if origin.scheme == "https" else None
        await loop.create_connection(
            lambda: conn, origin.host, origin.port, ssl=tls, server_hostname=origin.host if tls else None
        )

    def release(self, conn: _Connection) -> None:
        self.busy.discard(conn)
        if self.client.closed:
            conn._close()
            return
        conn.idle_since = time.monotonic()
        self.idle.append(conn)
        self._wake_one()

    def forget(self, conn: _Connection) -> None:
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
    ) -> None:
        self.limit_per_host = limit_per_host
        self.keepalive_timeout = keepalive_timeout
        self.ssl_context = ssl_context or ssl.create_default_context()
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
        lines = [f"POST {path} HTTP/1.1\r\nhost: {origin.host_header}\r\n{self._fixed}"]
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
        path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        origin = _Origin(scheme, host, port, shown if port == default else f"{shown}:{port}", path)
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

    __slots__ = ("_conn", "_data", "_deadline", "_head", "_pool", "_response", "_timeout")

    def __init__(self, pool: _HostPool, head: bytes, data: bytes, timeout: Timeout) -> None:
        self._pool = pool
        self._head = head
        self._data = data
        self._timeout = timeout
        self._deadline: asyncio.Timeout | None = None
        self._conn: _Connection | None = None
        self._response: Response | None = None

    async def __aenter__(self) -> Response:
        timeout = self._timeout
        if timeout.total is not None:
            self._deadline = asyncio.timeout(timeout.total)
            await self._deadline.__aenter__()
        try:
            conn = self._conn = await self._pool.acquire(timeout.connect)
            response = self._response = await conn.send(self._head, self._data, timeout.read)
        except BaseException as e:
            await self._leave(type(e), e, e.__traceback__)
            raise
        return response

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> bool | None:
        return await self._leave(exc_type, exc, tb)

    async def _leave(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> bool | None:
        conn = self._conn
        if conn is not None:
            response = self._response
            if response is None or not response.content._done:
                conn.abandon()
            self._conn = None
        deadline = self._deadline
        if deadline is not None:
            self._deadline = None
            await deadline.__aexit__(exc_type, exc, tb)  # an expired deadline raises TimeoutError
        return None
