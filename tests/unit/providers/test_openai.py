"""OpenAI adapter against the OpenAI simulator over real HTTP, plus the pure wire mapping."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator
from typing import Any

import pytest

from gateway import errors
from gateway.providers import openai_wire as wire
from gateway.providers.base import Timeouts
from gateway.providers.openai import DEFAULT_BASE_URL, OpenAIProvider, build
from gateway.providers.sse import SseEvent
from gateway.providers.upstream_http import UpstreamClient
from gateway.settings import ProviderSettings
from gateway.simulators.base import Fault
from gateway.simulators.openai import OpenAISimulator
from gateway.types import ChatRequest, ChatResult, Message, StreamChunk, Usage

KEY = "sk-test-key"
SNAPSHOT = "gpt-4o-2024-08-06"


def chat(**kwargs: Any) -> ChatRequest:
    messages = [Message("system", "Be brief."), Message("user", "Say hello to me")]
    return ChatRequest(model="gpt-4o", messages=messages, **kwargs)


@pytest.fixture
async def sim() -> AsyncIterator[OpenAISimulator]:
    s = OpenAISimulator(api_key=KEY, served_model=SNAPSHOT, cached_tokens=2, reasoning_tokens=5)
    await s.start()
    try:
        yield s
    finally:
        await s.stop()


@pytest.fixture
def provider(sim: OpenAISimulator, session: UpstreamClient, timeouts: Timeouts) -> OpenAIProvider:
    return OpenAIProvider(ProviderSettings(api_key=KEY, base_url=f"{sim.base_url}/v1"), session, timeouts)


async def collect(provider: OpenAIProvider, request: ChatRequest) -> list[StreamChunk]:
    return [chunk async for chunk in provider.stream(request)]


async def call(provider: OpenAIProvider, request: ChatRequest, streaming: bool) -> ChatResult | list[StreamChunk]:
    return await collect(provider, request) if streaming else await provider.complete(request)


# --- request mapping --------------------------------------------------------------------------


async def test_chat_request_mapping(provider: OpenAIProvider, sim: OpenAISimulator) -> None:
    await provider.complete(chat(max_tokens=64, temperature=0.2, top_p=0.9, stop=["\n\n"], user="u1"))
    [rec] = sim.requests
    assert rec.path == "/v1/chat/completions"
    assert rec.headers["Authorization"] == f"Bearer {KEY}"
    assert rec.body == {
        "model": "gpt-4o",
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "Say hello to me"},
        ],
        "max_completion_tokens": 64,
        "temperature": 0.2,
        "top_p": 0.9,
        "stop": ["\n\n"],
        "user": "u1",
        "stream": False,
    }


async def test_stream_request_always_asks_for_usage(provider: OpenAIProvider, sim: OpenAISimulator) -> None:
    await collect(provider, chat())
    body = sim.requests[0].body
    assert body["stream"] is True
    assert body["stream_options"] == {"include_usage": True}
    assert "max_completion_tokens" not in body and "max_tokens" not in body


async def test_legacy_completions_request_and_result(provider: OpenAIProvider, sim: OpenAISimulator) -> None:
    request = ChatRequest(model="gpt-3.5-turbo-instruct", messages=[], prompt="Once upon a time", max_tokens=3)
    result = await provider.complete(request)
    rec = sim.requests[0]
    assert rec.path == "/v1/completions"
    assert rec.body == {
        "model": "gpt-3.5-turbo-instruct",
        "prompt": "Once upon a time",
        "max_tokens": 3,
        "stream": False,
    }
    assert result.text == "Hello from the"
    assert result.finish_reason == "length"
    assert result.usage == Usage(prompt_tokens=4, completion_tokens=3)
    assert result.model == SNAPSHOT


async def test_legacy_completions_stream(provider: OpenAIProvider, sim: OpenAISimulator) -> None:
    request = ChatRequest(model="gpt-3.5-turbo-instruct", messages=[], prompt="Once upon a time", max_tokens=50)
    chunks = await collect(provider, request)
    assert sim.requests[0].path == "/v1/completions"
    assert sim.requests[0].body["stream_options"] == {"include_usage": True}
    assert "".join(c.text for c in chunks) == sim.reply
    assert chunks[-2].finish_reason == "stop"
    assert chunks[-1].usage == Usage(prompt_tokens=4, completion_tokens=8)


# --- results ----------------------------------------------------------------------------------


async def test_complete_result(provider: OpenAIProvider, sim: OpenAISimulator) -> None:
    result = await provider.complete(chat())
    assert result.text == sim.reply
    assert result.finish_reason == "stop"
    # prompt: 2 + 4 words; completion: 8 reply words + 5 reasoning tokens
    assert result.usage == Usage(prompt_tokens=6, completion_tokens=13, cached_tokens=2, reasoning_tokens=5)
    assert result.model == SNAPSHOT
    assert result.upstream_request_id is not None and result.upstream_request_id.startswith("req_sim")


async def test_served_model_echoes_request_without_snapshot(provider: OpenAIProvider, sim: OpenAISimulator) -> None:
    sim.served_model = None
    assert (await provider.complete(chat())).model == "gpt-4o"


async def test_length_cap(provider: OpenAIProvider, sim: OpenAISimulator) -> None:
    sim.reasoning_tokens = 0
    result = await provider.complete(chat(max_tokens=2))
    assert (result.text, result.finish_reason, result.usage.completion_tokens) == (
        "Hello from",
        "length",
        2,
    )


async def test_stream_result(provider: OpenAIProvider, sim: OpenAISimulator) -> None:
    chunks = await collect(provider, chat())
    assert "".join(c.text for c in chunks) == sim.reply
    assert len([c for c in chunks if c.text]) == len(sim.reply.split(" "))
    assert [c.finish_reason for c in chunks if c.finish_reason] == ["stop"]
    usages = [c.usage for c in chunks if c.usage is not None]
    assert usages == [Usage(prompt_tokens=6, completion_tokens=13, cached_tokens=2, reasoning_tokens=5)]
    assert chunks[-1].usage is not None  # usage is on the last chunk
    assert {c.model for c in chunks} == {SNAPSHOT}


async def test_stream_tolerates_crlf(provider: OpenAIProvider, sim: OpenAISimulator) -> None:
    sim.crlf = True
    chunks = await collect(provider, chat())
    assert "".join(c.text for c in chunks) == sim.reply
    assert chunks[-1].usage is not None


@pytest.mark.parametrize("streaming", [False, True])
async def test_output_content_filter_is_a_finish_reason(
    provider: OpenAIProvider, sim: OpenAISimulator, streaming: bool
) -> None:
    sim.faults.push(Fault("content_filter"))
    out = await call(provider, chat(), streaming)
    if isinstance(out, ChatResult):
        assert (out.text, out.finish_reason) == ("", "content_filter")
    else:
        assert "".join(c.text for c in out) == ""
        assert [c.finish_reason for c in out if c.finish_reason] == ["content_filter"]


# --- errors -----------------------------------------------------------------------------------

FAULTS = [
    (Fault("rate_limit", retry_after=2), errors.RateLimited, 429, "rate_limit_exceeded", 2.0),
    (
        Fault("rate_limit", retry_after=2, retry_after_ms=1500),
        errors.RateLimited,
        429,
        "rate_limit_exceeded",
        1.5,
    ),
    (Fault("quota"), errors.QuotaExhausted, 429, "insufficient_quota", None),
    (Fault("overloaded", retry_after=3), errors.Overloaded, 503, "server_is_overloaded", 3.0),
    (Fault("server_error"), errors.UpstreamServerError, 500, "server_error", None),
    (Fault("server_error", status=502), errors.UpstreamServerError, 502, "server_error", None),
    (Fault("auth"), errors.UpstreamAuthError, 401, "invalid_api_key", None),
    (Fault("bad_request"), errors.UpstreamBadRequest, 400, "context_length_exceeded", None),
    (Fault("not_found"), errors.UpstreamModelNotFound, 404, "model_not_found", None),
]


@pytest.mark.parametrize("streaming", [False, True])
@pytest.mark.parametrize(("fault", "cls", "status", "code", "retry_after"), FAULTS)
async def test_error_faults(
    provider: OpenAIProvider,
    sim: OpenAISimulator,
    streaming: bool,
    fault: Fault,
    cls: type[errors.ProviderError],
    status: int,
    code: str,
    retry_after: float | None,
) -> None:
    sim.faults.push(fault)
    with pytest.raises(cls) as info:
        await call(provider, chat(), streaming)
    assert type(info.value) is cls
    assert (info.value.provider, info.value.http_status) == ("openai", status)
    assert info.value.upstream_code == code
    assert info.value.retry_after == retry_after


async def test_rate_limit_without_headers_reads_nothing(provider: OpenAIProvider, sim: OpenAISimulator) -> None:
    sim.faults.push(Fault("rate_limit"))
    with pytest.raises(errors.RateLimited) as info:
        await provider.complete(chat())
    assert info.value.retry_after is None


async def test_bad_request_keeps_param(provider: OpenAIProvider, sim: OpenAISimulator) -> None:
    sim.faults.push(Fault("bad_request"))
    with pytest.raises(errors.UpstreamBadRequest) as info:
        await provider.complete(chat())
    assert info.value.param == "messages"
    assert not info.value.fallback


async def test_wrong_key_is_auth_error(sim: OpenAISimulator, session: UpstreamClient, timeouts: Timeouts) -> None:
    wrong = OpenAIProvider(ProviderSettings(api_key="sk-wrong", base_url=f"{sim.base_url}/v1"), session, timeouts)
    with pytest.raises(errors.UpstreamAuthError) as info:
        await wrong.complete(chat())
    assert info.value.http_status == 401


@pytest.mark.parametrize("streaming", [False, True])
async def test_malformed_body(provider: OpenAIProvider, sim: OpenAISimulator, streaming: bool) -> None:
    sim.faults.push(Fault("malformed"))
    with pytest.raises(errors.MalformedResponse):
        await call(provider, chat(), streaming)


async def test_stream_cut(provider: OpenAIProvider, sim: OpenAISimulator) -> None:
    sim.faults.push(Fault("cut", after_chunks=3))
    got: list[StreamChunk] = []
    with pytest.raises(errors.StreamCut):
        async for chunk in provider.stream(chat()):
            got.append(chunk)
    assert "".join(c.text for c in got) == "Hello from the"
    assert all(c.usage is None and c.finish_reason is None for c in got)


async def test_non_streaming_body_cut(provider: OpenAIProvider, sim: OpenAISimulator) -> None:
    sim.faults.push(Fault("cut"))
    with pytest.raises(errors.StreamCut):
        await provider.complete(chat())


async def test_in_band_stream_error(provider: OpenAIProvider, sim: OpenAISimulator) -> None:
    sim.faults.push(Fault("stream_error", after_chunks=2))
    got: list[StreamChunk] = []
    with pytest.raises(errors.UpstreamServerError) as info:
        async for chunk in provider.stream(chat()):
            got.append(chunk)
    assert "".join(c.text for c in got) == "Hello from"
    assert info.value.http_status == 200
    assert "server had an error" in info.value.message


async def test_timeouts(provider: OpenAIProvider, sim: OpenAISimulator) -> None:
    sim.faults.push(Fault("timeout", delay=2), times=2)
    # both at once: the held handlers then delay the simulator's shutdown only once
    outcomes = await asyncio.gather(provider.complete(chat()), collect(provider, chat()), return_exceptions=True)
    assert [type(o) for o in outcomes] == [errors.UpstreamTimeout, errors.UpstreamTimeout]


@pytest.mark.parametrize("streaming", [False, True])
async def test_connection_refused(session: UpstreamClient, timeouts: Timeouts, streaming: bool) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    p = OpenAIProvider(ProviderSettings(api_key=KEY, base_url=f"http://127.0.0.1:{port}/v1"), session, timeouts)
    with pytest.raises(errors.UpstreamConnectionError):
        await call(p, chat(), streaming)


async def test_build(session: UpstreamClient, timeouts: Timeouts) -> None:
    assert build(ProviderSettings(), session, timeouts) is None
    assert build(ProviderSettings(api_key=KEY, enabled=False), session, timeouts) is None
    p = build(ProviderSettings(api_key=KEY), session, timeouts)
    assert isinstance(p, OpenAIProvider) and p.name == "openai"
    assert p.target(chat(), stream=False).url == f"{DEFAULT_BASE_URL}/chat/completions"


# --- pure mapping -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("stop", "stop"),
        ("length", "length"),
        ("tool_calls", "tool_calls"),
        ("function_call", "tool_calls"),
        ("content_filter", "content_filter"),
        ("something_new", "stop"),
        (None, None),
    ],
)
def test_finish_reasons(raw: str | None, expected: str | None) -> None:
    assert wire.map_finish_reason(raw) == expected


def test_usage_passes_details_through() -> None:
    raw = {
        "prompt_tokens": 100,
        "completion_tokens": 40,
        "total_tokens": 140,
        "prompt_tokens_details": {"cached_tokens": 64, "audio_tokens": 0},
        "completion_tokens_details": {"reasoning_tokens": 30},
    }
    usage = wire.parse_usage(raw)
    assert usage == Usage(prompt_tokens=100, completion_tokens=40, cached_tokens=64, reasoning_tokens=30)
    assert usage.total_tokens == 140
    assert wire.parse_usage({"prompt_tokens": 3, "completion_tokens": 1, "prompt_tokens_details": None}) == Usage(3, 1)
    assert wire.parse_usage(None) is None
    # a count missing, or not one (negative, a float, a string, past a BIGINT): usage unknown,
    # billable at an unknown cost; it was read as 0 tokens, so the answer was recorded free
    for raw in (
        {},
        {"prompt_tokens": None, "completion_tokens": None},
        {"prompt_tokens": 2**63, "completion_tokens": 1},
        {"prompt_tokens": 10, "completion_tokens": -20},
        {"prompt_tokens": 10.7, "completion_tokens": 20},
        {"prompt_tokens": "10", "completion_tokens": 20},
        {"prompt_tokens": 10},
        {"prompt_tokens": 10, "completion_tokens": 2, "prompt_tokens_details": {"cached_tokens": -1}},
    ):
        assert wire.parse_usage(raw) is None, raw


def test_body_for_azure_style_max_tokens() -> None:
    body = wire.build_body(chat(max_tokens=10), model="dep", stream=True, chat_max_tokens_field="max_tokens")
    assert body["max_tokens"] == 10 and "max_completion_tokens" not in body and body["model"] == "dep"


def test_chunk_parsing() -> None:
    assert (
        wire.parse_chunk(
            {
                "id": "",
                "model": "",
                "object": "",
                "created": 0,
                "choices": [],
                "prompt_filter_results": [],
            },
            provider="azure",
        )
        is None
    )
    role = {
        "model": "m",
        "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}}],
        "obfuscation": "abc",
    }
    assert wire.parse_chunk(role, provider="openai") is None
    text = {
        "model": "m",
        "choices": [{"index": 0, "delta": {"content": "Hi"}, "finish_reason": None}],
        "usage": None,
        "obfuscation": "xyz",
    }
    assert wire.parse_chunk(text, provider="openai") == StreamChunk(text="Hi", model="m")
    legacy = {
        "object": "text_completion",
        "model": "m",
        "choices": [{"text": "", "finish_reason": "length"}],
    }
    assert wire.parse_chunk(legacy, provider="openai") == StreamChunk(finish_reason="length", model="m")
    with pytest.raises(errors.MalformedResponse):
        wire.parse_chunk({"choices": [{"delta": {"content": 5}}]}, provider="openai")
    with pytest.raises(errors.RateLimited):
        wire.parse_chunk(
            {"error": {"message": "slow", "type": "requests", "code": "rate_limit_exceeded"}},
            provider="openai",
        )


def test_response_parsing() -> None:
    data = {
        "id": "chatcmpl-1",
        "model": "",
        "choices": [{"message": {"content": None, "refusal": "I can't."}, "finish_reason": "stop"}],
    }
    result = wire.parse_response(data, provider="openai", requested_model="gpt-4o")
    assert (result.text, result.refusal, result.model, result.upstream_request_id) == (
        "",
        "I can't.",  # a refusal is the answer's refusal, not its text (clients check message.refusal)
        "gpt-4o",
        "chatcmpl-1",
    )
    assert result.usage is None  # no usage reported: unknown (billed at an unknown cost), not zero
    bad_bodies: list[Any] = [
        [],
        {"choices": "x"},
        {"choices": []},
        {"choices": [{"message": "hi"}]},
    ]
    for bad in bad_bodies:
        with pytest.raises(errors.MalformedResponse):
            wire.parse_response(bad, provider="openai", requested_model="m")


async def test_parse_stream_needs_done() -> None:
    async def events(*data: str) -> AsyncIterator[SseEvent]:
        for d in data:
            yield SseEvent(None, d)

    chunk = '{"model": "m", "choices": [{"delta": {"content": "a"}}]}'
    got = [c async for c in wire.parse_stream(events(chunk, "[DONE]", chunk), provider="openai")]
    assert [c.text for c in got] == ["a"]  # nothing after [DONE]
    with pytest.raises(errors.StreamCut):
        _ = [c async for c in wire.parse_stream(events(chunk), provider="openai")]
    with pytest.raises(errors.MalformedResponse):
        _ = [c async for c in wire.parse_stream(events("{not json"), provider="openai")]


def err(code: str | None, etype: str | None = None, message: str = "m", **extra: Any) -> dict[str, Any]:
    return {"error": {"message": message, "type": etype, "param": None, "code": code, **extra}}


@pytest.mark.parametrize(
    ("status", "headers", "body", "cls", "retry_after"),
    [
        (429, {}, err("insufficient_quota", "insufficient_quota"), errors.QuotaExhausted, None),
        (429, {}, err("credit_balance_exhausted"), errors.QuotaExhausted, None),
        (429, {"x-should-retry": "false"}, err("rate_limit_exceeded"), errors.QuotaExhausted, None),
        (
            429,
            {"retry-after": "7"},
            err("rate_limit_exceeded", message="Please try again in 600ms."),
            errors.RateLimited,
            7.0,
        ),
        (
            429,
            {},
            err("rate_limit_exceeded", message="Limit 3. Please try again in 600ms."),
            errors.RateLimited,
            0.6,
        ),
        (
            429,
            {},
            {"error": {"code": "429", "message": "Please retry after 6 seconds."}},
            errors.RateLimited,
            6.0,
        ),
        (503, {}, err("slow_down", "server_error"), errors.Overloaded, None),
        (500, {"x-should-retry": "true"}, err(None, "server_error"), errors.Overloaded, None),
        (500, {}, err(None, "server_error"), errors.UpstreamServerError, None),
        (409, {"x-should-retry": "true"}, err("conflict"), errors.Overloaded, None),
        (
            400,
            {"x-should-retry": "true"},
            err("context_length_exceeded"),
            errors.UpstreamBadRequest,
            None,
        ),
        (
            400,
            {},
            {
                "error": {
                    "code": "content_filter",
                    "message": "filtered",
                    "param": "prompt",
                    "status": 400,
                    "innererror": {"code": "ResponsibleAIPolicyViolation"},
                }
            },
            errors.ContentFiltered,
            None,
        ),
        (400, {}, err("invalid_prompt", "invalid_request_error"), errors.ContentFiltered, None),
        (
            401,
            {},
            {"error": {"code": "401", "message": "Access denied"}},
            errors.UpstreamAuthError,
            None,
        ),
        (
            404,
            {},
            {"error": {"code": "DeploymentNotFound", "message": "nope"}},
            errors.UpstreamModelNotFound,
            None,
        ),
        (502, {}, None, errors.UpstreamServerError, None),
    ],
)
def test_classify_error(
    status: int,
    headers: dict[str, str],
    body: Any,
    cls: type[errors.ProviderError],
    retry_after: float | None,
) -> None:
    e = wire.classify_error("openai", status, headers, body, "<html>bad gateway</html>" if body is None else "")
    assert type(e) is cls
    assert (e.http_status, e.retry_after, e.provider) == (status, retry_after, "openai")


def test_classify_error_details() -> None:
    e = wire.classify_error(
        "azure",
        400,
        {},
        {"error": {"code": "content_filter", "message": "blocked", "param": "prompt"}},
        "",
    )
    assert (e.upstream_code, e.param, e.message) == ("content_filter", "prompt", "azure: blocked")
    raw = wire.classify_error("openai", 502, {}, None, "<html>bad gateway</html>")
    assert "bad gateway" in raw.message
