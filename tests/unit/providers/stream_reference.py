"""The OpenAI stream path as it was before the fast path (commit f061e4a), kept as the oracle
of ``test_stream_fast_path``: line-by-line SSE framing in an async generator, then one JSON
parse and one ``parse_chunk`` per event, in a second generator.
"""

from __future__ import annotations

from collections.abc import AsyncIterable, AsyncIterator
from typing import Any

import orjson

from gateway import errors
from gateway.providers.http import malformed

# the usage report is read as the product reads it (since 2026-11-29: unreadable counts are usage
# unknown); this oracle is about the framing and the chunk path
from gateway.providers.openai_wire import (
    _choice_text,
    _first_choice,
    classify_inband_error,
    map_finish_reason,
    parse_usage,
)
from gateway.providers.sse import SseEvent
from gateway.types import StreamChunk


async def iter_sse_batches(pieces: AsyncIterable[bytes]) -> AsyncIterator[list[SseEvent]]:
    event: str | None = None
    data: list[str] = []
    pending = b""
    async for piece in pieces:
        lines = (pending + piece).split(b"\n")
        pending = lines.pop()
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


def _model(data: dict[str, Any]) -> str | None:
    model = data.get("model")
    return model if isinstance(model, str) and model else None


def parse_chunk(data: Any, *, provider: str) -> StreamChunk | None:
    if isinstance(data, dict) and data.get("error") is not None:
        raise classify_inband_error(provider, data)
    choice = _first_choice(provider, data)
    text, finish, refusal = "", None, None
    if choice is not None:
        text = _choice_text(provider, choice, "delta")
        delta = choice.get("delta")
        if isinstance(delta, dict) and delta.get("refusal") is not None:
            if not isinstance(delta["refusal"], str):
                raise malformed(provider, "delta.refusal is not text")
            refusal = delta["refusal"] or None  # a refusal piece: the chunk's refusal, not its text
        finish = map_finish_reason(choice.get("finish_reason"))
    usage = parse_usage(data.get("usage"))
    if not text and finish is None and usage is None and refusal is None:
        return None
    return StreamChunk(text=text, finish_reason=finish, usage=usage, model=_model(data), refusal=refusal)


def _event_chunk(event: SseEvent, provider: str) -> StreamChunk | None:
    try:
        data = orjson.loads(event.data)
    except ValueError as exc:
        raise malformed(provider, f"stream event is not JSON: {event.data[:200]!r}") from exc
    return parse_chunk(data, provider=provider)


async def parse_stream_batches(
    batches: AsyncIterator[list[SseEvent]], *, provider: str
) -> AsyncIterator[list[StreamChunk]]:
    async for events in batches:
        chunks: list[StreamChunk] = []
        for event in events:
            if event.data.strip() == "[DONE]":
                if chunks:
                    yield chunks
                return
            try:
                chunk = _event_chunk(event, provider)
            except errors.ProviderError:
                if chunks:
                    yield chunks
                raise
            if chunk is not None:
                chunks.append(chunk)
        if chunks:
            yield chunks
    raise errors.StreamCut(f"{provider}: stream ended without [DONE]", provider=provider, http_status=200)
