"""Line framing of streamed responses: Server-Sent Events and newline-delimited JSON."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from dataclasses import dataclass

from gateway.providers.upstream_response import Body

_CR_LF = re.compile(rb"\r+\n")


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

    __slots__ = ("_pending",)

    def __init__(self) -> None:
        self._pending = b""  # the start of an event whose blank line has not come yet

    def feed(self, piece: bytes) -> list[tuple[bytes | None, bytes]]:
        buffer = self._pending + piece if self._pending else piece
        if b"\r" in buffer:
            buffer = _CR_LF.sub(b"\n", buffer)  # a CR at the very end waits for its LF
        blocks = buffer.split(b"\n\n")
        self._pending = blocks.pop()
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
        pending, self._pending = self._pending, b""
        complete, _, last = pending.rpartition(b"\n")
        if last.partition(b":")[0] == b"data":
            complete = pending
        event = _block(complete.rstrip(b"\r")) if complete else None
        return [] if event is None else [event]


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
