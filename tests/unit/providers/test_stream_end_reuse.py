"""A stream's connection goes back to the pool when the body's end (the chunked terminator)
comes a moment after the vendor's end event: the next call reuses it instead of opening a new
one (with a real vendor, a TLS handshake), and the stream's end does not wait for it. A raw
HTTP/1.1 server writes the terminator late, or never."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Callable

import pytest

from gateway.providers.anthropic import AnthropicProvider
from gateway.providers.base import Provider, Timeouts
from gateway.providers.http import END_OF_BODY_WAIT
from gateway.providers.ollama import OllamaProvider
from gateway.providers.openai import OpenAIProvider
from gateway.providers.upstream_http import UpstreamClient
from gateway.settings import ProviderSettings
from gateway.types import ChatRequest, Message

ANTHROPIC = b"".join(
    f"event: {kind}\ndata: {json.dumps({'type': kind, **fields})}\n\n".encode()
    for kind, fields in [
        ("message_start", {"message": {"id": "m", "model": "claude-3-haiku", "usage": {"input_tokens": 3}}}),
        ("content_block_start", {"index": 0, "content_block": {"type": "text", "text": ""}}),
        ("content_block_delta", {"index": 0, "delta": {"type": "text_delta", "text": "hi"}}),
        ("content_block_stop", {"index": 0}),
        ("message_delta", {"delta": {"stop_reason": "end_turn"}, "usage": {"output_tokens": 1}}),
        ("message_stop", {}),
    ]
)
OPENAI = (
    b'data: {"id":"c","object":"chat.completion.chunk","model":"gpt-4o","choices":[{"index":0,'
    b'"delta":{"content":"hi"},"finish_reason":"stop"}]}\n\n'
    b'data: {"id":"c","object":"chat.completion.chunk","model":"gpt-4o","choices":[],'
    b'"usage":{"prompt_tokens":3,"completion_tokens":1,"total_tokens":4}}\n\n'
    b"data: [DONE]\n\n"
)
OLLAMA = (
    b'{"model":"llama3","message":{"role":"assistant","content":"hi"},"done":false}\n'
    b'{"model":"llama3","message":{"role":"assistant","content":""},"done":true,"done_reason":"stop",'
    b'"prompt_eval_count":3,"eval_count":1}\n'
)


class LateEndServer:
    """Answers every request on a connection with ``body`` as one chunk, then the terminating
    chunk ``gap`` seconds later (None: never); counts the connections it accepted and those the
    client closed."""

    def __init__(self, body: bytes, content_type: str, gap: float | None) -> None:
        self.body, self.content_type, self.gap = body, content_type, gap
        self.connections = 0
        self.closed_by_client = 0

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = next(
                    int(line.split(b":")[1])
                    for line in head.split(b"\r\n")
                    if line.lower().startswith(b"content-length")
                )
                await reader.readexactly(length)
                writer.write(
                    b"HTTP/1.1 200 OK\r\ncontent-type: " + self.content_type.encode() + b"\r\n"
                    b"transfer-encoding: chunked\r\n\r\n" + f"{len(self.body):x}\r\n".encode() + self.body + b"\r\n"
                )
                await writer.drain()
                if self.gap is None:
                    await reader.read()  # no terminator: wait for the client to hang up
                    self.closed_by_client += 1
                    break
                await asyncio.sleep(self.gap)
                writer.write(b"0\r\n\r\n")
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            self.closed_by_client += 1
        writer.close()


@pytest.fixture
async def late_end() -> AsyncIterator[Callable[[bytes, str], tuple[LateEndServer, str]]]:
    servers: list[asyncio.Server] = []

    async def start(body: bytes, content_type: str, gap: float | None = GAP) -> tuple[LateEndServer, str]:
        server = LateEndServer(body, content_type, gap)
        tcp = await asyncio.start_server(server.handle, "127.0.0.1", 0)
        servers.append(tcp)
        return server, f"http://127.0.0.1:{tcp.sockets[0].getsockname()[1]}"

    yield start  # type: ignore[misc]
    for tcp in servers:
        tcp.close()


#: how late the terminator comes
GAP = 0.05

CASES: list[tuple[str, bytes, str, Callable[[str, UpstreamClient, Timeouts], Provider], str]] = [
    (
        "anthropic",
        ANTHROPIC,
        "text/event-stream",
        lambda url, s, t: AnthropicProvider(ProviderSettings(api_key="k", base_url=url), s, t),
        "claude-3-haiku",
    ),
    (
        "openai",
        OPENAI,
        "text/event-stream",
        lambda url, s, t: OpenAIProvider(ProviderSettings(api_key="k", base_url=f"{url}/v1"), s, t),
        "gpt-4o",
    ),
    (
        "ollama",
        OLLAMA,
        "application/x-ndjson",
        lambda url, s, t: OllamaProvider(ProviderSettings(base_url=url), s, t),
        "llama3",
    ),
]


Case = tuple[str, bytes, str, Callable[[str, UpstreamClient, Timeouts], Provider], str]


@pytest.fixture(params=CASES, ids=[c[0] for c in CASES])
def case(request: pytest.FixtureRequest) -> Case:
    return request.param  # type: ignore[no-any-return]


async def test_the_next_stream_reuses_the_connection(
    late_end: Callable[..., object], session: UpstreamClient, timeouts: Timeouts, case: Case
) -> None:
    _, body, content_type, make, model = case
    server, url = await late_end(body, content_type)  # type: ignore[misc]
    provider = make(url, session, timeouts)
    request = ChatRequest(model=model, messages=[Message("user", "hi")], stream=True)
    for _ in range(3):
        started = time.monotonic()
        chunks = [chunk async for chunk in provider.stream(request)]
        took = time.monotonic() - started
        assert "".join(c.text for c in chunks) == "hi" and [c.finish_reason for c in chunks if c.finish_reason] == [
            "stop"
        ]
        assert took < GAP, f"the stream's end waited {took * 1000:.0f} ms for the body's end"
        await asyncio.sleep(2 * GAP)  # the terminator comes: the connection is back in the pool
    assert server.connections == 1


async def test_a_body_that_never_ends_is_closed_not_kept(
    late_end: Callable[..., object], session: UpstreamClient, timeouts: Timeouts, case: Case
) -> None:
    """No terminator ever: the connection is closed once the wait for it is over, and the next
    call opens a new one (nothing leaks, nothing is reused half-read)."""
    _, body, content_type, make, model = case
    server, url = await late_end(body, content_type, None)  # type: ignore[misc]
    provider = make(url, session, timeouts)
    request = ChatRequest(model=model, messages=[Message("user", "hi")], stream=True)
    _ = [chunk async for chunk in provider.stream(request)]
    async with asyncio.timeout(END_OF_BODY_WAIT + 2):
        while server.closed_by_client < 1:  # noqa: ASYNC110 - a counter, polled
            await asyncio.sleep(0.02)
    _ = [chunk async for chunk in provider.stream(request)]
    assert server.connections == 2
