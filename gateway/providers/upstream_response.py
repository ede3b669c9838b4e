"""What the upstream client hands the adapters: the answer (:class:`Response`), its body as it
arrives (:class:`Body`), the timeouts of a call and the failures particular to HTTP."""

from __future__ import annotations

import asyncio
import zlib
from collections import deque
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from multidict import CIMultiDictProxy

from gateway import errors

if TYPE_CHECKING:
    from gateway.providers.upstream_connection import Connection


class ProtocolViolation(ConnectionError):
    """The server's answer is not valid HTTP/1.x."""


#: the largest stream event (SSE) or line (NDJSON) taken from an upstream: a bigger one is a
#: malformed answer. One unending event held every byte of it and was joined and split again on
#: every read (52 MB took 10 s of CPU, 105 MB 43 s, with the event loop stalled meanwhile)
MAX_EVENT_BYTES = 32 * 1024 * 1024
#: the largest whole answer (a non-streaming body) taken from an upstream, decompressed: a 2 GB
#: answer took the gateway to 5 GB of memory, and a 1 MB gzip bomb to 2 GB
MAX_BODY_BYTES = 64 * 1024 * 1024
#: what every answer may hold on its own, and what the answers past it share (in flight at once)
OWN_BYTES = 1024 * 1024
SHARED_BYTES = 256 * 1024 * 1024
_SHARED = [0]


def malformed_answer(what: str) -> errors.MalformedResponse:
    """A 200 answer the client refuses (``http.malformed`` for a provider named: the client does
    not know which provider it serves)."""
    return errors.MalformedResponse(f"upstream: malformed response: {what}", provider="upstream", http_status=200)


def too_large(size: int, limit: int) -> errors.MalformedResponse:
    return malformed_answer(f"a stream event or line over {limit} bytes ({size} so far)")


class BodyCut(Exception):
    """The connection ended (or broke) before the end of the answer's body."""


@dataclass(frozen=True, slots=True)
class Timeout:
    total: float | None = None
    connect: float | None = None
    read: float | None = None
    #: the wait for the answer's headers, where it is not ``read``'s (a stream's: its first content
    #: may take the request timeout, its silences afterwards the idle one)
    head: float | None = None


class Body:
    """The answer's body as it arrives (the interface the adapters use of aiohttp's
    ``StreamReader``): ``readany()`` returns what has arrived (``b""`` at the end),
    ``iter_any()`` iterates that, ``async for line in body`` iterates lines (with their
    ``\\n``), ``read()`` returns the rest."""

    __slots__ = ("_conn", "_deadline", "_done", "_error", "_pieces", "_read_timeout", "_size", "_waiter", "decoder")

    def __init__(self, conn: Connection | None, read_timeout: float | None, deadline: float | None = None) -> None:
        self._pieces: deque[bytes] = deque()
        self._size = 0
        self._done = False
        self._error: BaseException | None = None
        self._waiter: asyncio.Future[None] | None = None
        self._read_timeout = read_timeout
        #: the loop time by which the whole answer must have arrived (the call's total timeout)
        self._deadline = deadline
        self._conn = conn
        self.decoder: Any = None

    # --- fed by the connection ----------------------------------------------------------------
    def feed(self, data: bytes) -> None:
        if self.decoder is not None:
            # a read may inflate 100 times (and to 1 MiB at least): more is a bomb, refused before
            # it is inflated (64 MiB in one call held the event loop for a second)
            limit = min(MAX_BODY_BYTES, max(1 << 20, 100 * len(data)))
            try:
                data = self.decoder.decompress(data, limit)
            except zlib.error as e:
                self.fail(BodyCut(f"cannot decompress the body: {e}"))
                return
            if len(data) >= limit:
                self.fail(malformed_answer(f"a compressed body inflating past {limit} bytes in one read"))
                return
        if data:
            self._pieces.append(data)
            self._size += len(data)
            self._wake()

    def finish(self) -> None:
        if self._done:  # failed already (a body that inflates too far): the rest is not decoded
            return
        decoder = self.decoder
        if decoder is not None:
            tail = decoder.flush()
            if tail:
                self._pieces.append(tail)
                self._size += len(tail)
            if not decoder.eof:  # the compressed stream stopped short of its end
                self.fail(BodyCut("the compressed body ended before its end"))
                return
        self._done = True
        self._conn = None
        self._wake()

    def fail(self, error: BaseException) -> None:
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
        if len(pieces) == 1:
            data = pieces.popleft()
        else:
            data = b"".join(pieces)
            pieces.clear()
        self._size = 0
        conn = self._conn
        if conn is not None and conn.paused:
            conn.resume()
        return data

    def unread(self, data: bytes) -> None:
        """Put ``data`` (what the last ``readany`` gave) back in front of the body."""
        if data:
            self._pieces.appendleft(data)
            self._size += len(data)

    async def read(self, limit: int | None = None) -> bytes:
        """The whole body; past ``limit`` bytes, ``MalformedResponse`` (the rest is not read).
        Past :data:`OWN_BYTES`, an answer takes its bytes from :data:`SHARED_BYTES`, which all
        such answers in flight share; when those are taken, it is refused the same way: 80
        answers of 300 MB at once, each refused at 64 MiB, held 5.4 GB (a review)."""
        parts = []
        size = shared = 0
        try:
            while piece := await self.readany():
                parts.append(piece)
                size += len(piece)
                if limit is not None and size > limit:
                    raise malformed_answer(f"an answer over {limit} bytes")
                if size > OWN_BYTES:
                    extra = size - OWN_BYTES - shared
                    if _SHARED[0] + extra > SHARED_BYTES:
                        raise malformed_answer(
                            f"an answer over {OWN_BYTES} bytes while the large answers in flight hold "
                            f"{_SHARED[0]} bytes (at most {SHARED_BYTES})"
                        )
                    _SHARED[0] += extra
                    shared += extra
            return parts[0] if len(parts) == 1 else b"".join(parts)
        finally:
            _SHARED[0] -= shared

    async def read_at_most(self, limit: int) -> bytes:
        """The body's first ``limit`` bytes or fewer (the rest is not read)."""
        parts = []
        size = 0
        while size < limit and (piece := await self.readany()):
            parts.append(piece)
            size += len(piece)
        return b"".join(parts)[:limit]

    async def iter_any(self) -> AsyncIterator[bytes]:
        while piece := await self.readany():
            yield piece

    async def __aiter__(self) -> AsyncIterator[bytes]:
        """The body's lines (NDJSON), each with its ``\\n``; a line costs its length once, however
        many reads it spans (it was joined and split again on every read), and is at most
        :data:`MAX_EVENT_BYTES`."""
        rest: list[bytes] = []
        size = 0
        while piece := await self.readany():
            if b"\n" not in piece:
                rest.append(piece)
                size += len(piece)
                if size > MAX_EVENT_BYTES:
                    raise too_large(size, MAX_EVENT_BYTES)
                continue
            lines = (b"".join((*rest, piece)) if rest else piece).split(b"\n")
            last = lines.pop()
            rest, size = ([last], len(last)) if last else ([], 0)
            for line in lines:
                yield line + b"\n"
        if rest:
            yield b"".join(rest)

    def linger(self, seconds: float) -> None:
        """Nobody reads the rest: let the connection take it and be reused (``Connection.linger``)."""
        if not self._done and self._conn is not None:
            self._conn.linger(seconds)

    @property
    def ended(self) -> bool:
        """All of the body arrived, or the connection failed: nothing more will come."""
        return self._done

    def at_eof(self) -> bool:
        return self._done and not self._pieces

    @property
    def buffered(self) -> int:
        return self._size

    async def _wait(self) -> None:
        loop = asyncio.get_running_loop()
        waiter = self._waiter = loop.create_future()
        when = expiry(loop, self._read_timeout, self._deadline)
        timer = None if when is None else loop.call_at(when, expire, waiter, _SILENT)
        try:
            await waiter
        finally:
            self._waiter = None
            if timer is not None:
                timer.cancel()


def expiry(loop: asyncio.AbstractEventLoop, read_timeout: float | None, deadline: float | None) -> float | None:
    """When a wait for bytes expires (loop time): after ``read_timeout`` or at ``deadline``."""
    if read_timeout is None:
        return deadline
    when = loop.time() + read_timeout
    return when if deadline is None or when < deadline else deadline


_SILENT = "the server sent nothing more within the timeout"


def expire(waiter: asyncio.Future[Any], message: str) -> None:
    """A wait's timer: the waiter fails with TimeoutError unless it is done already."""
    if not waiter.done():
        waiter.set_exception(TimeoutError(message))


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
        """The whole body, at most :data:`MAX_BODY_BYTES` (past it, ``MalformedResponse``)."""
        return await self.content.read(MAX_BODY_BYTES)

    async def text(self, limit: int | None = None) -> str:
        """The body as text; with ``limit``, its first ``limit`` bytes only (an error's text)."""
        data = await self.read() if limit is None else await self.content.read_at_most(limit)
        return data.decode(_charset(self.headers.get("content-type")), errors="replace")


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
