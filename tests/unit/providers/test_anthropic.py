"""Anthropic adapter against its simulator over real HTTP, plus the pure wire mapping."""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from gateway import errors
from gateway.providers import anthropic_wire as wire
from gateway.providers.anthropic import AnthropicProvider, build
from gateway.providers.base import Timeouts
from gateway.providers.upstream_http import UpstreamClient
from gateway.settings import ProviderSettings
from gateway.simulators.anthropic import AnthropicSimulator
from gateway.simulators.base import Fault
from gateway.types import ChatRequest, Message, StreamChunk, Usage

KEY = "sk-ant-test"
MODEL = "claude-haiku-4-5-20251001"
OLDER_MODEL = "claude-3-haiku-20240307"
#: words of the default request: "Be brief." + "Say hello to me"
PROMPT_WORDS = 6


@pytest.fixture
async def sim() -> AsyncIterator[AnthropicSimulator]:
    s = AnthropicSimulator(api_key=KEY)
    await s.start()
    try:
        yield s
    finally:
        await s.stop()


@pytest.fixture
def provider(sim: AnthropicSimulator, session: UpstreamClient, timeouts: Timeouts) -> AnthropicProvider:
    return AnthropicProvider(ProviderSettings(api_key=KEY, base_url=sim.base_url), session, timeouts)


def req(*messages: Message, **kw: Any) -> ChatRequest:
    msgs = list(messages) or [Message("system", "Be brief."), Message("user", "Say hello to me")]
    return ChatRequest(model=MODEL, messages=msgs, **kw)


async def collect(provider: AnthropicProvider, request: ChatRequest) -> list[StreamChunk]:
    return [c async for c in provider.stream(request)]


def words(text: str) -> int:
    return len(text.split())


# --- request mapping ------------------------------------------------------------------------------


async def test_request_mapping(provider: AnthropicProvider, sim: AnthropicSimulator) -> None:
    request = req(
        Message("system", "Be brief."),
        Message("user", "first"),
        Message("developer", "Use English."),
        Message("user", "second"),
        Message("assistant", "ok"),
        Message("tool", "42"),
        temperature=1.7,
        top_p=0.9,
        stop=["END"],
        user="tenant-7",
    )
    request.model = OLDER_MODEL  # the later models refuse temperature with top_p (the router keeps it from them)
    await provider.complete(request)
    (rec,) = sim.requests
    assert rec.method == "POST"
    assert rec.path == "/v1/messages"
    assert rec.headers["x-api-key"] == KEY
    assert rec.headers["anthropic-version"] == "2023-06-01"
    assert rec.body == {
        "model": OLDER_MODEL,
        "max_tokens": wire.DEFAULT_MAX_TOKENS,
        "system": "Be brief.\n\nUse English.",
        "messages": [
            {"role": "user", "content": "first\n\nsecond"},
            {"role": "assistant", "content": "ok"},
            {"role": "user", "content": "42"},
        ],
        "temperature": 1.7,  # not clamped to Anthropic's 0..1: the upstream decides
        "top_p": 0.9,
        "stop_sequences": ["END"],
        "metadata": {"user_id": "tenant-7"},
    }


async def test_stream_request_sets_stream_and_max_tokens(provider: AnthropicProvider, sim: AnthropicSimulator) -> None:
    await collect(provider, req(max_tokens=50))
    body = sim.requests[0].body
    assert body["stream"] is True
    assert body["max_tokens"] == 50
    assert "system" in body and "stop_sequences" not in body and "metadata" not in body


async def test_base_url_with_v1_suffix(sim: AnthropicSimulator, session: UpstreamClient, timeouts: Timeouts) -> None:
    p = AnthropicProvider(ProviderSettings(api_key=KEY, base_url=sim.base_url + "/v1/"), session, timeouts)
    await p.complete(req())
    assert sim.requests[0].path == "/v1/messages"


async def test_build(session: UpstreamClient, timeouts: Timeouts) -> None:
    assert build(ProviderSettings(), session, timeouts) is None
    assert build(ProviderSettings(api_key=KEY, enabled=False), session, timeouts) is None
    p = build(ProviderSettings(api_key=KEY), session, timeouts)
    assert isinstance(p, AnthropicProvider)
    assert p.name == "anthropic"
    assert p._url == "https://api.anthropic.com/v1/messages"


# --- non-streaming --------------------------------------------------------------------------------


async def test_complete_result(provider: AnthropicProvider, sim: AnthropicSimulator) -> None:
    result = await provider.complete(req())
    assert result.text == sim.reply
    assert result.finish_reason == "stop"
    assert result.model == MODEL
    assert result.usage == Usage(prompt_tokens=PROMPT_WORDS, completion_tokens=words(sim.reply))
    assert result.upstream_request_id is not None and result.upstream_request_id.startswith("req_")


async def test_complete_cache_tokens_and_thinking(provider: AnthropicProvider, sim: AnthropicSimulator) -> None:
    sim.cache_read_input_tokens, sim.cache_creation_input_tokens = 3, 1
    sim.cache_creation_1h_input_tokens = 1
    sim.thinking = "let me think about it"
    sim.served_model = "claude-haiku-4-5-20251001-snap"
    result = await provider.complete(req())
    assert result.text == sim.reply  # the thinking block is not part of the answer
    assert result.model == "claude-haiku-4-5-20251001-snap"
    assert result.usage == Usage(
        prompt_tokens=PROMPT_WORDS,
        completion_tokens=words(sim.reply) + 5,
        cached_tokens=3,
        cache_creation_tokens=1,
        cache_creation_1h_tokens=1,
    )


async def test_complete_null_cache_fields(provider: AnthropicProvider, sim: AnthropicSimulator) -> None:
    sim.cache_read_input_tokens = sim.cache_creation_input_tokens = None
    result = await provider.complete(req())
    assert result.usage == Usage(prompt_tokens=PROMPT_WORDS, completion_tokens=words(sim.reply))


@pytest.mark.parametrize(
    ("stop_reason", "expected"),
    [
        ("max_tokens", "length"),
        ("refusal", "content_filter"),
        ("tool_use", "tool_calls"),
        ("pause_turn", "stop"),
        ("model_context_window_exceeded", "length"),
    ],
)
@pytest.mark.parametrize("stream", [False, True])
async def test_stop_reason_override(
    provider: AnthropicProvider,
    sim: AnthropicSimulator,
    stop_reason: str,
    expected: str,
    stream: bool,
) -> None:
    sim.stop_reason = stop_reason
    if stream:
        assert (await collect(provider, req()))[-1].finish_reason == expected
    else:
        assert (await provider.complete(req())).finish_reason == expected


async def test_max_tokens_and_stop_sequence_honoured(provider: AnthropicProvider, sim: AnthropicSimulator) -> None:
    sim.reply = "one two three four five"
    short = await provider.complete(req(max_tokens=2))
    assert (short.text, short.finish_reason, short.usage.completion_tokens) == (
        "one two",
        "length",
        2,
    )
    cut = await provider.complete(req(stop=[" four"]))
    assert (cut.text, cut.finish_reason) == ("one two three", "stop")


# --- streaming ------------------------------------------------------------------------------------


async def test_stream(provider: AnthropicProvider, sim: AnthropicSimulator) -> None:
    sim.ping_every = 1
    chunks = await collect(provider, req())
    text_chunks = [c for c in chunks if c.text]
    assert "".join(c.text for c in chunks) == sim.reply
    assert len(text_chunks) == len(sim.reply_words())
    assert all(c.finish_reason is None and c.usage is None for c in text_chunks)
    last = chunks[-1]
    assert last.finish_reason == "stop"
    assert last.usage == Usage(prompt_tokens=PROMPT_WORDS, completion_tokens=words(sim.reply))
    assert {c.model for c in chunks} == {MODEL}


@pytest.mark.parametrize("delta_has_input", [False, True])
async def test_stream_cache_thinking_served_model(
    provider: AnthropicProvider, sim: AnthropicSimulator, delta_has_input: bool
) -> None:
    sim.cache_read_input_tokens, sim.cache_creation_input_tokens = 2, 2
    sim.cache_creation_1h_input_tokens = 1
    sim.thinking = "hmm okay"
    sim.served_model = "claude-snap"
    sim.delta_usage_has_input = delta_has_input
    chunks = await collect(provider, req())
    assert "".join(c.text for c in chunks) == sim.reply
    assert chunks[-1].usage == Usage(
        prompt_tokens=PROMPT_WORDS,
        completion_tokens=words(sim.reply) + 2,
        cached_tokens=2,
        cache_creation_tokens=2,
        cache_creation_1h_tokens=1,
    )
    assert chunks[-1].model == "claude-snap"


async def test_stream_cut(provider: AnthropicProvider, sim: AnthropicSimulator) -> None:
    sim.faults.push(Fault("cut", after_chunks=2))
    got: list[str] = []
    with pytest.raises(errors.StreamCut) as exc:
        async for chunk in provider.stream(req()):
            got.append(chunk.text)
    assert "".join(got) == "".join(sim.reply_words()[:2])
    assert exc.value.provider == "anthropic"


@dataclass
class _EndsEarly(AnthropicSimulator):
    """Sends one text delta (CRLF framed), waits ``stall`` seconds, then ends the body cleanly
    (chunked EOF) without ``message_stop``."""

    stall: float = 0.0

    def routes(self) -> list[web.RouteDef]:
        async def handler(request: web.Request) -> web.StreamResponse:
            resp = web.StreamResponse(headers={"content-type": "text/event-stream"})
            await resp.prepare(request)
            await resp.write(
                b'event: message_start\r\ndata: {"type":"message_start","message":{"model":"m",'
                b'"usage":{"input_tokens":1,"output_tokens":1}}}\r\n\r\n'
            )
            await resp.write(
                b'event: content_block_delta\r\ndata: {"type":"content_block_delta","index":0,'
                b'"delta":{"type":"text_delta","text":"Hi"}}\r\n\r\n'
            )
            await asyncio.sleep(self.stall)
            await resp.write_eof()
            return resp

        return [web.post("/v1/messages", handler)]


@pytest.mark.parametrize("stall", [0.0, 0.8])
async def test_stream_ending_or_stalling_without_message_stop_is_cut(
    session: UpstreamClient, timeouts: Timeouts, stall: float
) -> None:
    # stall > timeouts.stream_idle (0.5 s): the idle timeout after text became a StreamCut
    sim = _EndsEarly(stall=stall)
    await sim.start()
    try:
        p = AnthropicProvider(ProviderSettings(api_key=KEY, base_url=sim.base_url), session, timeouts)
        got: list[str] = []
        with pytest.raises(errors.StreamCut) as exc:
            async for chunk in p.stream(req()):
                got.append(chunk.text)
        assert got == ["Hi"]  # CRLF framing parsed
        assert isinstance(exc.value.__cause__, errors.UpstreamTimeout) == (stall > 0)
    finally:
        await sim.stop()


async def test_stream_in_band_error(provider: AnthropicProvider, sim: AnthropicSimulator) -> None:
    sim.faults.push(Fault("stream_error", after_chunks=3))
    got: list[str] = []
    with pytest.raises(errors.Overloaded) as exc:
        async for chunk in provider.stream(req()):
            got.append(chunk.text)
    assert "".join(got) == "".join(sim.reply_words()[:3])
    assert exc.value.upstream_code == "overloaded_error"
    assert exc.value.http_status == 200
    assert exc.value.retryable


async def test_stream_refusal(provider: AnthropicProvider, sim: AnthropicSimulator) -> None:
    sim.faults.push(Fault("content_filter", after_chunks=2))
    chunks = await collect(provider, req())
    assert "".join(c.text for c in chunks) == " ".join(sim.reply.split(" ")[:2])
    assert chunks[-1].finish_reason == "content_filter"


# --- faults ---------------------------------------------------------------------------------------

HTTP_FAULTS = [
    (Fault("rate_limit", retry_after=2), errors.RateLimited, 429, 2.0),
    (Fault("rate_limit", retry_after=7, retry_after_ms=1500), errors.RateLimited, 429, 1.5),
    (Fault("quota"), errors.QuotaExhausted, 400, None),
    (Fault("quota", status=402), errors.QuotaExhausted, 402, None),
    (Fault("quota", status=429), errors.QuotaExhausted, 429, None),
    (Fault("overloaded"), errors.Overloaded, 529, None),
    (Fault("overloaded", retry_after=3), errors.Overloaded, 529, 3.0),
    (Fault("server_error"), errors.UpstreamServerError, 500, None),
    (Fault("server_error", status=504), errors.UpstreamTimeout, 504, None),
    (Fault("auth"), errors.UpstreamAuthError, 401, None),
    (Fault("bad_request"), errors.UpstreamBadRequest, 400, None),
    (Fault("not_found"), errors.UpstreamModelNotFound, 404, None),
]


@pytest.mark.parametrize(("fault", "cls", "status", "retry_after"), HTTP_FAULTS)
@pytest.mark.parametrize("stream", [False, True])
async def test_http_faults(
    provider: AnthropicProvider,
    sim: AnthropicSimulator,
    fault: Fault,
    cls: type[errors.ProviderError],
    status: int,
    retry_after: float | None,
    stream: bool,
) -> None:
    sim.faults.push(fault)
    with pytest.raises(errors.ProviderError) as exc:
        if stream:
            await collect(provider, req())
        else:
            await provider.complete(req())
    assert type(exc.value) is cls
    assert exc.value.provider == "anthropic"
    assert exc.value.http_status == status
    assert exc.value.retry_after == retry_after
    assert exc.value.upstream_code is not None
    # the next request is served normally
    assert (await provider.complete(req())).text == sim.reply


async def test_wrong_key_is_auth_error(sim: AnthropicSimulator, session: UpstreamClient, timeouts: Timeouts) -> None:
    p = AnthropicProvider(ProviderSettings(api_key="nope", base_url=sim.base_url), session, timeouts)
    with pytest.raises(errors.UpstreamAuthError) as exc:
        await p.complete(req())
    assert exc.value.upstream_code == "authentication_error"


async def test_simulator_requires_version_header(sim: AnthropicSimulator, aio: aiohttp.ClientSession) -> None:
    body = {"model": MODEL, "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}]}
    async with aio.post(sim.base_url + "/v1/messages", json=body, headers={"x-api-key": KEY}) as resp:
        assert resp.status == 400
        assert (await resp.json())["error"]["type"] == "invalid_request_error"
    body["messages"] = [{"role": "system", "content": "x"}]
    headers = {"x-api-key": KEY, "anthropic-version": "2023-06-01"}
    async with aio.post(sim.base_url + "/v1/messages", json=body, headers=headers) as resp:
        assert resp.status == 400  # the Messages API has no system role


async def test_complete_refusal(provider: AnthropicProvider, sim: AnthropicSimulator) -> None:
    sim.faults.push(Fault("content_filter", after_chunks=1))
    result = await provider.complete(req())
    assert (result.text, result.finish_reason) == (sim.reply.split(" ")[0], "content_filter")


@pytest.mark.parametrize("stream", [False, True])
async def test_malformed(provider: AnthropicProvider, sim: AnthropicSimulator, stream: bool) -> None:
    sim.faults.push(Fault("malformed"))
    with pytest.raises(errors.MalformedResponse):
        if stream:
            await collect(provider, req())
        else:
            await provider.complete(req())


async def test_complete_body_cut(provider: AnthropicProvider, sim: AnthropicSimulator) -> None:
    sim.faults.push(Fault("cut"))
    with pytest.raises(errors.StreamCut):
        await provider.complete(req())


async def test_stream_error_fault_on_non_streaming_call_is_529(
    provider: AnthropicProvider, sim: AnthropicSimulator
) -> None:
    sim.faults.push(Fault("stream_error"))
    with pytest.raises(errors.Overloaded):
        await provider.complete(req())


async def test_timeout(provider: AnthropicProvider, sim: AnthropicSimulator) -> None:
    # both modes at once: the held handlers then delay the simulator's shutdown only once
    sim.faults.push(Fault("timeout", delay=2), times=2)
    results = await asyncio.gather(provider.complete(req()), collect(provider, req()), return_exceptions=True)
    assert [type(r) for r in results] == [errors.UpstreamTimeout, errors.UpstreamTimeout]
    assert sorted(bool(r.body.get("stream")) for r in sim.requests) == [False, True]


async def test_short_delay_still_answers(provider: AnthropicProvider, sim: AnthropicSimulator) -> None:
    sim.faults.push(Fault("delay", delay=0.05))
    assert (await provider.complete(req())).text == sim.reply


@pytest.mark.parametrize("stream", [False, True])
async def test_connection_refused(session: UpstreamClient, timeouts: Timeouts, stream: bool) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    p = AnthropicProvider(ProviderSettings(api_key=KEY, base_url=f"http://127.0.0.1:{port}"), session, timeouts)
    with pytest.raises(errors.UpstreamConnectionError):
        if stream:
            await collect(p, req())
        else:
            await p.complete(req())


# --- pure mapping ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("stop_reason", "expected"),
    [
        ("end_turn", "stop"),
        ("stop_sequence", "stop"),
        ("pause_turn", "stop"),
        ("max_tokens", "length"),
        ("model_context_window_exceeded", "length"),
        ("tool_use", "tool_calls"),
        ("refusal", "content_filter"),
        (None, "stop"),
        ("something_new", "stop"),
    ],
)
def test_finish_reason_table(stop_reason: str | None, expected: str) -> None:
    assert wire.finish_reason(stop_reason) == expected


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ({"input_tokens": 10, "output_tokens": 4}, Usage(10, 4)),
        (
            {
                "input_tokens": 10,
                "output_tokens": 4,
                "cache_creation_input_tokens": None,
                "cache_read_input_tokens": None,
            },
            Usage(10, 4),
        ),
        (
            {
                "input_tokens": 3,
                "output_tokens": 9,
                "cache_creation_input_tokens": 100,
                "cache_read_input_tokens": 2000,
                "cache_creation": {"ephemeral_5m_input_tokens": 100},
            },
            Usage(
                prompt_tokens=2103,
                completion_tokens=9,
                cached_tokens=2000,
                cache_creation_tokens=100,
            ),
        ),
        (  # writes by lifetime (the API since 2025): the 1-hour ones are priced apart
            {
                "input_tokens": 3,
                "output_tokens": 9,
                "cache_creation_input_tokens": 100,
                "cache_read_input_tokens": 0,
                "cache_creation": {"ephemeral_5m_input_tokens": 40, "ephemeral_1h_input_tokens": 60},
            },
            Usage(prompt_tokens=103, completion_tokens=9, cache_creation_tokens=100, cache_creation_1h_tokens=60),
        ),
        (  # a null split: no 1-hour writes
            {"input_tokens": 3, "output_tokens": 9, "cache_creation_input_tokens": 5, "cache_creation": None},
            Usage(prompt_tokens=8, completion_tokens=9, cache_creation_tokens=5),
        ),
    ],
)
def test_usage_table(raw: dict[str, Any], expected: Usage) -> None:
    assert wire.usage_from(raw) == expected


@pytest.mark.parametrize(
    "raw",
    [
        None,
        {},
        {"input_tokens": "ten", "output_tokens": 4},
        {"input_tokens": 10, "output_tokens": -1},
        {"input_tokens": True, "output_tokens": 4},
        {"input_tokens": 2**62, "output_tokens": 4},
        {"input_tokens": 10.5, "output_tokens": 4},
        {"output_tokens": 4},
        {"input_tokens": 10, "output_tokens": 4, "cache_read_input_tokens": -3},
        # a split that cannot be the writes': at either rate it would be a guess
        {"input_tokens": 10, "output_tokens": 4, "cache_creation_input_tokens": 5, "cache_creation": [5]},
        {
            "input_tokens": 10,
            "output_tokens": 4,
            "cache_creation_input_tokens": 5,
            "cache_creation": {"ephemeral_1h_input_tokens": 6},
        },
        {
            "input_tokens": 10,
            "output_tokens": 4,
            "cache_creation_input_tokens": 5,
            "cache_creation": {"ephemeral_1h_input_tokens": "5"},
        },
    ],
)
def test_an_unreadable_usage_is_unknown_not_zero(raw: Any, caplog: pytest.LogCaptureFixture) -> None:
    """Usage unknown (billable at an unknown cost), the answer still served: it was a malformed
    answer (fallen back from and recorded free) or, for a missing count, 0 tokens."""
    assert wire.usage_from(raw) is None
    assert "recorded as usage unknown" in caplog.text


def test_parse_message_text_blocks_only() -> None:
    body = {
        "type": "message",
        "model": "claude-x",
        "stop_reason": "tool_use",
        "content": [
            {"type": "thinking", "thinking": "secret", "signature": "s"},
            {"type": "redacted_thinking", "data": "xx"},
            {"type": "text", "text": "Hello "},
            {"type": "tool_use", "id": "toolu_1", "name": "f", "input": {}},
            {"type": "text", "text": "world"},
        ],
        "usage": {"input_tokens": 1, "output_tokens": 2},
    }
    result = wire.parse_message(body, "requested", "req_1")
    assert (result.text, result.finish_reason, result.model) == (
        "Hello world",
        "tool_calls",
        "claude-x",
    )
    assert result.upstream_request_id == "req_1"
    body.pop("model")
    assert wire.parse_message(body, "requested").model == "requested"


@pytest.mark.parametrize(
    "body",
    [
        [],
        {"type": "error"},
        {"type": "message", "content": "hi", "usage": {}},
        {"type": "message", "content": [{"type": "text"}], "usage": {}},
    ],
)
def test_parse_message_malformed(body: Any) -> None:
    with pytest.raises(errors.MalformedResponse):
        wire.parse_message(body, "m")


def test_a_message_with_an_unreadable_usage_is_an_answer_of_unknown_cost() -> None:
    for usage in ("many", {"input_tokens": -1, "output_tokens": 2}, {"output_tokens": 2}):
        result = wire.parse_message(
            {"type": "message", "content": [{"type": "text", "text": "hi"}], "usage": usage}, "m"
        )
        assert (result.text, result.usage) == ("hi", None)


def test_a_message_without_usage_is_an_answer_of_unknown_cost() -> None:
    """A 200 Message with its content and no usage: the answer, with usage unknown (recorded
    billable, unpriced). It was a malformed answer: recorded free, and the call fell back to
    another provider, paid twice."""
    result = wire.parse_message({"type": "message", "content": [{"type": "text", "text": "hi"}]}, "m")
    assert (result.text, result.usage) == ("hi", None)


def test_stream_usage_is_known_at_message_delta_and_unknown_when_never_sent() -> None:
    """The final counts come with message_delta: handed on then, so a stream cut before
    message_stop is priced exactly (it was unpriced, though Anthropic had told us); a stream
    that never sent usage is usage unknown (it was recorded as 0 tokens, free)."""
    parser = wire.StreamParser("m")
    start = {"type": "message_start", "message": {"model": "m", "usage": {"input_tokens": 1000, "output_tokens": 1}}}
    assert parser.feed("message_start", json.dumps(start)) is None
    delta = {"type": "message_delta", "delta": {"stop_reason": "end_turn"}, "usage": {"output_tokens": 2000}}
    chunk = parser.feed("message_delta", json.dumps(delta))
    assert chunk is not None and chunk.usage == Usage(1000, 2000) and not chunk.text and chunk.finish_reason is None
    bare = wire.StreamParser("m")
    bare.feed("message_start", json.dumps({"type": "message_start", "message": {"model": "m"}}))
    assert (
        bare.feed("message_delta", json.dumps({"type": "message_delta", "delta": {"stop_reason": "end_turn"}})) is None
    )
    end = bare.feed("message_stop", json.dumps({"type": "message_stop"}))
    assert end is not None and end.finish_reason == "stop" and end.usage is None


def test_parse_message_error_object_behind_200() -> None:
    with pytest.raises(errors.Overloaded):
        wire.parse_message({"type": "error", "error": {"type": "overloaded_error", "message": "x"}}, "m")


def feed_all(parser: wire.StreamParser, events: list[tuple[str | None, dict[str, Any]]]) -> list[StreamChunk]:
    out = [parser.feed(name, json.dumps(data)) for name, data in events]
    return [c for c in out if c is not None]


def test_stream_parser_prefers_message_delta_counts() -> None:
    parser = wire.StreamParser("req-model")
    chunks = feed_all(
        parser,
        [
            (
                "message_start",
                {
                    "type": "message_start",
                    "message": {
                        "model": "served",
                        "usage": {
                            "input_tokens": 1,
                            "cache_read_input_tokens": None,
                            "output_tokens": 1,
                        },
                    },
                },
            ),
            ("ping", {"type": "ping"}),
            (
                None,
                {
                    "type": "content_block_start",
                    "index": 0,
                    "content_block": {"type": "text", "text": "Hi"},
                },
            ),
            (
                "content_block_delta",
                {
                    "type": "content_block_delta",
                    "index": 0,
                    "delta": {"type": "text_delta", "text": " there"},
                },
            ),
            (
                "content_block_delta",
                {
                    "type": "content_block_delta",
                    "index": 1,
                    "delta": {"type": "input_json_delta", "partial_json": '{"a"'},
                },
            ),
            (
                "message_delta",
                {
                    "type": "message_delta",
                    "delta": {"stop_reason": None},
                    "usage": {"output_tokens": 3},
                },
            ),
            (
                "message_delta",
                {
                    "type": "message_delta",
                    "delta": {"stop_reason": "max_tokens"},
                    "usage": {"output_tokens": 7, "input_tokens": 5, "cache_read_input_tokens": 4},
                },
            ),
        ],
    )
    assert not parser.done
    final = parser.feed("message_stop", '{"type":"message_stop"}')
    assert parser.done
    assert [c.text for c in chunks if c.text] == ["Hi", " there"]
    assert chunks[-1].usage == final.usage  # handed on at message_delta already
    assert final == StreamChunk(
        finish_reason="length",
        model="served",
        usage=Usage(prompt_tokens=9, completion_tokens=7, cached_tokens=4),
    )


@pytest.mark.parametrize(
    ("etype", "cls"),
    [
        ("overloaded_error", errors.Overloaded),
        ("rate_limit_error", errors.RateLimited),
        ("api_error", errors.UpstreamServerError),
        ("billing_error", errors.QuotaExhausted),
        ("invalid_request_error", errors.UpstreamBadRequest),
        ("timeout_error", errors.UpstreamTimeout),
        ("mystery_error", errors.UpstreamServerError),
    ],
)
def test_stream_parser_error_event(etype: str, cls: type[errors.ProviderError]) -> None:
    data = json.dumps({"type": "error", "error": {"type": etype, "message": "boom"}})
    with pytest.raises(errors.ProviderError) as exc:
        wire.StreamParser("m").feed("error", data)
    assert type(exc.value) is cls
    assert (exc.value.http_status, exc.value.upstream_code) == (200, etype)
    assert "boom" in exc.value.message


@pytest.mark.parametrize("data", ["not json", "[1, 2]"])
def test_stream_parser_malformed(data: str) -> None:
    with pytest.raises(errors.MalformedResponse):
        wire.StreamParser("m").feed("content_block_delta", data)


def err_body(etype: str, message: str = "m") -> dict[str, Any]:
    return {"type": "error", "error": {"type": etype, "message": message}}


@pytest.mark.parametrize(
    ("status", "body", "headers", "cls", "retry_after"),
    [
        (429, err_body("rate_limit_error"), {"retry-after": "12"}, errors.RateLimited, 12.0),
        (
            429,
            err_body("rate_limit_error"),
            {"x-should-retry": "false"},
            errors.QuotaExhausted,
            None,
        ),
        (
            429,
            err_body("rate_limit_error", "Extra usage is required for long context requests."),
            {},
            errors.QuotaExhausted,
            None,
        ),
        (
            400,
            err_body(
                "invalid_request_error",
                "You have reached your specified API usage limits. You will regain access on 2026-04-01 at 00:00 UTC.",
            ),
            {},
            errors.QuotaExhausted,
            None,
        ),
        (402, err_body("billing_error"), {}, errors.QuotaExhausted, None),
        (529, err_body("overloaded_error"), {}, errors.Overloaded, None),
        (503, err_body("overloaded_error"), {}, errors.Overloaded, None),
        (401, err_body("authentication_error"), {}, errors.UpstreamAuthError, None),
        (403, err_body("permission_error"), {}, errors.UpstreamAuthError, None),
        (404, err_body("not_found_error"), {}, errors.UpstreamModelNotFound, None),
        (413, err_body("request_too_large"), {}, errors.UpstreamTooLarge, None),
        (
            400,
            err_body("invalid_request_error", "prompt is too long"),
            {},
            errors.UpstreamBadRequest,
            None,
        ),
        (500, err_body("api_error"), {}, errors.UpstreamServerError, None),
        (504, err_body("timeout_error"), {}, errors.UpstreamTimeout, None),
        (502, None, {}, errors.UpstreamServerError, None),
    ],
)
def test_classify_table(
    status: int,
    body: Any,
    headers: dict[str, str],
    cls: type[errors.ProviderError],
    retry_after: float | None,
) -> None:
    err = wire.classify(status, headers, body, "<html>bad gateway</html>" if body is None else json.dumps(body))
    assert type(err) is cls
    assert (err.http_status, err.retry_after, err.provider) == (status, retry_after, "anthropic")
    if body is None:
        assert "bad gateway" in err.message


def test_build_body_edge_cases() -> None:
    body = wire.build_body(
        ChatRequest(
            model="m",
            messages=[Message("system", "s")],
            prompt="complete this",
            max_tokens=0,
            stop=[],
        ),
        stream=False,
    )
    assert body == {
        "model": "m",
        "max_tokens": 0,
        "system": "s",
        "messages": [{"role": "user", "content": "complete this"}],
    }


@pytest.mark.parametrize(
    "model, refuses",
    [
        ("claude-opus-4-1-20250805", True),
        ("claude-opus-4-1", True),
        ("claude-sonnet-4-5", True),
        ("claude-sonnet-4-5-20250929", True),
        ("claude-haiku-4-5@20251001", True),
        ("claude-opus-4-6", True),
        ("claude-sonnet-5", True),
        ("claude-opus-4-20250514", False),  # a date is no minor version: Opus 4.0
        ("claude-sonnet-4-0", False),
        ("claude-3-7-sonnet-20250219", False),
        ("claude-3-haiku-20240307", False),
        ("my-claude-deployment", False),
    ],
)
def test_which_models_refuse_temperature_with_top_p(model: str, refuses: bool) -> None:
    lacks = AnthropicProvider.model_lacks(None, model)  # type: ignore[arg-type]
    assert ("temperature_with_top_p" in lacks) is refuses


def test_a_sampling_knob_at_its_default_is_left_out_beside_the_other() -> None:
    def sampling(temperature: float | None, top_p: float | None) -> dict[str, Any]:
        body = wire.build_body(
            ChatRequest("m", [Message("user", "x")], temperature=temperature, top_p=top_p), stream=False
        )
        return {k: body[k] for k in ("temperature", "top_p") if k in body}

    assert sampling(0.5, 1) == {"temperature": 0.5}
    assert sampling(1, 0.5) == {"top_p": 0.5}
    assert sampling(1, 1) == {}
    assert sampling(1, None) == {"temperature": 1}
    assert sampling(None, 1) == {"top_p": 1}
    assert sampling(0.5, 0.9) == {"temperature": 0.5, "top_p": 0.9}


@pytest.mark.parametrize(
    "last, sent",
    [
        ("Sure, ", [{"role": "assistant", "content": "Sure,"}]),
        ("  \n", []),
        ("{", [{"role": "assistant", "content": "{"}]),
    ],
)
async def test_a_prefill_loses_its_trailing_whitespace(
    provider: AnthropicProvider, sim: AnthropicSimulator, last: str, sent: list[dict[str, Any]]
) -> None:
    """A last assistant message is Anthropic's prefill, and one ending in whitespace is its 400
    ("final assistant content cannot end with trailing whitespace"), which does not fall back."""
    await provider.complete(req(Message("user", "Say hi"), Message("assistant", last)))
    assert sim.requests[-1].body["messages"] == [{"role": "user", "content": "Say hi"}, *sent]


def test_cache_marks_on_calls_results_and_empty_parts_land_on_a_block() -> None:
    """A mark on an assistant's calls goes to its last tool_use block, on a tool result to the
    tool_result block, and a mark on an empty text part (no block: Anthropic refuses those) to
    the block before it."""
    from gateway.api.validation import parse_chat

    body = {
        "model": "claude-3-haiku",
        "messages": [
            {"role": "user", "content": [{"type": "text", "text": "look it up"},
                                         {"type": "text", "text": "", "cache_control": {"type": "ephemeral"}}]},
            {"role": "assistant", "content": None, "cache_control": {"type": "ephemeral", "ttl": "5m"},
             "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}]},
            {"role": "tool", "tool_call_id": "c1", "content": "42", "cache_control": {"type": "ephemeral"}},
        ],
    }  # fmt: skip
    sent = wire.build_body(parse_chat(body).template, stream=False)
    assert sent["messages"][0]["content"] == [
        {"type": "text", "text": "look it up", "cache_control": {"type": "ephemeral"}}
    ]
    assert sent["messages"][1]["content"][-1] == {
        "type": "tool_use", "id": "c1", "name": "f", "input": {}, "cache_control": {"type": "ephemeral", "ttl": "5m"}
    }  # fmt: skip
    assert sent["messages"][2]["content"] == [
        {"type": "tool_result", "tool_use_id": "c1", "content": "42", "cache_control": {"type": "ephemeral"}}
    ]


def _sent(messages: list[dict[str, Any]]) -> dict[str, Any]:
    from gateway.api.validation import parse_chat

    return wire.build_body(parse_chat({"model": "claude-3-haiku", "messages": messages}).template, stream=False)


MARK = {"type": "ephemeral"}


def test_a_marked_stretch_of_whitespace_joins_the_block_before_it() -> None:
    """Anthropic refuses a text block of whitespace alone: a mark on one made the marked
    content a block of its own (a re-test); the texts between two marks are one block."""
    sent = _sent([{"role": "user", "content": [
        {"type": "text", "text": "Hello"}, {"type": "text", "text": " ", "cache_control": MARK},
        {"type": "text", "text": "more "}, {"type": "text", "text": "words"},
    ]}])  # fmt: skip
    assert sent["messages"][0]["content"] == [
        {"type": "text", "text": "Hello ", "cache_control": MARK},
        {"type": "text", "text": "more words"},
    ]
    system = _sent([
        {"role": "system", "content": " "}, {"role": "system", "content": "S", "cache_control": MARK},
        {"role": "system", "content": [{"type": "text", "text": "  ", "cache_control": MARK}]},
        {"role": "user", "content": "hi"},
    ])["system"]  # fmt: skip
    assert system == [{"type": "text", "text": "S  ", "cache_control": MARK}]  # its whitespace kept, in a block
    assert all(block["text"].strip() for m in sent["messages"] for block in m["content"])


def test_a_marked_prefill_ending_in_whitespace_is_trimmed_and_keeps_its_mark() -> None:
    """A last assistant turn that ends in whitespace is Anthropic's 400, which does not fall
    back: a marked block of whitespace at its end left the block before it untrimmed."""
    for assistant in (
        [{"role": "assistant", "content": [{"type": "text", "text": "Sure "},
                                           {"type": "text", "text": " ", "cache_control": MARK}]}],
        [{"role": "assistant", "content": "Sure "},
         {"role": "assistant", "content": [{"type": "text", "text": "\n", "cache_control": MARK}]}],
    ):  # fmt: skip
        sent = _sent([{"role": "user", "content": "Hi"}, *assistant])
        assert sent["messages"][-1] == {
            "role": "assistant", "content": [{"type": "text", "text": "Sure", "cache_control": MARK}]
        }, sent["messages"]  # fmt: skip


def test_a_marked_message_of_whitespace_alone_is_no_empty_turn() -> None:
    """Nothing before it to take the mark: it was sent as an empty turn, Anthropic's 400 (a diff
    review); it goes as it would without the mark."""
    sent = _sent([
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": [{"type": "text", "text": "  ", "cache_control": MARK}]},
        {"role": "user", "content": "b"},
    ])  # fmt: skip
    assert all(turn["content"] for turn in sent["messages"])
    assert sent["messages"][1] == {"role": "assistant", "content": "  "}


@pytest.mark.parametrize(
    ("configured", "model", "sent"),
    [
        (None, "claude-sonnet-4-5", 4096),  # Anthropic requires one: its OTPM limit reserves it
        (32000, "claude-sonnet-4-5", 32000),
        (32000, "claude-3-haiku-20240307", 4096),  # within the model's cap: a larger one is its 400
        (100_000, "claude-sonnet-4-5", 64000),
        (32000, "my-claude-deployment", 32000),  # a name of unknown cap: as configured
    ],
)
async def test_a_request_without_max_tokens_gets_the_configured_default_within_the_models_cap(
    sim: AnthropicSimulator, session: UpstreamClient, timeouts: Timeouts, configured: int | None, model: str, sent: int
) -> None:
    settings = ProviderSettings(api_key=KEY, base_url=sim.base_url, default_max_tokens=configured)
    provider = AnthropicProvider(settings, session, timeouts)
    request = req()
    request.model = model
    await provider.complete(request)
    await collect(provider, request)
    assert [r.body["max_tokens"] for r in sim.requests] == [sent, sent]
    asked = req(max_tokens=100)
    asked.model = model
    await provider.complete(asked)
    assert sim.requests[-1].body["max_tokens"] == 100


def test_default_max_tokens_is_anthropics_alone() -> None:
    from pydantic import ValidationError

    from gateway.settings import Settings

    with pytest.raises(ValidationError, match="only anthropic takes it"):
        Settings(providers={"openai": {"default_max_tokens": 1000}}, _env_file=None)  # type: ignore[call-arg]
    for wrong in (0, True, "1000", 1.5):
        with pytest.raises(ValidationError):
            ProviderSettings(default_max_tokens=wrong)  # YAML's ``true`` was taken for 1 (a re-test)
    settings = Settings(providers={"anthropic": {"default_max_tokens": 1000}}, _env_file=None)  # type: ignore[call-arg]
    assert settings.providers["anthropic"].default_max_tokens == 1000
