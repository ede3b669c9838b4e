"""Line framing of streamed responses: Server-Sent Events and newline-delimited JSON."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass

import aiohttp


@dataclass(slots=True)
class SseEvent:
    event: str | None
    data: str


async def iter_lines(content: aiohttp.StreamReader) -> AsyncIterator[str]:
    """Decoded lines without their ``\\n`` / ``\\r\\n`` endings."""
    async for raw in content:
        yield raw.decode("utf-8", errors="replace").rstrip("\r\n")


async def iter_sse_batches(content: aiohttp.StreamReader) -> AsyncIterator[list[SseEvent]]:
    """SSE events (``event:`` and joined ``data:`` lines), accepting LF and CRLF line ends, as
    one list per network read (never empty).

    Reads whatever the connection has (``iter_any``) and splits it into lines in one go: one
    await per network read instead of one per line, and the caller can answer a whole read
    with one write."""
    event: str | None = None
    data: list[str] = []
    pending = b""
    # a StreamReader yields what it has; any other async iterable of bytes (test fakes) works too
    pieces = content.iter_any() if hasattr(content, "iter_any") else content
    async for piece in pieces:
        lines = (pending + piece).split(b"\n")
        pending = lines.pop()  # an unfinished line (or b"") waits for the next read
        batch: list[SseEvent] = []
        for raw in lines:
            line = raw.decode("utf-8", errors="replace").rstrip("\r")
            if not line:
                if data:
                    batch.append(SseEvent(event, "\n".join(data)))
                event, data = None, []
                continue
            if line.startswith(":"):
                continue
            name, _, value = line.partition(":")
            if value.startswith(" "):
                value = value[1:]
            if name == "data":
                data.append(value)
            elif name == "event":
                event = value
        if batch:
            yield batch
    if pending:
        line = pending.decode("utf-8", errors="replace").rstrip("\r")
        name, _, value = line.partition(":")
        if name == "data":
            data.append(value[1:] if value.startswith(" ") else value)
    if data:
        yield [SseEvent(event, "\n".join(data))]


async def iter_sse(content: aiohttp.StreamReader) -> AsyncIterator[SseEvent]:
    """The events of :func:`iter_sse_batches` one by one."""
    async for batch in iter_sse_batches(content):
        for event in batch:
            yield event


async def iter_ndjson_lines(content: aiohttp.StreamReader) -> AsyncIterator[str]:
    """Non-empty lines of an NDJSON body."""
    async for line in iter_lines(content):
        if line.strip():
            yield line
