"""Who pays for a timeout: an attempt whose whole request reached the provider is billed by it
whether or not its answer is read (billable at an unknown cost), one that never left is not.
A review gave up on three 6 s answers at 4 s each: all three were recorded free."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator

import pytest

from gateway import errors
from gateway.providers.base import Timeouts
from gateway.providers.openai import OpenAIProvider
from gateway.providers.upstream_http import UpstreamClient
from gateway.settings import ProviderSettings
from gateway.simulators.base import Fault
from gateway.simulators.openai import OpenAISimulator
from gateway.types import ChatRequest, Message

KEY = "sk-test"


def chat(text: str = "Hello") -> ChatRequest:
    return ChatRequest(model="gpt-4o", messages=[Message("user", text)])


@pytest.fixture
async def sim() -> AsyncIterator[OpenAISimulator]:
    async with OpenAISimulator(api_key=KEY) as s:
        yield s


async def call(provider: OpenAIProvider, request: ChatRequest, streaming: bool) -> None:
    if streaming:
        async for _ in provider.stream(request):
            pass
    else:
        await provider.complete(request)


@pytest.mark.parametrize("streaming", [False, True])
async def test_a_timeout_after_the_request_reached_the_provider_is_billed_unseen(
    sim: OpenAISimulator, session: UpstreamClient, timeouts: Timeouts, streaming: bool
) -> None:
    provider = OpenAIProvider(ProviderSettings(api_key=KEY, base_url=f"{sim.base_url}/v1"), session, timeouts)
    sim.faults.push(Fault("timeout", delay=2))
    with pytest.raises(errors.UpstreamTimeout) as info:
        await call(provider, chat(), streaming)
    assert info.value.billed_unseen is True


@pytest.fixture
async def deaf_port() -> AsyncIterator[int]:
    """A server that accepts connections and never reads from them."""
    held: list[asyncio.StreamWriter] = []

    async def hold(_reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        held.append(writer)

    server = await asyncio.start_server(hold, "127.0.0.1", 0, limit=1024)
    for sock in server.sockets:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    port = server.sockets[0].getsockname()[1]
    try:
        yield port
    finally:
        for writer in held:
            writer.close()
        server.close()


async def test_a_timeout_before_the_whole_request_left_is_not_billed(
    deaf_port: int, session: UpstreamClient, timeouts: Timeouts
) -> None:
    provider = OpenAIProvider(
        ProviderSettings(api_key=KEY, base_url=f"http://127.0.0.1:{deaf_port}/v1"), session, timeouts
    )
    with pytest.raises(errors.UpstreamTimeout) as info:
        await provider.complete(chat("x" * 32_000_000))  # more than any socket buffer takes
    assert info.value.billed_unseen is False
