"""A bug of the gateway's (an exception no code path expects), made on purpose: the answer is
still valid HTTP in the OpenAI error format, the attempt is recorded and billed, and the SDKs
do not retry a call a provider has billed."""

from __future__ import annotations

import json

import aiohttp
import openai
import pytest

from gateway.api import completions, responses
from gateway.pricing.base import format_usd
from gateway.usage import UsageRecorder
from tests.support.gateway import RunningGateway


def broken(*args: object, **kwargs: object) -> bytes:
    raise RuntimeError("a bug")


async def test_a_bug_mid_stream_ends_the_stream_with_an_error_event(
    gw: RunningGateway, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The stream had begun (its headers held for its first write): a 500 answer sent on it had a
    content-length and a chunked body, which no client could read."""
    monkeypatch.setattr(responses.ChunkFormatter, "sse", broken)
    body = {"model": "gpt-4", "messages": [{"role": "user", "content": "hi"}], "stream": True}
    async with aiohttp.ClientSession() as http:  # reads the chunked framing strictly
        async with http.post(f"{gw.base_url}/chat/completions", json=body) as resp:
            assert resp.status == 200
            assert resp.headers["content-type"].startswith("text/event-stream")
            text = (await resp.read()).decode()
    *events, last = [block for block in text.split("\n\n") if block]
    assert "[DONE]" not in text
    error = json.loads(last.removeprefix("data: "))["error"]
    assert error["code"] == "internal_error" and error["message"].startswith("Internal error; request id req_")
    assert events[-1].startswith(": x-llm-cost-usd=")
    [event] = gw.event_log.events
    assert (event.provider, event.outcome, event.error_code) == ("openai", "cancelled", "internal_error")
    assert event.cost_usd is not None and event.cost_usd > 0  # the provider made the answer: billed
    assert events[-1] == f": x-llm-cost-usd={format_usd(event.cost_usd)}"

    async with openai.AsyncOpenAI(base_url=gw.base_url, api_key="unused", max_retries=2) as client:
        stream = await client.chat.completions.create(
            model="gpt-4", messages=[{"role": "user", "content": "hi"}], stream=True
        )
        with pytest.raises(openai.APIError, match="Internal error"):
            _ = [chunk async for chunk in stream]
    assert len(gw.sims["openai"].requests) == 2  # one a call: nothing retried it


async def test_a_bug_after_the_call_is_a_500_the_sdk_does_not_retry(
    gw: RunningGateway, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The SDKs retry a 500 twice: after a billed attempt, three vendor calls for one create()."""
    monkeypatch.setattr(completions, "chat_completion", broken)
    async with openai.AsyncOpenAI(base_url=gw.base_url, api_key="unused", max_retries=2) as client:
        with pytest.raises(openai.InternalServerError) as info:
            await client.chat.completions.create(model="gpt-4", messages=[{"role": "user", "content": "hi"}])
    assert info.value.response.headers["x-should-retry"] == "false"
    assert info.value.code == "internal_error"
    assert len(gw.sims["openai"].requests) == 1
    [event] = gw.event_log.events
    assert event.outcome == "success" and event.cost_usd is not None and event.cost_usd > 0


async def test_a_bug_in_the_recording_of_a_stream_still_ends_it_in_valid_http(
    gw: RunningGateway, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The bug in the recording itself (pricing raising): ending the stream recorded again, raised
    again, and the 500 went out on the begun stream as before (a diff review)."""

    def broken_quote(*args: object, **kwargs: object) -> None:
        raise RuntimeError("a bug in pricing")

    monkeypatch.setattr(UsageRecorder, "quote", broken_quote)
    body = {"model": "gpt-4", "messages": [{"role": "user", "content": "hi"}], "stream": True}
    async with aiohttp.ClientSession() as http:
        async with http.post(f"{gw.base_url}/chat/completions", json=body) as resp:
            assert resp.status == 200
            text = (await resp.read()).decode()
    assert "[DONE]" not in text
    *_, cost, last = [block for block in text.split("\n\n") if block]
    assert cost == ": x-llm-cost-usd=unpriced"
    assert json.loads(last.removeprefix("data: "))["error"]["code"] == "internal_error"
