"""Line framing of streamed responses: Server-Sent Events and newline-delimited JSON."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from dataclasses import dataclass

from gateway.providers.upstream_response import MAX_EVENT_BYTES, Body, too_large

_CR_LF = re.compile(rb"\r+\n")
#: a blank line, whatever CRs its line ends carry
_BLANK = re.compile(rb"\n\r*\n")


@dataclass(slots=True)
class SseEvent:
    event: str | None
    data: str


class SseFramer:
    """Incremental SSE framing without awaits: :meth:`feed` one network read, get the events it
    completed (``event:`` name and joined ``data:`` lines, both as bytes; events without data
    are dropped); :meth:`close` at the end of the body gives an unterminated last event.

    Lines end with LF or CRLF (any CRs before the LF are dropped). The usual event, one
    ``data: ...`` line, costs a slice: a read is split into events on blank lines once, and only
    events with several lines, comments or fields other than ``data`` are looked at line by line.
    """

    __slots__ = ("_more", "_pending", "_size", "_tail")

    def __init__(self) -> None:
        self._pending = b""  # the start of an event whose blank line has not come yet
        self._more: list[bytes] = []  # reads after it without a blank line: joined once one comes
        self._size = 0  # bytes of the event so far
        self._tail = b""  # its end from its last LF on, when only CRs follow that LF

    def feed(self, piece: bytes) -> list[tuple[bytes | None, bytes]]:
        if self._pending:
            # a blank line that ends the event has its last LF in this read: look at this read
            # and the open line end before it only, so a long event costs its length once, not
            # its length squared
            if not _BLANK.search(self._tail + piece):
                self._more.append(piece)
                self._size += len(piece)
                if self._size > MAX_EVENT_BYTES:
                    raise too_large(self._size, MAX_EVENT_BYTES)
                self._tail = _open_line_end(self._tail, piece)
                return []
            buffer = b"".join((self._pending, *self._more, piece))
            self._more.clear()
        else:
            buffer = piece
        if b"\r" in buffer:
            buffer = _CR_LF.sub(b"\n", buffer)  # a CR at the very end waits for its LF
        blocks = buffer.split(b"\n\n")
        self._pending = pending = blocks.pop()
        self._size = len(pending)
        if self._size > MAX_EVENT_BYTES:
            raise too_large(self._size, MAX_EVENT_BYTES)
        self._tail = _open_line_end(b"", pending)
        events: list[tuple[bytes | None, bytes]] = []
        for block in blocks:
            if block[:6] == b"data: " and b"\n" not in block:
                events.append((None, block[6:]))
            else:
                event = _block(block)
                if event is not None:
                    events.append(event)
        return events

    def close(self) -> list[tuple[bytes | None, bytes]]:
        """The last event when the body ends without its blank line (none when it has no data).

        Its unfinished last line counts only if it is a ``data`` line."""
        pending = b"".join((self._pending, *self._more))
        self._pending, self._more, self._size, self._tail = b"", [], 0, b""
        if b"\r" in pending:
            pending = _CR_LF.sub(b"\n", pending)  # reads kept apart are not normalised yet
        complete, _, last = pending.rpartition(b"\n")
        if last.partition(b":")[0] == b"data":
            complete = pending
        event = _block(complete.rstrip(b"\r")) if complete else None
        return [] if event is None else [event]


_LINE_END_OPEN = re.compile(rb"\n\r*\Z")


def _open_line_end(tail: bytes, piece: bytes) -> bytes:
    """The end of ``tail + piece`` from its last LF on if only CRs follow it, else b"" (what a
    blank line may start with, for the next read to finish)."""
    found = _LINE_END_OPEN.search(piece)
    if found:
        return piece[found.start() :]
    if tail and not piece.strip(b"\r"):  # CRs only: the line end stays open
        return tail + piece
    return b""


def _block(block: bytes) -> tuple[bytes | None, bytes] | None:
    """One event's lines: its name and data, None without data. Blank lines come only first
    (a run of more than two line ends) or last (a CR-only line at the end of the body)."""
    name: bytes | None = None
    data: list[bytes] = []
    for line in block.split(b"\n"):
        if not line:
            if data:
                break
            name = None
            continue
        if line[:1] == b":":
            continue
        field, _, value = line.partition(b":")
        if value[:1] == b" ":
            value = value[1:]
        if field == b"data":
            data.append(value)
        elif field == b"event":
            name = value
    if not data:
        return None
    return name, b"\n".join(data)


def decode_event(event: tuple[bytes | None, bytes]) -> SseEvent:
    """A framed event as text (invalid UTF-8 replaced)."""
    name, data = event
    return SseEvent(
        None if name is None else name.decode("utf-8", errors="replace"), data.decode("utf-8", errors="replace")
    )


async def iter_lines(content: Body) -> AsyncIterator[str]:
    """Decoded lines without their ``\\n`` / ``\\r\\n`` endings."""
    async for raw in content:
        yield raw.decode("utf-8", errors="replace").rstrip("\r\n")


async def iter_sse_batches(content: Body) -> AsyncIterator[list[SseEvent]]:
    """SSE events (``event:`` and joined ``data:`` lines), accepting LF and CRLF line ends, as
    one list per network read (never empty).

    Reads whatever the connection has (``iter_any``) and frames it with :class:`SseFramer`:
    one await per network read instead of one per line, and the caller can answer a whole read
    with one write."""
    framer = SseFramer()
    # a Body yields what it has; any other async iterable of bytes (test fakes) works too
    pieces = content.iter_any() if hasattr(content, "iter_any") else content
    async for piece in pieces:
        events = framer.feed(piece)
        if events:
            yield [decode_event(event) for event in events]
    events = framer.close()
    if events:
        yield [decode_event(event) for event in events]


async def iter_sse(content: Body) -> AsyncIterator[SseEvent]:
    """The events of :func:`iter_sse_batches` one by one."""
    async for batch in iter_sse_batches(content):
        for event in batch:
            yield event


async def iter_ndjson_lines(content: Body) -> AsyncIterator[str]:
    """Non-empty lines of an NDJSON body."""
    async for line in iter_lines(content):
        if line.strip():
            yield line
