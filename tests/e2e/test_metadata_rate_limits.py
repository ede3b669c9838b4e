"""Rate limits of metadata pairs through the real gateway (real adapters, simulators, the
official SDK): a team over its requests a minute or its calls at once gets OpenAI's 429 naming
its pairs, before any provider is asked and with no usage event, whichever endpoint; the rest of
its tenant is served; an answer carries its tenant's ``x-ratelimit-*`` headers."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import aiohttp
import openai
import pytest

from gateway.settings import ApiKey
from gateway.simulators.base import Fault
from tests.support.gateway import running_gateway

KEYS = [
    ApiKey(key="sk-search", tenant="acme", metadata={"team": "search"}),
    ApiKey(key="sk-ads", tenant="acme", metadata={"team": "ads"}),
    ApiKey(key="sk-acme", tenant="acme"),
]
CHAT: dict[str, Any] = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}
LIMITS = {
    "tenants": {"acme": {"requests_per_minute": 100}},
    "metadata": [
        {"tenant": "acme", "match": {"team": "search"}, "requests_per_minute": 2, "max_concurrent_requests": 1}
    ],
}


def limited() -> Any:
    return running_gateway(providers=("openai",), settings={"api_keys": KEYS, "rate_limits": LIMITS})


async def test_a_team_over_its_requests_a_minute_is_refused_on_every_endpoint_and_the_tenant_served(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="gateway.limits")
    async with limited() as gw:
        assert "; 1 limit(s) of metadata pairs" in caplog.text
        async with openai.AsyncOpenAI(base_url=gw.base_url, api_key="sk-search", max_retries=0) as search:
            answer = await search.chat.completions.with_raw_response.create(**CHAT)
            assert answer.headers["x-ratelimit-limit-requests"] == "100"  # the tenant's limit
            await search.embeddings.create(model="text-embedding-3-small", input="x")
            asked, recorded = len(gw.sims["openai"].requests), len(gw.event_log.events)
            for call in (
                lambda: search.chat.completions.create(**CHAT, stream=True),
                lambda: search.completions.create(model="gpt-3.5-turbo-instruct", prompt="hi"),
                lambda: search.embeddings.create(model="text-embedding-3-small", input="x"),
            ):
                with pytest.raises(openai.RateLimitError) as refused:
                    await call()
                assert "for tenant 'acme', for calls with metadata 'team=search', on requests per min" in str(
                    refused.value.message
                )
                headers = refused.value.response.headers
                assert headers["x-ratelimit-limit-requests"] == "2" and 0 < int(headers["retry-after"]) <= 30
            assert len(gw.sims["openai"].requests) == asked and len(gw.event_log.events) == recorded
        # a key without the pair naming it falls under it too; the tenant's other teams do not
        async with openai.AsyncOpenAI(base_url=gw.base_url, api_key="sk-acme", max_retries=0) as acme:
            with pytest.raises(openai.RateLimitError):
                await acme.chat.completions.create(**CHAT, metadata={"team": "search"})
            await acme.chat.completions.create(**CHAT, metadata={"team": "Search"})
        async with openai.AsyncOpenAI(base_url=gw.base_url, api_key="sk-ads", max_retries=0) as ads:
            for _ in range(3):
                await ads.chat.completions.create(**CHAT)


async def test_a_teams_stream_holds_its_place_until_its_end() -> None:
    async with limited() as gw, aiohttp.ClientSession() as s:
        url = f"{gw.base_url}/chat/completions"

        async def call(key: str, body: dict[str, Any]) -> int:
            async with s.post(url, json=body, headers={"authorization": f"Bearer {key}"}) as r:
                await r.read()
                return r.status

        gw.sims["openai"].faults.push(Fault("delay", delay=0.5))
        streaming = asyncio.create_task(call("sk-search", {**CHAT, "stream": True}))
        await asyncio.sleep(0.2)  # it waits on the upstream
        async with s.post(url, json=CHAT, headers={"authorization": "Bearer sk-search"}) as r:
            refused = await r.json()
            assert r.status == 429 and "requests at once: Limit 1" in refused["error"]["message"]
        assert await call("sk-ads", CHAT) == 200  # the tenant has places
        assert await streaming == 200
        assert await call("sk-search", CHAT) == 200  # its place is back (its 2nd request of the minute)


async def test_a_limit_of_every_tenant_is_one_bucket_and_an_answer_says_its_own_tokens_taken() -> None:
    keys = [*KEYS, ApiKey(key="sk-globex", tenant="globex")]
    shared = {"metadata": [{"match": {"feature": "batch"}, "tokens_per_minute": 100000, "requests_per_minute": 3}]}
    async with running_gateway(providers=("openai",), settings={"api_keys": keys, "rate_limits": shared}) as gw:
        batch = {"metadata": {"feature": "batch"}}
        async with openai.AsyncOpenAI(base_url=gw.base_url, api_key="sk-acme", max_retries=0) as acme:
            answer = await acme.chat.completions.with_raw_response.create(**CHAT, **batch)
            used = answer.parse().usage
            assert used is not None
            # the tenant has no limit: the headers are the feature's, the call's own tokens taken
            assert answer.headers["x-ratelimit-limit-tokens"] == "100000"
            left = int(answer.headers["x-ratelimit-remaining-tokens"])
            assert 100000 - used.total_tokens - 2 <= left <= 100000 - used.total_tokens
            await acme.chat.completions.create(**CHAT, **batch)
        async with openai.AsyncOpenAI(base_url=gw.base_url, api_key="sk-globex", max_retries=0) as globex:
            await globex.chat.completions.create(**CHAT, **batch)  # the third of the shared three
            with pytest.raises(openai.RateLimitError) as refused:
                await globex.chat.completions.create(**CHAT, **batch)
            assert "for calls with metadata 'feature=batch' of every tenant together" in str(refused.value.message)
            await globex.chat.completions.create(**CHAT)  # its calls without the pair are under no limit
