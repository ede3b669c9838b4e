"""Clients that stop reading a stream: one that then leaves is a client gone, not a 500; one
that keeps its connection open is let go after the stream idle timeout, its attempt recorded
``cancelled`` (it held the handler and an upstream connection for as long
as it liked, and a stop waited for it past an orchestrator's grace period)."""

from __future__ import annotations

import asyncio
import json
import socket
import time
from collections.abc import AsyncIterator

import aiohttp
import pytest

from tests.e2e.test_metrics import samples
from tests.support.gateway import RunningGateway, running_gateway

#: seconds a write may wait for the client (the tests' stream idle timeout)
IDLE = 1.0


@pytest.fixture
async def gw() -> AsyncIterator[RunningGateway]:
    async with running_gateway(settings={"stream_idle_timeout": IDLE}) as running:
        # 3,000 chunks of 2 KB: far more than the socket buffers and the transport's hold
        running.sims["openai"].reply = " ".join(["x" * 2000] * 3000)
        yield running


def stalled_stream(url: str) -> socket.socket:
    """A stream asked for on a socket that reads nothing (a 4 KB receive buffer)."""
    host, port = url.removeprefix("http://").split(":")
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect((host, int(port)))
    body = json.dumps({"model": "gpt-4", "messages": [{"role": "user", "content": "hi"}], "stream": True}).encode()
    head = (
        "POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    )
    sock.sendall(head.encode() + body)
    return sock


async def recorded(gw: RunningGateway, within: float) -> list[str]:
    deadline = time.monotonic() + within
    while not gw.event_log.events and time.monotonic() < deadline:  # noqa: ASYNC110 - polls another task's list
        await asyncio.sleep(0.05)
    return [e.outcome for e in gw.event_log.events]


async def server_errors(gw: RunningGateway) -> float:
    async with aiohttp.ClientSession() as s, s.get(f"{gw.url}/metrics") as r:
        m = samples(await r.text())
    return m.get(("llm_gateway_requests_total", (("route", "/v1/chat/completions"), ("status", "500"))), 0.0)


async def test_a_client_that_stops_reading_then_leaves_is_gone_not_a_500(
    gw: RunningGateway, caplog: pytest.LogCaptureFixture
) -> None:
    sock = stalled_stream(gw.url)
    await asyncio.sleep(IDLE / 3)  # the gateway's write waits for the client now
    sock.close()
    assert await recorded(gw, within=5) == ["cancelled"]
    assert await server_errors(gw) == 0
    assert not [r for r in caplog.records if r.levelname == "ERROR"]


async def test_a_client_that_stops_reading_is_let_go_after_the_idle_timeout(gw: RunningGateway) -> None:
    sock = stalled_stream(gw.url)
    try:
        started = time.monotonic()
        assert await recorded(gw, within=IDLE * 8) == ["cancelled"]
        assert time.monotonic() - started >= IDLE * 0.9
        assert await server_errors(gw) == 0
        sock.settimeout(5)  # and the client's connection: it reads what was sent, then the end
        while sock.recv(65536):
            pass
    finally:
        sock.close()
