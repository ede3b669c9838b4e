"""A 200 answer an adapter cannot read, whose usage it can: the provider bills it whatever is wrong
with its content, so the failed attempt carries that usage (it was recorded free, and the call
fell back and paid again)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import pytest
from aiohttp import web

from gateway import errors
from gateway.providers import anthropic, google, ollama, openai
from gateway.providers.base import Timeouts
from gateway.providers.upstream_http import UpstreamClient
from gateway.settings import ProviderSettings
from gateway.types import ChatRequest, Message, Usage

BODIES: dict[str, tuple[Any, Any, Usage]] = {
    # vendor: (module, the 200 body, the usage it reports)
    "openai": (
        openai,
        {"choices": [{"message": {"content": 5}}], "usage": {"prompt_tokens": 100, "completion_tokens": 20}},
        Usage(100, 20),
    ),
    "anthropic": (
        anthropic,
        {
            "type": "message",
            "content": [{"type": "text", "text": 5}],
            "usage": {"input_tokens": 30, "output_tokens": 40},
        },
        Usage(30, 40),
    ),
    "google": (
        google,
        {
            "candidates": [{"content": {"parts": "oops"}}],
            "usageMetadata": {"promptTokenCount": 100, "candidatesTokenCount": 20},
        },
        Usage(100, 20),
    ),
    "ollama": (
        ollama,
        {
            "model": "llama3",
            "message": {"role": "assistant", "content": 5},
            "done": True,
            "prompt_eval_count": 7,
            "eval_count": 9,
        },
        Usage(7, 9),
    ),
}


#: the model each body names (Anthropic's and Gemini's are added below)
SERVED = {"anthropic": "claude-3-5-haiku-20241022", "google": "gemini-2.5-flash-001", "ollama": "llama3"}
BODIES["anthropic"][1]["model"] = SERVED["anthropic"]
BODIES["google"][1]["modelVersion"] = SERVED["google"]


@asynccontextmanager
async def serving(handle: Callable[[web.Request], Awaitable[web.Response]]) -> AsyncIterator[str]:
    """A fake upstream answering every POST with ``handle``; yields its base URL."""
    app = web.Application()
    app.router.add_route("POST", "/{tail:.*}", handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        await runner.cleanup()


@pytest.fixture
async def upstream() -> AsyncIterator[tuple[str, dict[str, Any]]]:
    answer: dict[str, Any] = {}

    async def handle(request: web.Request) -> web.Response:
        return web.json_response(answer["body"])

    async with serving(handle) as url:
        yield url, answer


@pytest.mark.parametrize("vendor", list(BODIES))
async def test_an_unreadable_answer_carries_the_usage_it_reported(
    vendor: str, upstream: tuple[str, dict[str, Any]], session: UpstreamClient, timeouts: Timeouts
) -> None:
    url, answer = upstream
    module, body, usage = BODIES[vendor]
    answer["body"] = body
    base = f"{url}/v1" if vendor == "openai" else url
    provider = module.build(ProviderSettings(api_key="k", base_url=base), session, timeouts)
    assert provider is not None
    request = ChatRequest(model="m", messages=[Message("user", "hi")])
    with pytest.raises(errors.MalformedResponse) as info:
        await provider.complete(request)
    assert info.value.usage == usage and not info.value.billed_unseen
    assert info.value.served_model == SERVED.get(vendor)  # the model the answer names prices it
    # a 200 answer whose usage cannot be read either: billed at an unknown cost (it was free)
    answer["body"] = {"nothing": "readable"}
    with pytest.raises(errors.MalformedResponse) as info:
        await provider.complete(request)
    assert info.value.usage is None and info.value.billed_unseen


@pytest.mark.parametrize(
    ("body", "kind"),
    [
        (
            '[{"error": {"code": 503, "message": "The model is overloaded.", "status": "UNAVAILABLE"}}]',
            errors.Overloaded,
        ),
        ('{"error": {"code": 429, "message": "slow down", "status": "RESOURCE_EXHAUSTED"}}', errors.RateLimited),
    ],
)
async def test_gemini_json_error_labelled_as_sse_is_that_error(
    body: str, kind: type[errors.ProviderError], session: UpstreamClient, timeouts: Timeouts
) -> None:
    """A 200 ``text/event-stream`` holding a JSON error document (Google's SDK accepts it): the
    SSE framer dropped it, and an overload became a cut stream, billed at an unknown cost and
    not retried."""

    async def handle(request: web.Request) -> web.Response:
        return web.Response(text=body, content_type="text/event-stream")

    async with serving(handle) as url:
        provider = google.build(ProviderSettings(api_key="k", base_url=url), session, timeouts)
        assert provider is not None
        with pytest.raises(kind):
            _ = [c async for c in provider.stream(ChatRequest(model="gemini-pro", messages=[Message("user", "hi")]))]


def test_an_answer_nested_past_pythons_parser_is_still_read() -> None:
    """A tool_use answer nested about 990 levels deep was an adapter failure (RecursionError):
    recorded free, counted against the provider, and paid again at the fallback."""
    from gateway.providers.http import parse_json

    deep = '{"type":"tool_use","input":{"a":' + "[" * 990 + "]" * 990 + "}}"
    assert parse_json(deep.encode(), exact_if=b'"tool_use"')["type"] == "tool_use"
    assert parse_json(b'{"tool_use": 123456789012345678901234567890}', exact_if=b'"tool_use"') == {
        "tool_use": 123456789012345678901234567890
    }


def _gemini_event(text: str, finish: str | None = None, usage: tuple[int, ...] | None = None) -> dict[str, Any]:
    candidate: dict[str, Any] = {"content": {"parts": [{"text": text}] if text else []}}
    if finish is not None:
        candidate["finishReason"] = finish
    event: dict[str, Any] = {"candidates": [candidate]}
    if usage is not None:
        names = ("promptTokenCount", "candidatesTokenCount", "thoughtsTokenCount")
        event["usageMetadata"] = dict(zip(names, usage, strict=False))
    return event


GEMINI_STREAMS = {
    # the full counts in an event after the finish (the finish carried the prompt's only)
    "usage after the finish": (
        [_gemini_event("Hel"), _gemini_event("lo", "STOP", (1000,)), _gemini_event("", None, (1000, 20, 500))],
        "Hello",
        Usage(1000, 520, reasoning_tokens=500),
    ),
    # a finishReason on every event (Gemini did so in 2024): the answer is all of them
    "a finish on every event": (
        [
            _gemini_event("Hel", "STOP", (10,)),
            _gemini_event("lo ", "STOP", (10,)),
            _gemini_event("world", "STOP", (10, 3)),
        ],
        "Hello world",
        Usage(10, 3),
    ),
    # a later report with less (prompt-only) does not lower the bill: counts are cumulative
    "a smaller usage after the full one": (
        [_gemini_event("Hi", "STOP", (1000, 2000)), _gemini_event("", None, (1000,))],
        "Hi",
        Usage(1000, 2000),
    ),
    # an error event after a finished answer with its usage ends the stream, not the answer
    "an error after the finish": (
        [_gemini_event("Hi", "STOP", (10, 20)), {"error": {"code": 500, "message": "internal", "status": "INTERNAL"}}],
        "Hi",
        Usage(10, 20),
    ),
    # text after the finish is the answer's too, and so is its usage
    "text after the finish": (
        [_gemini_event("Hi"), _gemini_event("!", "STOP", (10, 20)), _gemini_event(" more", None, (10, 40))],
        "Hi! more",
        Usage(10, 40),
    ),
    # the final report cannot be read (no prompt count, a fractional count): the usage is unknown,
    # not the first event's prompt-only report (the answer's 900 tokens went free: a review)
    "an unreadable final report": (
        [
            _gemini_event("Hi", None, (1000,)),
            _gemini_event("!", "STOP") | {"usageMetadata": {"candidatesTokenCount": 900}},
        ],
        "Hi!",
        None,
    ),
    # an unreadable report before the final one, readable: the final one is the bill (it was
    # unpriced: a re-test)
    "an unreadable report before a readable final one": (
        [_gemini_event("Hi") | {"usageMetadata": {"promptTokenCount": None}}, _gemini_event("!", "STOP", (1000, 500))],
        "Hi!",
        Usage(1000, 500),
    ),
    "a fractional final count": (
        [_gemini_event("Hi", None, (1000,)), _gemini_event("!", "STOP", (1000, 500.0))],  # type: ignore[arg-type]
        "Hi!",
        None,
    ),
}


@pytest.mark.parametrize("events, text, usage", list(GEMINI_STREAMS.values()), ids=list(GEMINI_STREAMS))
async def test_a_gemini_stream_is_every_event_and_billed_by_its_full_usage(
    session: UpstreamClient, timeouts: Timeouts, events: list[dict[str, Any]], text: str, usage: Usage | None
) -> None:
    """providers.md 4.4: the final usageMetadata has the full counts. The adapter stopped
    reading at the first finishReason: a stream whose full counts came after it billed its
    prompt alone, and one with a finish on every event gave the client its first word. Counts
    are cumulative: a later, smaller report is not the bill (a re-test)."""
    body = "".join(f"data: {json.dumps(e)}\r\n\r\n" for e in events)

    async def handle(request: web.Request) -> web.Response:
        return web.Response(text=body, content_type="text/event-stream")

    async with serving(handle) as url:
        provider = google.build(ProviderSettings(api_key="k", base_url=url), session, timeouts)
        assert provider is not None
        chunks = [c async for c in provider.stream(ChatRequest(model="gemini-pro", messages=[Message("user", "hi")]))]
    assert "".join(c.text for c in chunks) == text
    assert chunks[-1].finish_reason == "stop" and chunks[-1].usage == usage


#: a 200 body cut in its JSON, and a stream whose first event is (in each vendor's framing)
TRUNCATED: dict[str, tuple[str, str]] = {
    "openai": ('{"id": "x", "choices": [{"message": {"content": "Hel', 'data: {"id": "x", "choices": [{"del\n\n'),
    "anthropic": ('{"type": "message", "content": [{"type": "te', 'event: message_start\ndata: {"type": "mess\n\n'),
    "google": ('{"candidates": [{"content": {"par', 'data: {"candidates": [{"conte\n\n'),
    "ollama": ('{"model": "llama3", "message": {"role": "assi', '{"model": "llama3", "message": {"ro\n'),
}


@pytest.mark.parametrize("vendor", list(TRUNCATED))
@pytest.mark.parametrize("stream", [False, True])
async def test_an_answer_that_is_not_json_at_all_is_billed_at_an_unknown_cost(
    vendor: str, stream: bool, session: UpstreamClient, timeouts: Timeouts
) -> None:
    """A 200 whose body (or first stream event) is not JSON: the provider answered, and bills it;
    it was recorded free (``billable`` false, $0), and the call's fallback showed only what the
    next provider cost."""
    body, events = TRUNCATED[vendor]
    kind = "application/x-ndjson" if vendor == "ollama" else "text/event-stream"

    async def handle(request: web.Request) -> web.Response:
        if stream:
            return web.Response(text=events, content_type=kind)
        return web.Response(text=body, content_type="application/json")

    async with serving(handle) as url:
        module = BODIES[vendor][0]
        base = f"{url}/v1" if vendor == "openai" else url
        provider = module.build(ProviderSettings(api_key="k", base_url=base), session, timeouts)
        assert provider is not None
        request = ChatRequest(model="m", messages=[Message("user", "hi")], stream=stream)
        with pytest.raises(errors.MalformedResponse) as info:
            if stream:
                _ = [c async for c in provider.stream(request)]
            else:
                await provider.complete(request)
    assert info.value.usage is None and info.value.billed_unseen


#: a text with a lone surrogate escape next to a tool call, as each vendor answers it (the
#: standard parser, used for exact tool-call numbers, took it; the answer's encoding then
#: crashed after the call was billed: a 500, and on a stream no valid HTTP; a review)
LONE_SURROGATE = {
    "anthropic": (
        '{"type":"message","model":"claude-3-5-haiku-20241022","content":[{"type":"text","text":"bad %s here"},'
        '{"type":"tool_use","id":"toolu_1","name":"f","input":{}}],"stop_reason":"tool_use",'
        '"usage":{"input_tokens":30,"output_tokens":40}}'
    ),
    "google": (
        '{"candidates":[{"content":{"role":"model","parts":[{"text":"bad %s here"},'
        '{"functionCall":{"name":"f","args":{}}}]},"finishReason":"STOP"}],'
        '"usageMetadata":{"promptTokenCount":100,"candidatesTokenCount":20}}'
    ),
    "ollama": (
        '{"model":"llama3","message":{"role":"assistant","content":"bad %s here",'
        '"tool_calls":[{"function":{"name":"f","arguments":{}}}]},"done":true,"done_reason":"stop",'
        '"prompt_eval_count":7,"eval_count":9}'
    ),
}


@pytest.mark.parametrize("vendor", list(LONE_SURROGATE))
async def test_a_lone_surrogate_next_to_a_tool_call_is_a_malformed_answer(
    vendor: str, session: UpstreamClient, timeouts: Timeouts
) -> None:
    """As it is without a tool call (orjson refuses it): an answer that is no JSON, billed at an
    unknown cost. A surrogate pair (an emoji written as two escapes) is read as the character."""
    template = LONE_SURROGATE[vendor]
    bodies: list[str] = []

    async def handle(request: web.Request) -> web.Response:
        return web.Response(text=bodies.pop(0), content_type="application/json")

    module = BODIES[vendor][0]
    async with serving(handle) as base:
        provider = module.build(ProviderSettings(api_key="k", base_url=base), session, timeouts)
        assert provider is not None
        request = ChatRequest(model="m", messages=[Message("user", "hi")])
        bodies.append(template % "\\ud83c")
        with pytest.raises(errors.MalformedResponse) as info:
            await provider.complete(request)
        assert info.value.usage is None and info.value.billed_unseen
        bodies.append(template % "\\ud83d\\ude00")
        result = await provider.complete(request)
    assert result.text == "bad \U0001f600 here" and result.tool_calls


@pytest.mark.parametrize("vendor", ["google", "ollama"])
async def test_a_lone_surrogate_next_to_a_streamed_tool_call_ends_the_stream(
    vendor: str, session: UpstreamClient, timeouts: Timeouts
) -> None:
    """A streamed event (Gemini's SSE, Ollama's NDJSON line) with a tool call and a lone
    surrogate is malformed: the stream ends with the adapter's error, not the gateway's crash."""
    template = LONE_SURROGATE[vendor]
    event = template % "\\ud83c"
    body = f"data: {event}\n\n" if vendor == "google" else event + "\n"
    kind = "text/event-stream" if vendor == "google" else "application/x-ndjson"

    async def handle(request: web.Request) -> web.Response:
        return web.Response(text=body, content_type=kind)

    module = BODIES[vendor][0]
    async with serving(handle) as base:
        provider = module.build(ProviderSettings(api_key="k", base_url=base), session, timeouts)
        assert provider is not None
        request = ChatRequest(model="m", messages=[Message("user", "hi")])
        with pytest.raises(errors.ProviderError) as info:
            _ = [chunk async for chunk in provider.stream(request)]
    assert isinstance(info.value, errors.MalformedResponse | errors.StreamCut), info.value
