"""Legal vendor answers the simulators do not give, from a scripted upstream: an answer without
usage (billable at an unknown cost, never free), a Gemini stream answered with a plain JSON
error, a vendor's own error code for a bad request."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from decimal import Decimal
from typing import Any

import aiohttp
import openai
import orjson
import pytest
from aiohttp import web

from gateway.settings import ProviderSettings
from gateway.simulators.registry import SIMULATED_KEY
from tests.support.gateway import RunningGateway, running_gateway, start_app

ANSWER = {"candidates": [{"content": {"role": "model", "parts": [{"text": "hi"}]}, "finishReason": "STOP"}]}


class Upstream:
    """One scripted answer per path kind: ``openai``, ``generate``, ``stream``."""

    def __init__(self) -> None:
        self.script: dict[str, web.Response] = {}
        self.calls: list[str] = []
        self.bodies: list[bytes] = []

    async def handle(self, request: web.Request) -> web.StreamResponse:
        self.bodies.append(await request.read())
        path = request.path
        kind = "openai" if path.endswith("/chat/completions") else "stream" if "stream" in path else "generate"
        self.calls.append(kind)
        return self.script[kind]


def openai_answer(**extra: Any) -> web.Response:
    body = {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "model": "gpt-4o",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "hi"}, "finish_reason": "stop"}],
        **extra,
    }
    return web.json_response(body)


@pytest.fixture
async def upstream() -> AsyncIterator[tuple[Upstream, str]]:
    up = Upstream()
    app = web.Application()
    app.router.add_route("POST", "/{tail:.*}", up.handle)
    runner, url = await start_app(app)
    try:
        yield up, url
    finally:
        await runner.cleanup()


async def gateway(url: str, *names: str) -> Any:
    providers = {name: ProviderSettings(enabled=False) for name in ("openai", "azure", "anthropic", "google", "ollama")}
    for provider in names:
        base = f"{url}/v1" if provider == "openai" else url
        providers[provider] = ProviderSettings(api_key=SIMULATED_KEY, base_url=base)
    return running_gateway(providers=(), settings={"providers": providers, "retry_attempts": 1})


def client(gw: RunningGateway) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=gw.base_url, api_key="unused", max_retries=0)


async def test_openai_answer_without_usage_is_billable_at_an_unknown_cost(upstream: tuple[Upstream, str]) -> None:
    up, url = upstream
    up.script["openai"] = openai_answer()
    async with await gateway(url, "openai") as gw, client(gw) as c:
        raw = await c.chat.completions.with_raw_response.create(
            model="gpt-4o", messages=[{"role": "user", "content": "x"}]
        )
    assert raw.parse().usage is None and raw.headers["x-llm-cost-usd"] == "unpriced"
    [event] = gw.event_log.events
    assert event.billable and event.cost_usd is None and event.outcome == "success"


@pytest.mark.parametrize(
    "usage",
    [
        {},
        {"prompt_tokens": None, "completion_tokens": None},
        {"prompt_tokens": 10.7, "completion_tokens": 20.2},
        {"prompt_tokens": "10", "completion_tokens": "20"},
        {"prompt_tokens": -5, "completion_tokens": 20},
        {"prompt_tokens": 10, "completion_tokens": -20},
    ],
)
async def test_openai_answer_with_unreadable_counts_is_billable_at_an_unknown_cost(
    upstream: tuple[Upstream, str], usage: dict[str, Any]
) -> None:
    """Each was read as 0 tokens: recorded $0 (not billable), or priced without the bad count."""
    up, url = upstream
    up.script["openai"] = openai_answer(usage=usage)
    async with await gateway(url, "openai") as gw, client(gw) as c:
        raw = await c.chat.completions.with_raw_response.create(
            model="gpt-4o", messages=[{"role": "user", "content": "x"}]
        )
    assert raw.parse().choices[0].message.content == "hi" and raw.headers["x-llm-cost-usd"] == "unpriced"
    [event] = gw.event_log.events
    assert event.billable and event.cost_usd is None and event.outcome == "success"


@pytest.mark.parametrize("stream", [False, True])
async def test_gemini_answer_without_usage_metadata_is_billable_at_an_unknown_cost(
    upstream: tuple[Upstream, str], stream: bool
) -> None:
    up, url = upstream
    up.script["generate"] = web.json_response(ANSWER)
    up.script["stream"] = web.Response(
        body=b"data: " + orjson.dumps(ANSWER) + b"\r\n\r\n", content_type="text/event-stream"
    )
    async with await gateway(url, "google") as gw, client(gw) as c:
        if stream:
            chunks = [
                ch
                async for ch in await c.chat.completions.create(
                    model="gemini-pro", messages=[{"role": "user", "content": "x"}], stream=True
                )
            ]
            assert "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices) == "hi"
        else:
            raw = await c.chat.completions.with_raw_response.create(
                model="gemini-pro", messages=[{"role": "user", "content": "x"}]
            )
            assert raw.headers["x-llm-cost-usd"] == "unpriced"
    [event] = gw.event_log.events
    assert event.billable and event.cost_usd is None and event.prompt_tokens == 0


async def test_gemini_stream_answered_with_a_json_error_is_that_error(upstream: tuple[Upstream, str]) -> None:
    """``alt=sse`` answered 200 with a google.rpc.Status body (as the SDK accepts): judged by its
    own code, a rate limit, not a cut stream billed at an unknown cost."""
    up, url = upstream
    error = {"error": {"code": 429, "message": "Resource has been exhausted", "status": "RESOURCE_EXHAUSTED"}}
    up.script["stream"] = web.json_response(error)
    async with await gateway(url, "google") as gw, client(gw) as c:
        with pytest.raises(openai.APIStatusError):
            await c.chat.completions.create(
                model="gemini-pro", messages=[{"role": "user", "content": "x"}], stream=True
            )
    [event] = gw.event_log.events
    assert event.outcome == "rate_limited" and not event.billable and event.cost_usd == 0


async def test_the_vendors_error_code_reaches_the_client(upstream: tuple[Upstream, str]) -> None:
    up, url = upstream
    error = {
        "error": {
            "message": "This model's maximum context length is 128000 tokens.",
            "type": "invalid_request_error",
            "param": "messages",
            "code": "context_length_exceeded",
        }
    }
    up.script["openai"] = web.json_response(error, status=400)
    async with await gateway(url, "openai") as gw, client(gw) as c:
        with pytest.raises(openai.BadRequestError) as info:
            await c.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "x"}])
    assert info.value.code == "context_length_exceeded"
    assert "maximum context length" in info.value.message
    [event] = gw.event_log.events
    assert event.outcome == "client_error" and event.error_code == "context_length_exceeded"


async def test_an_openai_refusal_stays_a_refusal(upstream: tuple[Upstream, str]) -> None:
    """``message.refusal`` (content null) and streamed ``delta.refusal`` pieces reach the client
    as a refusal; they were turned into ordinary content, which clients checking
    ``message.refusal`` took for an answer."""
    up, url = upstream
    message = {"role": "assistant", "content": None, "refusal": "I can't help with that."}
    up.script["openai"] = openai_answer(
        choices=[{"index": 0, "message": message, "finish_reason": "stop"}],
        usage={"prompt_tokens": 3, "completion_tokens": 5, "total_tokens": 8},
    )
    async with await gateway(url, "openai") as gw, client(gw) as c:
        completion = await c.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "x"}])
        assert completion.choices[0].message.refusal == "I can't help with that."
        assert completion.choices[0].message.content is None
        events = [
            {"choices": [{"index": 0, "delta": {"role": "assistant", "refusal": ""}, "finish_reason": None}]},
            {"choices": [{"index": 0, "delta": {"refusal": "I can't "}, "finish_reason": None}]},
            {"choices": [{"index": 0, "delta": {"refusal": "help."}, "finish_reason": None}]},
            {"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]},
            {"choices": [], "usage": {"prompt_tokens": 3, "completion_tokens": 3, "total_tokens": 6}},
        ]
        body = b"".join(b"data: " + orjson.dumps({"id": "c", "model": "gpt-4o", **e}) + b"\n\n" for e in events)
        up.script["openai"] = web.Response(body=body + b"data: [DONE]\n\n", content_type="text/event-stream")
        stream = await c.chat.completions.create(
            model="gpt-4o", messages=[{"role": "user", "content": "x"}], stream=True
        )
        chunks = [chunk async for chunk in stream]
    deltas = [ch.choices[0].delta for ch in chunks if ch.choices]
    assert "".join(d.refusal or "" for d in deltas) == "I can't help."
    assert not "".join(d.content or "" for d in deltas)


BIG = 123456789012345678901234567890  # past 64 bits: orjson reads it as a float
BIG_ARGUMENTS = '{"account":123456789012345678901234567890,"price":0.1}'
TOOLS = [{"type": "function", "function": {"name": "pay", "parameters": {"type": "object"}}}]


@pytest.mark.parametrize(
    ("provider", "model", "answer"),
    [
        (
            "anthropic",
            "claude-3-haiku",
            {
                "id": "msg_1",
                "type": "message",
                "role": "assistant",
                "model": "claude-3-haiku-20240307",
                "content": [
                    {"type": "tool_use", "id": "toolu_1", "name": "pay", "input": {"account": BIG, "price": 0.1}}
                ],
                "stop_reason": "tool_use",
                "usage": {"input_tokens": 3, "output_tokens": 5},
            },
        ),
        (
            "google",
            "gemini-pro",
            {
                "candidates": [
                    {
                        "content": {
                            "role": "model",
                            "parts": [{"functionCall": {"name": "pay", "args": {"account": BIG, "price": 0.1}}}],
                        },
                        "finishReason": "STOP",
                    }
                ],
                "usageMetadata": {"promptTokenCount": 3, "candidatesTokenCount": 5, "totalTokenCount": 8},
            },
        ),
        (
            "ollama",
            "llama3",
            {
                "model": "llama3",
                "message": {
                    "role": "assistant",
                    "content": "",
                    "tool_calls": [{"function": {"name": "pay", "arguments": {"account": BIG, "price": 0.1}}}],
                },
                "done": True,
                "done_reason": "stop",
                "prompt_eval_count": 3,
                "eval_count": 5,
            },
        ),
    ],
)
async def test_tool_arguments_keep_integers_past_64_bits(
    upstream: tuple[Upstream, str], provider: str, model: str, answer: dict[str, Any]
) -> None:
    """An account number in a call's arguments comes through exact (orjson made it a float:
    1.2345678901234568e+29), and goes back to the vendor exact in the history."""
    up, url = upstream
    up.script["generate"] = web.Response(text=json.dumps(answer), content_type="application/json")
    async with await gateway(url, provider) as gw, client(gw) as c:
        completion = await c.chat.completions.create(
            model=model, messages=[{"role": "user", "content": "pay"}], tools=TOOLS
        )
        [call] = completion.choices[0].message.tool_calls
        assert call.function.arguments == BIG_ARGUMENTS
        up.script["generate"] = web.Response(text=json.dumps(answer), content_type="application/json")
        history = [
            {"role": "user", "content": "pay"},
            {"role": "assistant", "content": None, "tool_calls": [call.model_dump()]},
            {"role": "tool", "tool_call_id": call.id, "content": "done"},
        ]
        await c.chat.completions.create(model=model, messages=history, tools=TOOLS)
    assert str(BIG).encode() in up.bodies[-1]


async def test_an_ollama_model_without_tools_falls_back(upstream: tuple[Upstream, str]) -> None:
    """The built-in groups map to llama3, which Ollama says "does not support tools": that is
    the model's limit, not a bad request, so the next provider serves (it was a 400 to the
    client, with a healthy OpenAI never tried)."""
    up, url = upstream
    refusal = {"error": "registry.ollama.ai/library/llama3:latest does not support tools"}
    up.script["generate"] = web.json_response(refusal, status=400)
    up.script["openai"] = openai_answer(usage={"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4})
    async with await gateway(url, "ollama", "openai") as gw, client(gw) as c:
        raw = await c.chat.completions.with_raw_response.create(
            model="gpt-4o", messages=[{"role": "user", "content": "x"}], tools=TOOLS, extra_body={"provider": "ollama"}
        )
    assert raw.headers["x-llm-provider"] == "openai" and raw.headers["x-llm-attempts"] == "2"
    assert [(e.provider, e.outcome, e.billable) for e in gw.event_log.events] == [
        ("ollama", "client_error", False),
        ("openai", "success", True),
    ]


async def test_an_unreadable_answer_is_billed_as_the_model_it_names(upstream: tuple[Upstream, str]) -> None:
    """OpenAI's answer without choices, whose usage and model can be read: the usage was priced
    as the requested name (gpt-4o at its launch rate, $0.008 here) instead of the snapshot that
    answered ($0.0045), 73% over (a review)."""
    up, url = upstream
    usage = {"prompt_tokens": 1000, "completion_tokens": 200, "total_tokens": 1200}
    up.script["openai"] = web.json_response({"model": "gpt-4o-2024-08-06", "choices": [], "usage": usage})
    async with await gateway(url, "openai") as gw, client(gw) as c:
        with pytest.raises(openai.APIStatusError) as info:
            await c.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "x"}])
    [event] = gw.event_log.events
    assert (event.outcome, event.served_model, event.cost_usd) == (
        "malformed_response",
        "gpt-4o-2024-08-06",
        Decimal("0.0045"),
    )
    assert Decimal(info.value.response.headers["x-llm-cost-usd"]) == Decimal("0.0045")


async def test_an_ollama_model_without_tools_alone_is_the_requests_400(upstream: tuple[Upstream, str]) -> None:
    """With no other provider for it, the model's "does not support tools" was a 502
    ``all_providers_failed``, which the SDKs take for a server error and retry (a review)."""
    up, url = upstream
    async with await gateway(url, "ollama") as gw, client(gw) as c:
        for stream in (False, True):
            up.script["generate"] = web.json_response({"error": "llama3:latest does not support tools"}, status=400)
            with pytest.raises(openai.BadRequestError) as info:
                await c.chat.completions.create(
                    model="llama3", messages=[{"role": "user", "content": "x"}], tools=TOOLS, stream=stream
                )
            error = info.value.response.json()["error"]
            assert (error["type"], error["code"], error["param"]) == (
                "invalid_request_error",
                "model_cannot_serve",
                "tools",
            )
            assert "does not support tools" in error["message"]
            assert info.value.response.headers["x-should-retry"] == "false"
    assert [(e.provider, e.outcome) for e in gw.event_log.events] == [("ollama", "client_error")] * 2


@pytest.mark.parametrize(
    ("status", "error", "retry_after"),
    [
        (400, {"type": "invalid_request_error", "code": None}, "inf"),
        (429, {"type": "insufficient_quota", "code": "insufficient_quota"}, "1e400"),
        (400, {"type": "invalid_request_error", "code": None}, "99999999999999999999999"),
    ],
)
async def test_an_endless_retry_after_is_an_openai_error_with_a_days_wait(
    upstream: tuple[Upstream, str], status: int, error: dict[str, Any], retry_after: str
) -> None:
    """``round(inf)`` raised in the error middleware: a bare 500, no error object, no request id."""
    up, url = upstream
    up.script["openai"] = web.json_response(
        {"error": {"message": "no", **error}}, status=status, headers={"retry-after": retry_after}
    )
    async with await gateway(url, "openai") as gw, client(gw) as c:
        with pytest.raises(openai.APIStatusError) as info:
            await c.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "x"}])
    response = info.value.response
    assert response.status_code != 500 and response.headers["x-request-id"].startswith("req_")
    assert response.headers["retry-after"] == "86400" and "error" in response.json()


LONG_PROMPTS = {
    "anthropic": {
        "type": "error",
        "error": {"type": "invalid_request_error", "message": "prompt is too long: 215000 tokens > 200000 maximum"},
    },
    "google": {
        "error": {
            "code": 400,
            "message": "The input token count (1200000) exceeds the maximum number of tokens allowed (1048576).",
            "status": "INVALID_ARGUMENT",
        }
    },
}


@pytest.mark.parametrize("provider", list(LONG_PROMPTS))
async def test_a_prompt_too_long_is_context_length_exceeded_for_every_vendor(
    upstream: tuple[Upstream, str], provider: str
) -> None:
    """OpenAI's code for it is what clients trim and retry on; Anthropic's and Gemini's 400s said
    ``invalid_request_error`` / ``INVALID_ARGUMENT``, the vendor's words only in the message."""
    up, url = upstream
    up.script["generate"] = web.json_response(LONG_PROMPTS[provider], status=400)
    model = "claude-3-haiku" if provider == "anthropic" else "gemini-pro"
    async with await gateway(url, provider) as gw, client(gw) as c:
        with pytest.raises(openai.BadRequestError) as info:
            await c.chat.completions.create(model=model, messages=[{"role": "user", "content": "x"}])
    assert info.value.code == "context_length_exceeded"
    [event] = gw.event_log.events
    assert event.outcome == "client_error" and event.error_code == "context_length_exceeded"


@pytest.mark.parametrize("vendor", ["anthropic", "openai"])
async def test_a_request_too_large_for_the_vendor_is_a_413(upstream: tuple[Upstream, str], vendor: str) -> None:
    """OpenAI's 413 has ``code: null``, and its ``type`` stood in for the code (a re-test)."""
    up, url = upstream
    if vendor == "openai":
        too_large = {
            "error": {"message": "Request exceeds the maximum size", "type": "invalid_request_error", "code": None}
        }
        up.script["openai"] = web.json_response(too_large, status=413)
        async with await gateway(url, "openai") as gw, client(gw) as c:
            with pytest.raises(openai.APIStatusError) as info:
                await c.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "x"}])
        assert info.value.status_code == 413 and info.value.code == "request_too_large"
        return
    error = {"type": "error", "error": {"type": "request_too_large", "message": "Request exceeds the maximum size"}}
    up.script["generate"] = web.json_response(error, status=413)
    async with await gateway(url, "anthropic") as gw, client(gw) as c:
        with pytest.raises(openai.APIStatusError) as info:
            await c.chat.completions.create(model="claude-3-haiku", messages=[{"role": "user", "content": "x"}])
    assert info.value.status_code == 413 and info.value.code == "request_too_large"
    assert "maximum size" in info.value.message


def malformed_call(reason: str = "MALFORMED_FUNCTION_CALL") -> dict[str, Any]:
    return {
        "candidates": [
            {
                "content": {"role": "model", "parts": []},
                "finishReason": reason,
                "finishMessage": "Malformed function call: print(default_api.lookup(city=)",
            }
        ],
        "usageMetadata": {"promptTokenCount": 1000, "candidatesTokenCount": 40, "totalTokenCount": 1040},
        "modelVersion": "gemini-1.5-pro-002",
    }


@pytest.mark.parametrize("stream", [False, True])
async def test_a_gemini_tool_call_that_failed_is_an_error_billed_and_neutral_for_health(
    upstream: tuple[Upstream, str], stream: bool
) -> None:
    """Gemini's ``MALFORMED_FUNCTION_CALL`` (the call it generated is invalid) came back as an
    empty answer with ``finish_reason: stop``: a tool loop took it for the model's last word
    (a review). It is the attempt's error, billed at its usage, and the request's tools are no
    failure of Google: six in a row leave its circuit closed."""
    up, url = upstream
    tools: Any = [{"type": "function", "function": {"name": "lookup", "parameters": {"type": "object"}}}]
    async with await gateway(url, "google") as gw, client(gw) as c:
        for reason in ("MALFORMED_FUNCTION_CALL", "UNEXPECTED_TOOL_CALL", *["TOO_MANY_TOOL_CALLS"] * 4):
            up.script["generate"] = web.json_response(malformed_call(reason))
            up.script["stream"] = web.Response(
                body=b"data: " + orjson.dumps(malformed_call(reason)) + b"\r\n\r\n", content_type="text/event-stream"
            )
            with pytest.raises(openai.APIStatusError) as info:
                if stream:
                    async for _ in await c.chat.completions.create(
                        model="gemini-1.5-pro", messages=[{"role": "user", "content": "x"}], tools=tools, stream=True
                    ):
                        pass
                else:
                    await c.chat.completions.create(
                        model="gemini-1.5-pro", messages=[{"role": "user", "content": "x"}], tools=tools
                    )
            assert info.value.status_code == 502 and info.value.code == "tool_call_failed"
            assert reason in info.value.message
        assert "Malformed function call" in gw.event_log.events[0].error_message
        assert [e.error_code for e in gw.event_log.events[:2]] == ["MALFORMED_FUNCTION_CALL", "UNEXPECTED_TOOL_CALL"]
        async with aiohttp.ClientSession() as s, s.get(f"{gw.base_url}/providers/health") as r:
            health = await r.json()
    assert health["providers"]["google"]["circuit"] == "closed", health
    for event in gw.event_log.events:
        assert (event.outcome, event.billable, event.prompt_tokens, event.completion_tokens) == (
            "client_error",
            True,
            1000,
            40,
        )
        assert event.cost_usd is not None and event.cost_usd > 0 and event.served_model == "gemini-1.5-pro-002"


async def test_a_gemini_tool_call_that_failed_after_text_ends_the_stream_billed_and_neutral(
    upstream: tuple[Upstream, str],
) -> None:
    """After some text reached the client, the failed tool call was taken for a cut stream:
    unpriced, and five of them opened Google's circuit (a re-test). It ends the stream with
    ``tool_call_failed``, billed at the usage Gemini reported, and health does not count it."""
    up, url = upstream
    text = {"candidates": [{"content": {"role": "model", "parts": [{"text": "Partial text "}]}}]}
    async with await gateway(url, "google") as gw, client(gw) as c:
        for _ in range(6):
            up.script["stream"] = web.Response(
                body=b"data: " + orjson.dumps(text) + b"\r\n\r\ndata: " + orjson.dumps(malformed_call()) + b"\r\n\r\n",
                content_type="text/event-stream",
            )
            got = []
            with pytest.raises(openai.APIError) as info:
                async for chunk in await c.chat.completions.create(
                    model="gemini-1.5-pro", messages=[{"role": "user", "content": "x"}], stream=True
                ):
                    got.append(chunk.choices[0].delta.content if chunk.choices else None)
            assert "Partial text " in got and "tool call failed" in info.value.message
        async with aiohttp.ClientSession() as s, s.get(f"{gw.base_url}/providers/health") as r:
            health = await r.json()
    assert health["providers"]["google"]["circuit"] == "closed", health
    assert len(gw.event_log.events) == 6
    for event in gw.event_log.events:
        assert (event.outcome, event.error_code, event.billable, event.prompt_tokens) == (
            "client_error",
            "MALFORMED_FUNCTION_CALL",  # as when it fails before the stream began
            True,
            1000,
        )
        assert event.cost_usd is not None and event.cost_usd > 0
