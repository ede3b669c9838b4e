"""Rate limits through the real gateway (real adapters, simulators, the official SDK): a tenant
over its requests or tokens a minute gets OpenAI's 429 with the wait, before any provider is
asked and with no usage event; the SDK waits and retries on its own; every answer of a limited
tenant carries OpenAI's ``x-ratelimit-*`` headers."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import aiohttp
import openai
import pytest
from aiohttp import web

from gateway.api.state import STATE
from gateway.limits.limiter import reset_text
from gateway.settings import ApiKey
from tests.support.gateway import running_gateway

KEYS = [ApiKey(key="sk-a", tenant="tenant_a"), ApiKey(key="sk-b", tenant="tenant_b")]
CHAT: dict[str, Any] = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}


class Answered:
    def __init__(self) -> None:
        self.statuses: list[int] = []

    async def __call__(self, _request: web.Request, response: web.StreamResponse) -> None:
        self.statuses.append(response.status)

    def install(self, app: web.Application) -> None:
        app.on_response_prepare.append(self)


class Clock:
    """Still until started, then moving with real time (the SDK's retries sleep for real)."""

    def __init__(self) -> None:
        self.started: int | None = None

    def __call__(self) -> int:
        return 10**12 if self.started is None else 10**12 + time.monotonic_ns() - self.started


def limited(limits: dict[str, Any], answered: Answered | None = None) -> Any:
    return running_gateway(
        providers=("openai",),
        settings={"api_keys": KEYS, "rate_limits": limits},
        configure=answered.install if answered is not None else None,
    )


async def test_a_tenant_over_its_requests_a_minute_waits_and_the_sdk_retries_after_the_wait() -> None:
    answered = Answered()
    async with limited({"tenants": {"tenant_a": {"requests_per_minute": 120}}}, answered) as gw:
        clock = Clock()
        limits = gw.app[STATE].limits
        assert limits is not None
        limits._clock = clock  # still: however slow the machine, the 120 calls come at once
        async with openai.AsyncOpenAI(base_url=gw.base_url, api_key="sk-a", max_retries=0) as client:
            first = await client.chat.completions.with_raw_response.create(**CHAT)
            assert first.headers["x-ratelimit-limit-requests"] == "120"
            assert first.headers["x-ratelimit-remaining-requests"] == "119"
            for _ in range(119):
                await client.chat.completions.create(**CHAT)
            asked, events = len(gw.sims["openai"].requests), len(gw.event_log.events)
            with pytest.raises(openai.RateLimitError) as refused:
                await client.chat.completions.create(**CHAT)
            with pytest.raises(openai.RateLimitError):  # a stream is refused before it opens
                await client.chat.completions.create(**CHAT, stream=True)
            with pytest.raises(openai.RateLimitError):
                await client.embeddings.create(model="text-embedding-3-small", input="hi")
        error = refused.value
        assert error.code == "rate_limit_exceeded" and error.type == "requests"
        headers = error.response.headers
        assert headers["retry-after-ms"] == "500" and headers["retry-after"] == "1"
        assert headers["x-ratelimit-remaining-requests"] == "0" and "x-should-retry" not in headers
        assert len(gw.sims["openai"].requests) == asked and len(gw.event_log.events) == events  # none asked
        # another tenant is served
        async with openai.AsyncOpenAI(base_url=gw.base_url, api_key="sk-b", max_retries=0) as other:
            served = await other.chat.completions.with_raw_response.create(**CHAT)
            assert "x-ratelimit-limit-requests" not in served.headers  # it has no limit
        # the SDK's own retries wait retry-after-ms and get through
        answered.statuses.clear()
        clock.started = time.monotonic_ns()
        async with openai.AsyncOpenAI(base_url=gw.base_url, api_key="sk-a", max_retries=2) as client:
            await client.chat.completions.create(**CHAT)
        assert answered.statuses[-1] == 200 and 429 in answered.statuses


async def test_a_tenant_over_its_tokens_a_minute_is_refused_until_the_bucket_refills(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="gateway.limits")
    async with limited({"default": {"tokens_per_minute": 5}}) as gw:
        assert "rate limits: 0 tenant(s) listed; every other tenant: 5 tokens a minute" in caplog.messages
        limits = gw.app[STATE].limits
        assert limits is not None
        limits._clock = Clock()  # still
        async with openai.AsyncOpenAI(base_url=gw.base_url, api_key="sk-a", max_retries=0) as client:
            async with client.chat.completions.with_streaming_response.create(
                **CHAT, stream=True, stream_options={"include_usage": True}
            ) as streamed:
                assert streamed.headers["x-ratelimit-limit-tokens"] == "5"
                assert streamed.headers["x-ratelimit-remaining-tokens"] == "5"
                async for _ in streamed.iter_lines():
                    pass
            used = gw.event_log.events[-1].prompt_tokens + gw.event_log.events[-1].completion_tokens
            assert used > 5  # the simulator's answer: the bucket owes tokens
            with pytest.raises(openai.RateLimitError) as refused:
                await client.chat.completions.create(**CHAT)
        assert refused.value.type == "tokens"
        wait_ms = int(refused.value.response.headers["retry-after-ms"])
        assert wait_ms == (used - 5 + 1) * 12_000  # 5 a minute: 12 s a token
        assert refused.value.response.headers["retry-after"] == str(-(-wait_ms // 1000))
        # tenant_b has a bucket of its own
        async with aiohttp.ClientSession() as s:
            headers = {"authorization": "Bearer sk-b"}
            async with s.post(f"{gw.base_url}/chat/completions", json=CHAT, headers=headers) as r:
                # its own tokens are taken (the headers of its admission said 5)
                assert r.status == 200 and r.headers["x-ratelimit-remaining-tokens"] == "0"
                assert r.headers["x-ratelimit-reset-tokens"] == reset_text(used * 12)  # 9 tokens to refill


async def test_a_budget_refusal_comes_first_and_takes_no_request(tmp_path: Any) -> None:
    async with running_gateway(
        providers=("openai",),
        event_log="settings",
        settings={
            "data_dir": tmp_path,
            "api_keys": KEYS,
            "budgets": {"tenants": {"tenant_a": {"usd": "0"}}},
            "rate_limits": {"default": {"requests_per_minute": 1}},
        },
    ) as gw:
        async with openai.AsyncOpenAI(base_url=gw.base_url, api_key="sk-a", max_retries=0) as client:
            for _ in range(3):
                with pytest.raises(openai.RateLimitError) as refused:
                    await client.chat.completions.create(**CHAT)
                assert refused.value.code == "budget_exceeded"  # not the rate limit of 1 a minute
        limits = gw.app[STATE].limits
        assert limits is not None and "tenant_a" not in limits._tenants  # no request taken


async def test_an_admitted_call_that_fails_still_says_where_the_tenant_stands() -> None:
    """Only served answers had the headers: a limited tenant's 502, 404 or provider refusal had
    none (a review). A refusal is counted apart from an upstream's rate limit in the metrics."""
    from gateway.simulators.base import Fault

    limits = {"default": {"requests_per_minute": 5, "tokens_per_minute": 1000}}
    async with limited(limits) as gw, aiohttp.ClientSession() as s:
        headers = {"authorization": "Bearer sk-a"}
        gw.sims["openai"].faults.push(Fault("server_error"), times=10)
        async with s.post(f"{gw.base_url}/chat/completions", json=CHAT, headers=headers) as r:
            assert r.status == 502
            assert (r.headers["x-ratelimit-remaining-requests"], r.headers["x-ratelimit-limit-tokens"]) == ("4", "1000")
        gw.sims["openai"].faults.clear()
        for body, status in (({**CHAT, "model": "no-such-model"}, 404), ({**CHAT, "stream": True}, 200)):
            async with s.post(f"{gw.base_url}/chat/completions", json=body, headers=headers) as r:
                await r.read()
                assert r.status == status and "x-ratelimit-remaining-requests" in r.headers
        legacy = {"model": "gpt-3.5-turbo-instruct", "prompt": "hi"}
        async with s.post(f"{gw.base_url}/completions", json=legacy, headers=headers) as r:
            assert r.status == 200 and r.headers["x-ratelimit-remaining-requests"] == "1"
        async with s.post(
            f"{gw.base_url}/embeddings", json={"model": "text-embedding-3-small", "input": "x"}, headers=headers
        ) as r:
            assert r.status == 200 and r.headers["x-ratelimit-remaining-requests"] == "0"
        async with s.post(f"{gw.base_url}/chat/completions", json=CHAT, headers=headers) as r:
            assert r.status == 429
            assert r.headers["x-ratelimit-limit-tokens"] == "1000"  # both limits, on the refusal too
        async with s.get(f"{gw.url}/metrics") as r:
            metrics = await r.text()
        assert 'llm_gateway_error_answers_total{code="tenant_rate_limited"} 1.0' in metrics
        assert 'code="rate_limit_exceeded"' not in metrics


async def test_calls_at_once_hold_their_place_until_their_end_streams_included(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="gateway.limits")
    from gateway.simulators.base import Fault

    async with limited({"default": {"max_concurrent_requests": 2}}) as gw, aiohttp.ClientSession() as s:
        assert "rate limits: 0 tenant(s) listed; every other tenant: 2 requests at once" in caplog.messages
        headers = {"authorization": "Bearer sk-a"}
        url = f"{gw.base_url}/chat/completions"

        async def call(body: dict[str, Any]) -> int:
            async with s.post(url, json=body, headers=headers) as r:
                await r.read()
                return r.status

        gw.sims["openai"].faults.push(Fault("delay", delay=0.5), times=2)
        running = asyncio.gather(call(CHAT), call({**CHAT, "stream": True}))
        await asyncio.sleep(0.2)  # both wait on the upstream
        asked = len(gw.sims["openai"].requests)
        async with s.post(url, json=CHAT, headers=headers) as r:
            refused = await r.json()
            assert r.status == 429 and r.headers["retry-after"] == "1"
        assert refused["error"]["type"] == "requests" and "at once: Limit 2" in refused["error"]["message"]
        assert len(gw.sims["openai"].requests) == asked
        async with s.post(url, json=CHAT, headers={"authorization": "Bearer sk-b"}) as r:
            assert r.status == 200  # tenant_b has places of its own
        assert await running == [200, 200]
        # ended: their places are free again; a failed call gives its place back too
        gw.sims["openai"].faults.push(Fault("server_error"), times=30)
        assert [await call(CHAT) for _ in range(3)] == [502, 502, 502]
        gw.sims["openai"].faults.clear()
        assert await asyncio.gather(call(CHAT), call(CHAT)) == [200, 200]
