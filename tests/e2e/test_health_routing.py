"""Provider health end to end: a failing simulator trips its circuit, calls skip it, a probe
after the cool-down brings it back. The gateway's clock is manual; the simulators are real."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import openai
import pytest

from gateway.simulators.base import Fault
from tests.support.fakes import ManualClock
from tests.support.gateway import RunningGateway, running_gateway

MESSAGES: list[Any] = [{"role": "user", "content": "hi"}]


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@pytest.fixture
async def hgw(clock: ManualClock) -> AsyncIterator[RunningGateway]:
    async with running_gateway(providers=("openai", "azure"), clock=clock) as running:
        yield running


async def ask(gw: RunningGateway, *, stream: bool = False) -> tuple[str, str]:
    """(provider, attempts) of one gpt-4 call."""
    async with openai.AsyncOpenAI(base_url=gw.base_url, api_key="unused", max_retries=0) as client:
        if stream:
            streamed = await client.chat.completions.with_raw_response.create(
                model="gpt-4", messages=MESSAGES, stream=True
            )
            assert [chunk async for chunk in streamed.parse()]
            headers = streamed.headers
        else:
            raw = await client.chat.completions.with_raw_response.create(model="gpt-4", messages=MESSAGES)
            headers = raw.headers
    return headers["x-llm-provider"], headers["x-llm-attempts"]


async def provider_health(gw: RunningGateway) -> dict[str, Any]:
    async with aiohttp.ClientSession() as session, session.get(f"{gw.base_url}/providers/health") as response:
        assert response.status == 200
        body: dict[str, Any] = await response.json()
    return body


async def test_failing_provider_goes_down_is_skipped_then_a_probe_closes_it(
    hgw: RunningGateway, clock: ManualClock, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="gateway.health")
    sim = hgw.sims["openai"]
    sim.faults.always(Fault("server_error"))
    for _ in range(5):  # down_consecutive_failures: each call falls back to Azure
        clock.advance(1)
        assert await ask(hgw) == ("azure", "2")
    assert len(sim.requests) == 5

    body = await provider_health(hgw)
    openai_health = body["providers"]["openai"]
    assert (openai_health["state"], openai_health["circuit"], openai_health["consecutive_failures"]) == (
        "down",
        "open",
        5,
    )
    assert openai_health["window"]["attempts"] == 5 and openai_health["window"]["failures"] == 5
    assert openai_health["window"]["failure_rate"] == 1.0
    assert openai_health["models"]["gpt-4"]["window"]["failures"] == 5
    assert openai_health["last_transition"]["to"] == "down"
    assert "5 consecutive failures: upstream_error" in openai_health["last_transition"]["reason"]
    assert body["providers"]["azure"]["state"] == "healthy"
    assert body["providers"]["azure"]["window"]["successes"] == 5
    assert isinstance(body["providers"]["azure"]["window"]["latency_ms"]["p50"], float)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert (
        "circuit openai: closed -> open (5 consecutive failures: upstream_error, upstream_error, upstream_error, "
        "upstream_error, upstream_error)" in warnings
    )

    # open: skipped at once, streaming or not; the failing simulator sees nothing more
    for stream in (False, True, False):
        clock.advance(5)
        assert await ask(hgw, stream=stream) == ("azure", "1")
    sim.faults.clear()  # it recovered, but the cool-down (30 s from the 5th failure) is not over
    clock.advance(14)
    assert await ask(hgw) == ("azure", "1")
    assert len(sim.requests) == 5

    clock.advance(1)  # 30 s: half-open, the next call is the probe
    assert await ask(hgw) == ("openai", "1")
    assert len(sim.requests) == 6
    body = await provider_health(hgw)
    assert body["providers"]["openai"]["circuit"] == "closed"
    assert body["providers"]["openai"]["consecutive_failures"] == 0
    assert await ask(hgw) == ("openai", "1")
    infos = [r.getMessage() for r in caplog.records if r.name == "gateway.health" and r.levelno == logging.INFO]
    assert "circuit openai: open -> half_open (cool-down of 30s elapsed; letting one probe through)" in infos
    assert "circuit openai: half_open -> closed (probe succeeded after 30s)" in infos


async def test_a_failed_probe_reopens_for_twice_as_long(hgw: RunningGateway, clock: ManualClock) -> None:
    sim = hgw.sims["openai"]
    sim.faults.always(Fault("server_error"))
    for _ in range(5):
        assert await ask(hgw) == ("azure", "2")
    clock.advance(30)
    assert await ask(hgw) == ("azure", "2")  # the probe failed, Azure served the call
    assert len(sim.requests) == 6
    body = await provider_health(hgw)
    assert (body["providers"]["openai"]["circuit"], body["providers"]["openai"]["cooldown_seconds"]) == ("open", 60)
    clock.advance(59)
    assert await ask(hgw) == ("azure", "1")
    sim.faults.clear()
    clock.advance(1)
    assert await ask(hgw) == ("openai", "1")
    assert len(sim.requests) == 7


async def test_client_errors_do_not_trip_the_circuit(hgw: RunningGateway, clock: ManualClock) -> None:
    sim = hgw.sims["openai"]
    sim.faults.push(Fault("bad_request"), times=6)
    async with openai.AsyncOpenAI(base_url=hgw.base_url, api_key="unused", max_retries=0) as client:
        for _ in range(6):
            with pytest.raises(openai.BadRequestError):
                await client.chat.completions.create(model="gpt-4", messages=MESSAGES)
    body = await provider_health(hgw)
    assert body["providers"]["openai"]["state"] == "healthy"
    assert body["providers"]["openai"]["window"]["neutral"] == 6
    assert await ask(hgw) == ("openai", "1")
