"""The Gemini adapter against its simulator over real HTTP, plus its pure wire mapping."""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator
from datetime import datetime

import aiohttp
import pytest

from gateway import errors
from gateway.providers import google_wire as wire
from gateway.providers.base import Timeouts
from gateway.providers.google import GoogleProvider, build, models_url
from gateway.providers.upstream_http import UpstreamClient
from gateway.settings import ProviderSettings
from gateway.simulators.base import Fault
from gateway.simulators.google import THOUGHT_TEXT, GeminiSimulator
from gateway.types import ChatRequest, Message, StreamChunk, Usage

KEY = "gm-test-key"
MESSAGES = [
    Message("system", "Be brief."),
    Message("developer", "Answer in English."),
    Message("user", "Hi there"),
    Message("assistant", "Hello!"),
    Message("user", "Tell me a joke"),
]
# words: 2 + 3 + 2 + 1 + 4
PROMPT_WORDS = 12


def request(**kw: object) -> ChatRequest:
    base: dict[str, object] = {"model": "gemini-2.5-flash", "messages": list(MESSAGES)}
    base.update(kw)
    return ChatRequest(**base)  # type: ignore[arg-type]


@pytest.fixture
async def sim() -> AsyncIterator[GeminiSimulator]:
    s = GeminiSimulator(api_key=KEY)
    await s.start()
    try:
        yield s
    finally:
        await s.stop()


@pytest.fixture
def provider(sim: GeminiSimulator, session: UpstreamClient, timeouts: Timeouts) -> GoogleProvider:
    p = build(ProviderSettings(api_key=KEY, base_url=sim.base_url), session, timeouts)
    assert p is not None
    return p


async def collect(provider: GoogleProvider, req: ChatRequest) -> list[StreamChunk]:
    return [c async for c in provider.stream(req)]


# --- build / config ------------------------------------------------------------------------


def test_build_needs_a_key(timeouts: Timeouts) -> None:
    assert build(ProviderSettings(), None, timeouts) is None  # type: ignore[arg-type]
    assert build(ProviderSettings(api_key="k", enabled=False), None, timeouts) is None  # type: ignore[arg-type]


def test_models_url() -> None:
    assert models_url(None) == "https://generativelanguage.googleapis.com/v1beta/models"
    assert models_url("http://127.0.0.1:9/") == "http://127.0.0.1:9/v1beta/models"
    assert models_url("http://h/v1") == "http://h/v1/models"
    assert models_url("http://h", "v1") == "http://h/v1/models"


# --- request mapping -----------------------------------------------------------------------


async def test_request_mapping(sim: GeminiSimulator, provider: GoogleProvider) -> None:
    await provider.complete(request(temperature=0.2, top_p=0.9, max_tokens=64, stop=["\n\n"], user="u1"))
    rec = sim.requests[-1]
    assert rec.path == "/v1beta/models/gemini-2.5-flash:generateContent"
    assert rec.headers["x-goog-api-key"] == KEY
    assert "key" not in rec.query
    assert rec.body == {
        "contents": [
            {"role": "user", "parts": [{"text": "Hi there"}]},
            {"role": "model", "parts": [{"text": "Hello!"}]},
            {"role": "user", "parts": [{"text": "Tell me a joke"}]},
        ],
        "systemInstruction": {"parts": [{"text": "Be brief.\n\nAnswer in English."}]},
        "generationConfig": {
            "candidateCount": 1,
            "temperature": 0.2,
            "topP": 0.9,
            "maxOutputTokens": 64,
            "stopSequences": ["\n\n"],
        },
    }


def test_build_body_merges_same_role_and_omits_unset() -> None:
    body = wire.build_body(ChatRequest("m", [Message("user", "a"), Message("tool", "b"), Message("assistant", "c")]))
    assert body == {
        "contents": [
            {"role": "user", "parts": [{"text": "a"}, {"text": "b"}]},
            {"role": "model", "parts": [{"text": "c"}]},
        ],
        "generationConfig": {"candidateCount": 1},
    }


def test_an_empty_assistant_turn_is_not_sent() -> None:
    """OpenAI takes an empty assistant message; Gemini refuses an empty text part ("Unable to
    submit request because it has an empty text parameter"), a 400 that does not fall back."""
    messages = [Message("user", "hi"), Message("assistant", ""), Message("user", "again")]
    assert wire.build_body(ChatRequest("m", messages))["contents"] == [
        {"role": "user", "parts": [{"text": "hi"}, {"text": "again"}]}
    ]


async def test_the_simulator_refuses_an_empty_text_part_as_gemini_does(
    sim: GeminiSimulator, provider: GoogleProvider, aio: aiohttp.ClientSession
) -> None:
    body = {"contents": [{"role": "user", "parts": [{"text": "hi"}]}, {"role": "model", "parts": [{"text": ""}]}]}
    url = f"{sim.base_url}/v1beta/models/gemini-2.5-flash:generateContent"
    async with aio.post(url, json=body, headers={"x-goog-api-key": KEY}) as resp:
        assert resp.status == 400 and "empty text parameter" in await resp.text()
    messages = [Message("user", "hi"), Message("assistant", ""), Message("user", "again")]
    assert (await provider.complete(request(messages=messages))).text


async def test_stream_request_uses_alt_sse(sim: GeminiSimulator, provider: GoogleProvider) -> None:
    await collect(provider, request(stream=True))
    rec = sim.requests[-1]
    assert rec.path == "/v1beta/models/gemini-2.5-flash:streamGenerateContent"
    assert rec.query == {"alt": "sse"}


# --- non-streaming -------------------------------------------------------------------------


async def test_complete(sim: GeminiSimulator, provider: GoogleProvider) -> None:
    result = await provider.complete(request())
    assert result.text == sim.reply
    assert result.finish_reason == "stop"
    assert result.model == "gemini-2.5-flash"
    reply_words = len(sim.reply.split())
    assert result.usage == Usage(prompt_tokens=PROMPT_WORDS, completion_tokens=reply_words)


async def test_complete_thoughts_cache_tool_use_and_served_model(
    sim: GeminiSimulator, provider: GoogleProvider
) -> None:
    sim.thoughts_tokens, sim.cached_tokens, sim.tool_use_prompt_tokens = 40, 5, 7
    sim.served_model = "gemini-2.5-flash-preview-05-20"
    result = await provider.complete(request())
    assert THOUGHT_TEXT not in result.text
    assert result.text == sim.reply
    assert result.model == "gemini-2.5-flash-preview-05-20"
    reply_words = len(sim.reply.split())
    assert result.usage == Usage(
        prompt_tokens=PROMPT_WORDS + 7,
        completion_tokens=reply_words + 40,
        cached_tokens=5,
        reasoning_tokens=40,
    )
    assert result.usage.to_openai()["completion_tokens_details"]["reasoning_tokens"] == 40  # type: ignore[index]


@pytest.mark.parametrize(("reason", "expected"), [("MAX_TOKENS", "length"), ("SAFETY", "content_filter")])
async def test_finish_reason_override(
    sim: GeminiSimulator, provider: GoogleProvider, reason: str, expected: str
) -> None:
    sim.finish_reason = reason
    assert (await provider.complete(request())).finish_reason == expected
    chunks = await collect(provider, request(stream=True))
    assert chunks[-1].finish_reason == expected


async def test_prompt_blocked_is_an_empty_content_filter_answer(sim: GeminiSimulator, provider: GoogleProvider) -> None:
    sim.faults.push(Fault("content_filter"))
    result = await provider.complete(request())
    assert (result.text, result.finish_reason) == ("", "content_filter")
    assert result.usage.prompt_tokens == PROMPT_WORDS
    sim.faults.push(Fault("content_filter"))
    chunks = await collect(provider, request(stream=True))
    assert "".join(c.text for c in chunks) == ""
    assert chunks[-1].finish_reason == "content_filter"


async def test_query_key_is_accepted_by_the_simulator(sim: GeminiSimulator, aio: aiohttp.ClientSession) -> None:
    url = f"{sim.base_url}/v1beta/models/m:generateContent"
    body = {"contents": [{"role": "user", "parts": [{"text": "hi"}]}]}
    async with aio.post(url, params={"key": KEY}, json=body) as resp:
        assert resp.status == 200
    async with aio.post(url, json=body) as resp:
        assert resp.status == 403


# --- streaming -----------------------------------------------------------------------------


async def test_stream(sim: GeminiSimulator, provider: GoogleProvider) -> None:
    sim.thoughts_tokens = 9
    chunks = await collect(provider, request(stream=True))
    assert "".join(c.text for c in chunks) == sim.reply
    assert len([c for c in chunks if c.text]) == len(sim.reply.split())
    assert all(c.finish_reason is None and c.usage is None for c in chunks[:-1])
    last = chunks[-1]
    assert last.finish_reason == "stop"
    reply_words = len(sim.reply.split())
    assert last.usage == Usage(prompt_tokens=PROMPT_WORDS, completion_tokens=reply_words + 9, reasoning_tokens=9)
    assert last.model == "gemini-2.5-flash"


async def test_stream_is_crlf_framed(sim: GeminiSimulator, aio: aiohttp.ClientSession) -> None:
    url = f"{sim.base_url}/v1beta/models/m:streamGenerateContent"
    body = {"contents": [{"role": "user", "parts": [{"text": "hi"}]}]}
    async with aio.post(url, params={"alt": "sse"}, json=body, headers={"x-goog-api-key": KEY}) as resp:
        raw = await resp.read()
    assert raw.count(b"\r\n\r\n") == len(sim.reply.split())
    assert b"[DONE]" not in raw


async def test_stream_cut_raises_stream_cut(sim: GeminiSimulator, provider: GoogleProvider) -> None:
    sim.faults.push(Fault("cut", after_chunks=2))
    got: list[str] = []
    with pytest.raises(errors.StreamCut):
        async for chunk in provider.stream(request(stream=True)):
            got.append(chunk.text)
    assert "".join(got) == "".join(sim.reply_words()[:2])


async def test_stream_in_band_error(sim: GeminiSimulator, provider: GoogleProvider) -> None:
    sim.faults.push(Fault("stream_error", after_chunks=1))
    with pytest.raises(errors.Overloaded) as info:
        await collect(provider, request(stream=True))
    assert info.value.provider == "google"
    assert info.value.upstream_code == "UNAVAILABLE"


async def test_stream_without_finish_reason_is_cut() -> None:
    class Content:
        def __init__(self) -> None:
            self._lines = [
                b'data: {"candidates":[{"content":{"parts":[{"text":"hi"}]}}]}\r\n',
                b"\r\n",
            ]

        def __aiter__(self) -> Content:
            return self

        async def __anext__(self) -> bytes:
            if not self._lines:
                raise StopAsyncIteration
            return self._lines.pop(0)

    class Resp:
        content = Content()

    p = GoogleProvider(ProviderSettings(api_key="k"), None, Timeouts())  # type: ignore[arg-type]
    with pytest.raises(errors.StreamCut):
        _ = [c async for c in p._chunks(Resp(), "m")]  # type: ignore[arg-type]


# --- faults --------------------------------------------------------------------------------


async def test_rate_limit_uses_retry_info(sim: GeminiSimulator, provider: GoogleProvider) -> None:
    sim.faults.push(Fault("rate_limit", retry_after=27))
    with pytest.raises(errors.RateLimited) as info:
        await provider.complete(request())
    assert info.value.retry_after == 27.0
    assert info.value.http_status == 429
    assert info.value.upstream_code == "RESOURCE_EXHAUSTED"
    sim.faults.push(Fault("rate_limit", retry_after=41.2))
    with pytest.raises(errors.RateLimited) as info:
        await collect(provider, request(stream=True))
    assert info.value.retry_after == pytest.approx(41.2)


async def test_a_per_day_quota_is_a_rate_limit_until_the_day_ends(
    sim: GeminiSimulator, provider: GoogleProvider
) -> None:
    """A model's daily quota resets at midnight Pacific time: a rate limit that long (past any
    retry), not credit gone (``QuotaExhausted``, a failure of the provider's health)."""
    sim.faults.push(Fault("quota", retry_after=37))
    with pytest.raises(errors.RateLimited) as info:
        await provider.complete(request())
    assert info.value.http_status == 429
    assert info.value.retry_after == pytest.approx(wire.until_quota_day_ends(), abs=5)


@pytest.mark.parametrize(
    ("now", "hours"),
    [
        ("2026-12-02T07:59:00+00:00", 1 / 60),  # 23:59 PST
        ("2026-12-02T08:00:00+00:00", 24),  # midnight PST: a whole day
        ("2026-07-02T06:30:00+00:00", 0.5),  # 23:30 PDT
        ("2026-03-08T08:00:00+00:00", 23),  # midnight PST on the day the clocks go forward: 23 h
        ("2026-11-01T07:30:00+00:00", 24.5),  # 00:30 PDT on the day the clocks go back: 24.5 h
    ],
)
def test_the_quota_day_ends_at_midnight_pacific_time(now: str, hours: float) -> None:
    assert wire.until_quota_day_ends(datetime.fromisoformat(now)) == pytest.approx(hours * 3600)


@pytest.mark.parametrize(
    ("fault", "cls", "status", "code"),
    [
        (Fault("overloaded"), errors.Overloaded, 503, "UNAVAILABLE"),
        (Fault("server_error"), errors.UpstreamServerError, 500, "INTERNAL"),
        (Fault("server_error", status=504), errors.UpstreamTimeout, 504, "DEADLINE_EXCEEDED"),
        (Fault("auth"), errors.UpstreamAuthError, 400, "API_KEY_INVALID"),
        (Fault("bad_request"), errors.UpstreamBadRequest, 400, "INVALID_ARGUMENT"),
        (Fault("not_found"), errors.UpstreamModelNotFound, 404, "NOT_FOUND"),
    ],
)
async def test_http_faults(
    sim: GeminiSimulator,
    provider: GoogleProvider,
    fault: Fault,
    cls: type[errors.ProviderError],
    status: int,
    code: str,
) -> None:
    sim.faults.push(fault, times=2)
    for call in (provider.complete(request()), collect(provider, request(stream=True))):
        with pytest.raises(cls) as info:
            await call
        assert type(info.value) is cls
        assert (info.value.http_status, info.value.upstream_code, info.value.provider) == (
            status,
            code,
            "google",
        )


async def test_wrong_key_is_auth_error(sim: GeminiSimulator, session: UpstreamClient, timeouts: Timeouts) -> None:
    p = GoogleProvider(ProviderSettings(api_key="wrong", base_url=sim.base_url), session, timeouts)
    with pytest.raises(errors.UpstreamAuthError):
        await p.complete(request())


async def test_malformed(sim: GeminiSimulator, provider: GoogleProvider) -> None:
    sim.faults.push(Fault("malformed"), times=2)
    with pytest.raises(errors.MalformedResponse):
        await provider.complete(request())
    with pytest.raises(errors.MalformedResponse):
        await collect(provider, request(stream=True))


async def test_non_streaming_cut_body(sim: GeminiSimulator, provider: GoogleProvider) -> None:
    sim.faults.push(Fault("cut"))
    with pytest.raises(errors.ProviderError) as info:
        await provider.complete(request())
    assert info.value.fallback


async def test_timeouts(sim: GeminiSimulator, provider: GoogleProvider) -> None:
    sim.faults.push(Fault("timeout", delay=2), times=2)
    with pytest.raises(errors.UpstreamTimeout):
        await provider.complete(request())
    with pytest.raises(errors.UpstreamTimeout):
        await collect(provider, request(stream=True))


async def test_delay_fault_still_answers(sim: GeminiSimulator, provider: GoogleProvider) -> None:
    sim.faults.push(Fault("delay", delay=0.1))
    assert (await provider.complete(request())).text == sim.reply


async def test_connection_refused(session: UpstreamClient, timeouts: Timeouts) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    p = GoogleProvider(ProviderSettings(api_key=KEY, base_url=f"http://127.0.0.1:{port}"), session, timeouts)
    with pytest.raises(errors.UpstreamConnectionError):
        await p.complete(request())
    with pytest.raises(errors.UpstreamConnectionError):
        await collect(p, request(stream=True))


# --- pure mapping --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("reason", "call", "expected"),
    [
        ("STOP", False, "stop"),
        ("STOP", True, "tool_calls"),
        ("OTHER", False, "stop"),
        ("LANGUAGE", False, "stop"),
        ("FINISH_REASON_UNSPECIFIED", False, "stop"),
        ("MAX_TOKENS", False, "length"),
        ("SAFETY", False, "content_filter"),
        ("RECITATION", False, "content_filter"),
        ("BLOCKLIST", False, "content_filter"),
        ("PROHIBITED_CONTENT", False, "content_filter"),
        ("SPII", False, "content_filter"),
        ("IMAGE_SAFETY", False, "content_filter"),
        ("MALFORMED_FUNCTION_CALL", False, "stop"),
        ("UNEXPECTED_TOOL_CALL", False, "stop"),
        ("TOO_MANY_TOOL_CALLS", False, "stop"),
        ("SOMETHING_NEW", False, "stop"),
    ],
)
def test_map_finish_reason(reason: str, call: bool, expected: str) -> None:
    assert wire.map_finish_reason(reason, has_function_call=call) == expected


def test_map_usage() -> None:
    usage = wire.map_usage(
        {
            "promptTokenCount": 100,
            "candidatesTokenCount": 20,
            "thoughtsTokenCount": 30,
            "cachedContentTokenCount": 60,
            "toolUsePromptTokenCount": 4,
            "totalTokenCount": 154,
        }
    )
    assert usage == Usage(prompt_tokens=104, completion_tokens=50, cached_tokens=60, reasoning_tokens=30)
    assert usage.total_tokens == 154
    assert wire.map_usage({"promptTokenCount": 3, "totalTokenCount": 3}) == Usage(prompt_tokens=3)
    # not a count (or not one the stores can hold, BIGINT): usage unknown, not 0 tokens or a
    # malformed answer (fallen back from, recorded free)
    for count in ("many", -1, 2**63, 1.5, True):
        assert wire.map_usage({"promptTokenCount": count, "candidatesTokenCount": 2}) is None
    assert wire.map_usage("many") is None
    # no prompt count: a prompt is never 0 tokens ({} was billed $0)
    assert wire.map_usage({}) is None and wire.map_usage({"candidatesTokenCount": 2}) is None


def test_parse_response_skips_thoughts_and_sees_function_calls() -> None:
    piece = wire.parse_response(
        {
            "candidates": [
                {
                    "content": {
                        "role": "model",
                        "parts": [
                            {"text": "secret", "thought": True},
                            {"text": "Sure. "},
                            {"functionCall": {"name": "get_weather", "args": {"city": "Paris"}}},
                        ],
                    },
                    "finishReason": "STOP",
                }
            ],
            "modelVersion": "gemini-2.5-pro",
        }
    )
    assert (piece.text, piece.finish(), piece.model) == ("Sure. ", "tool_calls", "gemini-2.5-pro")


def test_parse_response_blocked_prompt() -> None:
    piece = wire.parse_response({"promptFeedback": {"blockReason": "PROHIBITED_CONTENT"}})
    assert (piece.text, piece.finish()) == ("", "content_filter")


def test_parse_response_rejects_non_objects() -> None:
    with pytest.raises(errors.MalformedResponse):
        wire.parse_response([1, 2])
    with pytest.raises(errors.MalformedResponse):
        wire.parse_response({"candidates": ["x"]})


def test_classify_error_bodies() -> None:
    per_minute = {
        "error": {
            "code": 429,
            "status": "RESOURCE_EXHAUSTED",
            "message": "slow down",
            "details": [
                {
                    "@type": "type.googleapis.com/google.rpc.QuotaFailure",
                    "violations": [{"quotaId": "GenerateContentInputTokensPerModelPerMinute-FreeTier"}],
                },
                {"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "0.5s"},
            ],
        }
    }
    exc = wire.classify(429, {}, per_minute, "")
    assert type(exc) is errors.RateLimited
    assert exc.retry_after == 0.5
    exc = wire.classify(429, {"retry-after": "3"}, {"error": {"code": 429, "message": "x"}}, "")
    assert type(exc) is errors.RateLimited
    assert exc.retry_after == 3.0
    billing = {"error": {"code": 400, "status": "FAILED_PRECONDITION", "message": "enable billing"}}
    assert type(wire.classify(400, {}, billing, "")) is errors.UpstreamAuthError
    assert (
        type(wire.classify(403, {}, {"error": {"code": 403, "status": "PERMISSION_DENIED"}}, ""))
        is errors.UpstreamAuthError
    )
    assert type(wire.classify(502, {}, None, "<html>")) is errors.UpstreamServerError


@pytest.mark.parametrize("model", ["gemini-pro/../../tunedModels/x", "..", "gemini-1.5-pro/./x", "models/../files"])
async def test_a_model_name_with_dot_segments_never_leaves_models(
    provider: GoogleProvider, sim: GeminiSimulator, model: str
) -> None:
    """The model name is a path segment of the vendor's URL: ``..`` in it led the request, with
    this gateway's key, to another resource of Google's API (review). It is the client's 400,
    sent nowhere (not a failure of the provider either)."""
    with pytest.raises(errors.InvalidRequest, match="path segment"):
        await provider.complete(ChatRequest(model, [Message("user", "hi")]))
    assert sim.requests == []
