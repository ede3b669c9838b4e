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


async def iter_sse(content: aiohttp.StreamReader) -> AsyncIterator[SseEvent]:
    """SSE events (``event:`` and joined ``data:`` lines), accepting LF and CRLF line ends."""
    event: str | None = None
    data: list[str] = []
    async for line in iter_lines(content):
        if not line:
            if data:
                yield SseEvent(event, "\n".join(data))
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
    if data:
        yield SseEvent(event, "\n".join(data))


async def iter_ndjson_lines(content: aiohttp.StreamReader) -> AsyncIterator[str]:
    """Non-empty lines of an NDJSON body."""
    async for line in iter_lines(content):
        if line.strip():
            yield line
