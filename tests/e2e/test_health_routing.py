"""Provider health end to end: a failing simulator trips its circuit, calls skip it, a probe
after the cool-down brings it back. The gateway's clock is manual; the simulators are real."""

from __future__ import annotations

import asyncio
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


async def open_then_half_open(gw: RunningGateway, clock: ManualClock) -> None:
    sim = gw.sims["openai"]
    sim.faults.always(Fault("server_error"))
    for _ in range(5):
        assert await ask(gw) == ("azure", "2")
    sim.faults.clear()
    clock.advance(30)


async def test_a_probe_that_reopens_the_circuit_is_not_retried(hgw: RunningGateway, clock: ManualClock) -> None:
    """The half-open probe gets a 503 (retryable): the circuit opens again on it, and the request
    falls back at once instead of retrying the provider it just found down (it retried twice
    and slept 1.5 s of its budget on it)."""
    await open_then_half_open(hgw, clock)
    sim = hgw.sims["openai"]
    sim.faults.push(Fault("overloaded"))
    waits_before = len(hgw.sleep.waits)
    assert await ask(hgw) == ("azure", "2")
    assert len(sim.requests) == 6 and hgw.sleep.waits[waits_before:] == []
    body = await provider_health(hgw)
    assert body["providers"]["openai"]["circuit"] == "open"


async def test_a_closed_circuit_that_opens_on_an_error_stops_the_retries_too(
    hgw: RunningGateway, clock: ManualClock
) -> None:
    """Four failures in a row, then a call whose 503 is the fifth: the circuit opens on it, and
    the call goes to Azure without a retry on OpenAI."""
    sim = hgw.sims["openai"]
    sim.faults.push(Fault("server_error"), times=4)
    for _ in range(4):
        assert await ask(hgw) == ("azure", "2")
    sim.faults.push(Fault("overloaded"), times=3)
    assert await ask(hgw) == ("azure", "2")
    assert len(sim.requests) == 5
    assert (await provider_health(hgw))["providers"]["openai"]["circuit"] == "open"


async def test_a_retry_in_half_open_is_the_one_probe_and_a_call_meanwhile_goes_elsewhere(
    hgw: RunningGateway, clock: ManualClock
) -> None:
    """The probe's 429 frees the probe slot (a rate limit proves nothing); its retry takes the
    slot again, so a call arriving while that retry is in flight is not a second probe."""
    await open_then_half_open(hgw, clock)
    sim = hgw.sims["openai"]
    sim.faults.push(Fault("rate_limit", retry_after=0.1))
    sim.faults.push(Fault("delay", delay=0.5))  # the retry: a success, slowly
    probe = asyncio.ensure_future(ask(hgw))
    for _ in range(200):
        if len(sim.requests) == 7:  # the retry is in flight
            break
        await asyncio.sleep(0.005)
    assert len(sim.requests) == 7
    assert (await provider_health(hgw))["providers"]["openai"]["probe_in_flight"] is True
    assert await ask(hgw) == ("azure", "1")  # not a second probe
    assert await probe == ("openai", "2")
    assert len(sim.requests) == 7


async def test_every_circuit_open_says_when_to_come_back(hgw: RunningGateway, clock: ManualClock) -> None:
    """The 503 of a call every provider's circuit refused carried no retry-after, though the
    gateway knows when the first lets a probe through: the SDK retried at 0.5 to 8 s into a 30 s
    cool-down (review)."""
    for sim in hgw.sims.values():
        sim.faults.always(Fault("server_error"))
    async with openai.AsyncOpenAI(base_url=hgw.base_url, api_key="unused", max_retries=0) as client:
        for _ in range(5):  # five failures in a row on each: both circuits open
            with pytest.raises(openai.APIStatusError):
                await client.chat.completions.create(model="gpt-4", messages=MESSAGES)
        clock.advance(12)
        with pytest.raises(openai.APIStatusError) as info:
            await client.chat.completions.create(model="gpt-4", messages=MESSAGES)
    response = info.value.response
    assert (response.status_code, response.headers["x-llm-attempts"]) == (503, "0")
    assert response.headers["retry-after"] == "18"  # 30 s of cool-down, 12 gone


async def test_a_restarted_gateway_remembers_an_open_circuit_from_the_log(
    tmp_path: Any, clock: ManualClock, caplog: pytest.LogCaptureFixture
) -> None:
    """A restart forgot every circuit: the provider that was down got the first calls again, five
    failures before its circuit opened anew. The embedded log holds the window's attempts."""
    caplog.set_level(logging.INFO, logger="gateway.health")
    settings = {"data_dir": tmp_path}
    async with running_gateway(
        providers=("openai", "azure"), clock=clock, event_log="settings", settings=settings
    ) as gw:
        gw.sims["openai"].faults.always(Fault("server_error"))
        for _ in range(5):
            clock.advance(1)
            assert await ask(gw) == ("azure", "2")
        assert (await provider_health(gw))["providers"]["openai"]["circuit"] == "open"
    clock.advance(5)
    async with running_gateway(
        providers=("openai", "azure"), clock=clock, event_log="settings", settings=settings
    ) as gw:
        assert (await provider_health(gw))["providers"]["openai"]["circuit"] == "open"
        assert await ask(gw) == ("azure", "1")  # openai is not asked
        assert not gw.sims["openai"].requests
    assert any(m.startswith("provider health: 10 attempts of the last 60 s read from the log") for m in caplog.messages)
    # past the window, nothing is read: the circuit is closed again
    clock.advance(200)
    async with running_gateway(
        providers=("openai", "azure"), clock=clock, event_log="settings", settings=settings
    ) as gw:
        assert (await provider_health(gw))["providers"]["openai"]["circuit"] == "closed"


async def test_a_gemini_models_daily_quota_is_a_rate_limit_that_leaves_the_other_models_served(
    clock: ManualClock,
) -> None:
    """Gemini's daily quotas are per model: a model out of its day's quota is a 429 the client
    may retry after the day's end (Pacific midnight), no failure of Google. Counted as one, five
    such calls opened Google's circuit, and a model with quota left got a 503 (a review)."""
    async with running_gateway(providers=("google",), clock=clock) as gw:
        async with openai.AsyncOpenAI(base_url=gw.base_url, api_key="unused", max_retries=0) as client:
            for _ in range(6):
                gw.sims["google"].faults.push(Fault("quota"))
                with pytest.raises(openai.RateLimitError) as info:
                    await client.chat.completions.create(model="gemini-1.5-pro", messages=MESSAGES)
                assert info.value.code == "rate_limit_exceeded"
                wait = int(info.value.response.headers["retry-after"])
                assert 1 <= wait <= 86_400 and len(gw.sims["google"].requests) == _ + 1  # no retry
            answer = await client.chat.completions.create(model="gemini-2.5-flash", messages=MESSAGES)
        assert answer.choices[0].message.content
        google = (await provider_health(gw))["providers"]["google"]
        # nor a rate limit of Google's: its rate-limit rate made it degraded till midnight (a re-test)
        assert (google["circuit"], google["state"]) == ("closed", "healthy"), google
        assert {e.error_code for e in gw.event_log.events if e.outcome == "rate_limited"} == {"daily_quota_exceeded"}
