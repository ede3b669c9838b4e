"""A client that stops taking a stream: its connection is aborted once one write has waited
``limit`` seconds.

The gateway reads the upstream only as fast as the client takes the stream, so a client that
stops reading (and keeps its connection open) held the handler, the upstream stream and one of
the upstream host's pooled connections for as long as it liked: a review's three stalled readers
held theirs for 105 s and counting, past the upstream's own idle timeout, and a stop (SIGTERM)
waited for them (122 s), longer than an orchestrator's grace period before its SIGKILL, which
loses the event. Aborted, the pending write raises ``ConnectionError``: the stream is recorded
``cancelled`` and its upstream closed, as when the client leaves.

What counts is whether the client takes bytes, not how long one write takes: a sweep that sees
the bytes not yet taken shrink counts it as progress. Those are the transport's buffer and, on
Linux, the socket's send queue (``TIOCOUTQ``): the kernel takes megabytes of a loopback or LAN
connection's answer, and the transport's own buffer then stays the same for seconds while the
client reads steadily. (Timing the write alone cut a client reading a steady 100 KB/s: when the
upstream runs ahead, one upstream read of up to 1 MiB becomes one write, which such a client
takes longer than the limit to read; a re-test.)

One sweep for all the streams of a gateway, every quarter of ``limit`` (at most a second) while
any is open: a timer per stream cost 3% of a stream's CPU at 2,200 streams/s (each cancelled
timer stays in the event loop's heap until its time). A stream costs a set entry; a write, two
attribute stores and a clock read.
"""

from __future__ import annotations

import asyncio
import logging
import sys
import time
from collections.abc import Callable

try:
    import fcntl
    import termios
except ImportError:  # not a POSIX system: the transport's buffer alone
    fcntl = termios = None  # type: ignore[assignment]

log = logging.getLogger(__name__)


#: the ioctl that reads a socket's send queue (bytes the peer has not acknowledged), where known
_OUTQ: int | None = getattr(termios, "TIOCOUTQ", None) if termios is not None else None


def untaken(transport: asyncio.Transport) -> int:
    """Bytes written to ``transport`` that its peer has not taken yet."""
    size = transport.get_write_buffer_size()
    sock = transport.get_extra_info("socket")
    if _OUTQ is not None and sock is not None:
        try:
            size += int.from_bytes(fcntl.ioctl(sock.fileno(), _OUTQ, b"\0\0\0\0"), sys.byteorder, signed=True)
        except (OSError, ValueError):  # a socket closed meanwhile, not a TCP one
            pass
    return size


class Watch:
    """One stream's writes (:meth:`WriteWatches.watch`)."""

    __slots__ = ("_owner", "_request_id", "_seen", "_transport", "since")

    def __init__(self, owner: WriteWatches, transport: asyncio.Transport | None, request_id: str) -> None:
        self._owner = owner
        self._transport = transport
        self._request_id = request_id
        #: when the write in progress began, or last made progress (``time.monotonic()``); None
        #: between writes
        self.since: float | None = None
        #: the send buffer's size at the last sweep during this write (-1: not seen yet)
        self._seen = -1

    def begin(self) -> None:
        self.since = self._owner.clock()
        self._seen = -1

    def end(self) -> None:
        self.since = None

    def waited(self, now: float) -> float:
        """Seconds the write in progress has waited without the client taking a byte."""
        since = self.since
        if since is None:
            return 0.0
        transport = self._transport
        if transport is not None and not transport.is_closing():
            size = untaken(transport)
            if 0 <= size < self._seen:  # the client took some: progress
                self.since = since = now
            self._seen = size
        return now - since

    def close(self) -> None:
        self._owner.active.discard(self)

    def abort(self, waited: float) -> None:
        log.info("request %s: the client took nothing for %.0f s: closing its stream", self._request_id, waited)
        self.close()
        if self._transport is not None:
            self._transport.abort()


class WriteWatches:
    def __init__(self, limit: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.limit = limit
        self.clock = clock
        self.every = min(1.0, limit / 4)
        self.active: set[Watch] = set()
        self._timer: asyncio.TimerHandle | None = None

    def watch(self, transport: asyncio.Transport | None, request_id: str) -> Watch:
        watch = Watch(self, transport, request_id)
        self.active.add(watch)
        if self._timer is None:
            self._timer = asyncio.get_running_loop().call_later(self.every, self._sweep)
        return watch

    def _sweep(self) -> None:
        self._timer = None
        if not self.active:
            return
        now = self.clock()
        stalled = [(w, waited) for w in self.active if (waited := w.waited(now)) >= self.limit]
        for watch, waited in stalled:
            watch.abort(waited)
        self._timer = asyncio.get_running_loop().call_later(self.every, self._sweep)
