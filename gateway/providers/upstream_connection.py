"""One keep-alive HTTP/1.1 connection of the upstream client: sends a request, parses the answer
(status line, headers, then a body by ``content-length``, chunked, or until the server closes)
as bytes arrive, and goes back to its pool when the answer was read to its end."""

from __future__ import annotations

import asyncio
import zlib
from typing import Protocol

from multidict import CIMultiDict, CIMultiDictProxy

from gateway.providers.upstream_response import Body, BodyCut, ProtocolViolation, Response, expire, expiry

#: the largest status line + headers accepted
MAX_HEAD = 64 * 1024
#: stop reading from the socket while this much body is buffered and unread
HIGH_WATER = 1 << 20
_NO_BODY_STATUSES = frozenset((204, 304))


class ConnectionPool(Protocol):
    def release(self, conn: Connection) -> None: ...

    def forget(self, conn: Connection) -> None: ...


#: seconds between two looks at a request still in the transport's buffer
OUT_WATCH = 0.05


def unsent(transport: asyncio.BaseTransport) -> int:
    """The bytes written to ``transport`` that have not left the process. A TLS transport counts
    only what it has not encrypted yet: what waits in the TCP transport under it is added (a
    46 MB body still leaving counted as sent, and billed when its upload was reset: a re-test)."""
    size: int = transport.get_write_buffer_size()  # type: ignore[attr-defined]
    beneath = getattr(getattr(transport, "_ssl_protocol", None), "_transport", None)
    if beneath is not None:
        size += beneath.get_write_buffer_size()
    return size


# parser states
_HEAD, _LENGTH, _CHUNK_SIZE, _CHUNK_DATA, _CHUNK_END, _TRAILERS, _UNTIL_CLOSE, _IDLE = range(8)


class Connection(asyncio.Protocol):
    """One keep-alive connection: parses the answer to the request in flight."""

    def __init__(self, pool: ConnectionPool) -> None:
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
        self._deadline: float | None = None
        self._body: Body | None = None
        self._lingering: asyncio.TimerHandle | None = None
        #: when the request in flight had all left the gateway (loop time), None while part of it
        #: waits in the transport's buffer (a large body on a slow link)
        self.out_at: float | None = None
        self._out_watch: asyncio.TimerHandle | None = None

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
        except ValueError as e:  # a number that is not one (int() of a non-ASCII digit)
            self._error(ProtocolViolation(f"malformed answer: {e}"))

    def eof_received(self) -> bool | None:
        self._lost(None)
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        self._lost(exc)

    # --- one exchange -------------------------------------------------------------------------
    def send(
        self,
        head: bytes,
        body: bytes,
        read_timeout: float | None,
        deadline: float | None,
        head_timeout: float | None = None,
    ) -> asyncio.Future[Response]:
        """Write the request; the future is the answer once its headers are in. It fails with
        TimeoutError after ``head_timeout`` (default: ``read_timeout``) or at ``deadline`` (loop
        time), whichever is first; every later wait for the body after ``read_timeout`` or at
        ``deadline``."""
        loop = asyncio.get_running_loop()
        self._head = future = loop.create_future()
        self._state = _HEAD
        self._read_timeout = read_timeout
        self._deadline = deadline
        when = expiry(loop, read_timeout if head_timeout is None else head_timeout, deadline)
        if when is not None:
            self._head_timer = loop.call_at(when, expire, future, "no answer from the server within the timeout")
        assert self.transport is not None
        self.transport.writelines((head, body))
        self.out_at = None
        self._check_out()
        return future

    def _check_out(self) -> None:
        """Note when the request has all left the transport's buffer; looked at every 50 ms while
        some is left (only a body larger than the socket takes at once). A reset cut short an
        upload and the request counted as the provider's, whose buffer was cleared before the
        loss was seen (a diff review)."""
        self._out_watch = None
        transport = self.transport
        if transport is None or self.closed or self._state == _IDLE:
            return
        if unsent(transport) == 0:
            self.out_at = asyncio.get_running_loop().time()
        else:
            self._out_watch = asyncio.get_running_loop().call_later(OUT_WATCH, self._check_out)

    def linger(self, seconds: float) -> None:
        """The caller has what it wanted of this answer (the vendor's end event came) and stops
        reading before the body's end (the chunked terminator, a moment later): the connection
        finishes the body by itself and goes back to the pool, or is closed if the end has not
        come within ``seconds``. Nobody waits for it."""
        if self._state != _IDLE and not self.closed and self._lingering is None:
            self._lingering = asyncio.get_running_loop().call_later(seconds, self._give_up)

    def _give_up(self) -> None:
        self._lingering = None
        if self._state != _IDLE:
            self.reusable = False
            self._close()

    def abandon(self) -> None:
        """The caller stopped before the end of the answer: this connection cannot be reused
        (unless it lingers for the end: see ``linger``)."""
        if self._lingering is not None:
            return
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
            elif state == _CHUNK_SIZE or state == _CHUNK_DATA or state == _CHUNK_END:
                if not self._parse_chunks():
                    return
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
        status_line, _, fields = buffer[:end].decode("latin-1").partition("\r\n")
        self._buffer = buffer[end + 4 :]
        version, _, rest = status_line.partition(" ")
        code, _, reason = rest.partition(" ")
        if not version.startswith("HTTP/1.") or len(code) != 3 or not (code.isascii() and code.isdigit()):
            raise ProtocolViolation(f"not an HTTP/1.x status line: {status_line[:100]!r}")
        status = int(code)
        pairs = []
        for line in fields.split("\r\n") if fields else ():
            name, colon, value = line.partition(":")
            if not colon or not name or name[-1] in " \t":
                raise ProtocolViolation(f"malformed header line: {line[:100]!r}")
            pairs.append((name, value.strip()))
        headers: CIMultiDict[str] = CIMultiDict(pairs)
        if 100 <= status < 200:  # an interim answer (100 Continue, 103 Early Hints): skip it
            return True
        connection = headers.get("connection")
        if version == "HTTP/1.0" or (connection is not None and "close" in connection.lower()):
            self.reusable = False
        body = Body(self, self._read_timeout, self._deadline)
        encoding = headers.get("content-encoding")
        if encoding is not None and (encoding := encoding.strip().lower()) != "identity":
            if encoding not in ("gzip", "x-gzip", "deflate"):
                raise ProtocolViolation(f"unsupported content-encoding {encoding!r}")
            body.decoder = zlib.decompressobj(47 if encoding != "deflate" else zlib.MAX_WBITS)
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
            length = length.strip()
            if not (length.isascii() and length.isdigit()):
                raise ProtocolViolation(f"bad content-length {length!r}")
            if len(set(headers.getall("content-length"))) > 1:
                raise ProtocolViolation("conflicting content-length headers")
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

    def _parse_chunks(self) -> bool:
        """Decode as many chunks as the buffer holds, walking it with an offset (one copy of
        what is left at the end, not one per chunk), and hand their data to the body in one
        piece. True when the last chunk was seen (trailers follow), False when more bytes are
        needed."""
        buffer = self._buffer
        size = len(buffer)
        pos = 0
        state = self._state
        remaining = self._remaining
        pieces: list[bytes] = []
        last = False
        try:
            while pos < size:
                if state == _CHUNK_DATA:
                    take = remaining if remaining < size - pos else size - pos
                    pieces.append(buffer[pos : pos + take])
                    pos += take
                    remaining -= take
                    if remaining == 0:
                        state = _CHUNK_END
                elif state == _CHUNK_END:
                    if size - pos < 2:
                        break
                    if buffer[pos : pos + 2] != b"\r\n":
                        raise ProtocolViolation("a chunk does not end with CRLF")
                    pos += 2
                    state = _CHUNK_SIZE
                else:
                    end = buffer.find(b"\r\n", pos)
                    if end < 0:
                        if size - pos > 1024:
                            raise ProtocolViolation("a chunk size line is too long")
                        break
                    text = buffer[pos:end]
                    if not text.isalnum():  # an extension (";name=value") or spaces
                        text = text.split(b";", 1)[0].strip()
                    if not text or text.strip(b"0123456789abcdefABCDEF"):
                        raise ProtocolViolation(f"bad chunk size {text[:20]!r}")
                    pos = end + 2
                    remaining = int(text, 16)
                    if remaining == 0:
                        state = _TRAILERS
                        last = True
                        break
                    stop = pos + remaining
                    if stop + 2 <= size and buffer[stop : stop + 2] == b"\r\n":  # the whole chunk is here
                        pieces.append(buffer[pos:stop])
                        pos = stop + 2
                        remaining = 0
                        continue
                    state = _CHUNK_DATA
        finally:
            self._buffer = buffer[pos:] if pos else buffer
            self._state = state
            self._remaining = remaining
            if pieces:
                self._deliver(pieces[0] if len(pieces) == 1 else b"".join(pieces))
        return last

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
            body.feed(piece)
            if body.buffered > HIGH_WATER:
                self.pause()

    def _complete(self) -> None:
        body, self._body = self._body, None
        self._state = _IDLE
        if self._lingering is not None:
            self._lingering.cancel()
            self._lingering = None
        if self._buffer:  # bytes after the answer: never reuse
            self.reusable = False
        if body is not None:
            body.finish()
        if self.reusable and not self.closed:
            self.resume()
            self.pool.release(self)
        else:
            self._close()

    # --- the end ------------------------------------------------------------------------------
    def _lost(self, exc: Exception | None) -> None:
        """The server closed the connection (or it broke): ends a body read until close, fails
        an answer in progress."""
        if self.closed:
            return
        if self._state == _UNTIL_CLOSE:
            body, self._body = self._body, None
            self._state = _IDLE
            if body is not None:
                body.finish()
        elif self._state != _IDLE:
            reason = f": {exc}" if exc else ""
            self._fail_pending(ConnectionResetError(f"the server closed the connection{reason}"))
        self._close()

    def _error(self, error: BaseException) -> None:
        self._fail_pending(error)
        self.reusable = False
        self._close()

    def _fail_pending(self, error: BaseException) -> None:
        """Whoever waits on this connection (for the headers, for the body) gets ``error``."""
        head, self._head = self._head, None
        self._cancel_head_timer()
        if head is not None and not head.done():
            head.set_exception(error)
        body, self._body = self._body, None
        if body is not None:
            body.fail(error if isinstance(error, ProtocolViolation) else BodyCut(str(error)))
        self._state = _IDLE

    def _cancel_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _close(self) -> None:
        if self._lingering is not None:
            self._lingering.cancel()
            self._lingering = None
        if self._out_watch is not None:
            self._out_watch.cancel()
            self._out_watch = None
        if not self.closed:
            self.closed = True
            self.pool.forget(self)
        if self._head is not None or self._body is not None:  # closed by us mid-answer
            self._fail_pending(ConnectionAbortedError("the connection was closed by the gateway"))
        if self.transport is not None:
            self.transport.close()
