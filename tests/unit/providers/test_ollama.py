"""The Ollama adapter against its simulator over real HTTP, plus its pure wire mapping."""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator

import aiohttp
import pytest

from gateway import errors
from gateway.providers import ollama
from gateway.providers.base import Timeouts
from gateway.providers.ollama import OllamaProvider, base_url, build
from gateway.providers.upstream_http import UpstreamClient
from gateway.settings import ProviderSettings
from gateway.simulators.base import Fault
from gateway.simulators.ollama import REFUSAL, OllamaSimulator
from gateway.types import ChatRequest, Message, StreamChunk, Usage

MESSAGES = [
    Message("system", "Be brief."),
    Message("developer", "No emoji."),
    Message("user", "Hi there"),
    Message("assistant", "Hello!"),
    Message("user", "Tell me a joke"),
]
PROMPT_WORDS = 2 + 2 + 2 + 1 + 4


def request(**kw: object) -> ChatRequest:
    base: dict[str, object] = {"model": "llama3.2", "messages": list(MESSAGES)}
    base.update(kw)
    return ChatRequest(**base)  # type: ignore[arg-type]


@pytest.fixture
async def sim() -> AsyncIterator[OllamaSimulator]:
    s = OllamaSimulator()
    await s.start()
    try:
        yield s
    finally:
        await s.stop()


@pytest.fixture
def provider(sim: OllamaSimulator, session: UpstreamClient, timeouts: Timeouts) -> OllamaProvider:
    # OLLAMA_HOST style: host:port without a scheme
    p = build(ProviderSettings(base_url=sim.base_url.removeprefix("http://")), session, timeouts)
    assert p is not None
    return p


async def collect(provider: OllamaProvider, req: ChatRequest) -> list[StreamChunk]:
    return [c async for c in provider.stream(req)]


# --- build / config ------------------------------------------------------------------------


def test_build_needs_no_key(timeouts: Timeouts) -> None:
    assert isinstance(build(ProviderSettings(), None, timeouts), OllamaProvider)  # type: ignore[arg-type]
    assert build(ProviderSettings(enabled=False), None, timeouts) is None  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("host", "url"),
    [
        (None, "http://localhost:11434"),
        ("", "http://localhost:11434"),
        ("127.0.0.1:9999", "http://127.0.0.1:9999"),
        ("gpu-box", "http://gpu-box:11434"),
        ("https://ollama.com/", "https://ollama.com"),
        ("http://10.0.0.5:11434", "http://10.0.0.5:11434"),
    ],
)
def test_base_url(host: str | None, url: str) -> None:
    assert base_url(host) == url


# --- request mapping -----------------------------------------------------------------------


async def test_request_mapping(sim: OllamaSimulator, provider: OllamaProvider) -> None:
    await provider.complete(request(temperature=0.3, top_p=0.8, max_tokens=50, stop=["\n"]))
    rec = sim.requests[-1]
    assert (rec.method, rec.path) == ("POST", "/api/chat")
    assert "authorization" not in {k.lower() for k in rec.headers}
    assert rec.body == {
        "model": "llama3.2",
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "system", "content": "No emoji."},
            {"role": "user", "content": "Hi there"},
            {"role": "assistant", "content": "Hello!"},
            {"role": "user", "content": "Tell me a joke"},
        ],
        "stream": False,
        "options": {"num_predict": 50, "temperature": 0.3, "top_p": 0.8, "stop": ["\n"]},
    }
    await collect(provider, request(stream=True))
    body = sim.requests[-1].body
    assert body["stream"] is True
    assert "options" not in body


async def test_cloud_key_is_sent_as_bearer(session: UpstreamClient, timeouts: Timeouts) -> None:
    sim = OllamaSimulator(api_key="olk")
    await sim.start()
    try:
        good = OllamaProvider(ProviderSettings(base_url=sim.base_url, api_key="olk"), session, timeouts)
        assert (await good.complete(request())).text == sim.reply
        assert sim.requests[-1].headers["Authorization"] == "Bearer olk"
        bad = OllamaProvider(ProviderSettings(base_url=sim.base_url), session, timeouts)
        with pytest.raises(errors.UpstreamAuthError):
            await bad.complete(request())
    finally:
        await sim.stop()


async def test_simulator_streams_when_stream_is_absent(sim: OllamaSimulator, aio: aiohttp.ClientSession) -> None:
    async with aio.post(f"{sim.base_url}/api/chat", json={"model": "m", "messages": []}) as resp:
        assert resp.headers["content-type"] == "application/x-ndjson"
        lines = (await resp.text()).splitlines()
    assert len(lines) == len(sim.reply.split()) + 1


# --- non-streaming -------------------------------------------------------------------------


async def test_complete(sim: OllamaSimulator, provider: OllamaProvider) -> None:
    result = await provider.complete(request())
    assert result.text == sim.reply
    assert result.finish_reason == "stop"
    assert result.model == "llama3.2"
    assert result.usage == Usage(prompt_tokens=PROMPT_WORDS, completion_tokens=len(sim.reply.split()))


async def test_missing_prompt_eval_count_is_zero(sim: OllamaSimulator, provider: OllamaProvider) -> None:
    sim.omit_prompt_eval_count = True
    result = await provider.complete(request())
    assert result.usage == Usage(prompt_tokens=0, completion_tokens=len(sim.reply.split()))
    chunks = await collect(provider, request(stream=True))
    assert chunks[-1].usage == Usage(prompt_tokens=0, completion_tokens=len(sim.reply.split()))


async def test_length_and_served_model(sim: OllamaSimulator, provider: OllamaProvider) -> None:
    sim.done_reason, sim.served_model = "length", "llama3.2:latest"
    result = await provider.complete(request())
    assert (result.finish_reason, result.model) == ("length", "llama3.2:latest")
    chunks = await collect(provider, request(stream=True))
    assert (chunks[-1].finish_reason, chunks[-1].model) == ("length", "llama3.2:latest")


async def test_content_filter_is_a_plain_refusal(sim: OllamaSimulator, provider: OllamaProvider) -> None:
    sim.faults.push(Fault("content_filter"))
    result = await provider.complete(request())
    assert (result.text, result.finish_reason) == (REFUSAL, "stop")


# --- streaming -----------------------------------------------------------------------------


async def test_stream(sim: OllamaSimulator, provider: OllamaProvider) -> None:
    chunks = await collect(provider, request(stream=True))
    assert "".join(c.text for c in chunks) == sim.reply
    assert len([c for c in chunks if c.text]) == len(sim.reply.split())
    assert all(c.finish_reason is None and c.usage is None for c in chunks[:-1])
    assert chunks[-1].finish_reason == "stop"
    assert chunks[-1].usage == Usage(prompt_tokens=PROMPT_WORDS, completion_tokens=len(sim.reply.split()))


async def test_stream_cut(sim: OllamaSimulator, provider: OllamaProvider) -> None:
    sim.faults.push(Fault("cut", after_chunks=3))
    got: list[str] = []
    with pytest.raises(errors.StreamCut):
        async for chunk in provider.stream(request(stream=True)):
            got.append(chunk.text)
    assert "".join(got) == "".join(sim.reply_words()[:3])


async def test_stream_in_band_error(sim: OllamaSimulator, provider: OllamaProvider) -> None:
    sim.faults.push(Fault("stream_error", after_chunks=2))
    got: list[str] = []
    with pytest.raises(errors.UpstreamServerError) as info:
        async for chunk in provider.stream(request(stream=True)):
            got.append(chunk.text)
    assert "unexpected EOF" in info.value.message
    assert len(got) == 2


# --- faults --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fault", "cls", "status"),
    [
        (Fault("rate_limit", retry_after=3), errors.RateLimited, 429),
        (Fault("quota"), errors.QuotaExhausted, 429),
        (Fault("overloaded"), errors.Overloaded, 503),
        (Fault("server_error"), errors.UpstreamServerError, 500),
        (Fault("server_error", status=502), errors.UpstreamServerError, 502),
        (Fault("auth"), errors.UpstreamAuthError, 401),
        (Fault("bad_request"), errors.UpstreamBadRequest, 400),
        (Fault("not_found"), errors.UpstreamModelNotFound, 404),
    ],
)
async def test_http_faults(
    sim: OllamaSimulator,
    provider: OllamaProvider,
    fault: Fault,
    cls: type[errors.ProviderError],
    status: int,
) -> None:
    sim.faults.push(fault, times=2)
    for call in (provider.complete(request()), collect(provider, request(stream=True))):
        with pytest.raises(cls) as info:
            await call
        assert type(info.value) is cls
        assert (info.value.http_status, info.value.provider) == (status, "ollama")


async def test_rate_limit_retry_after_and_messages(sim: OllamaSimulator, provider: OllamaProvider) -> None:
    sim.faults.push(Fault("rate_limit", retry_after=3))
    with pytest.raises(errors.RateLimited) as info:
        await provider.complete(request())
    assert info.value.retry_after == 3.0
    sim.faults.push(Fault("not_found"))
    with pytest.raises(errors.UpstreamModelNotFound) as nf:
        await provider.complete(request())
    assert "model 'llama3.2' not found" in nf.value.message


async def test_malformed(sim: OllamaSimulator, provider: OllamaProvider) -> None:
    sim.faults.push(Fault("malformed"), times=2)
    with pytest.raises(errors.MalformedResponse):
        await provider.complete(request())
    with pytest.raises(errors.MalformedResponse):
        await collect(provider, request(stream=True))


async def test_non_streaming_cut_body(sim: OllamaSimulator, provider: OllamaProvider) -> None:
    sim.faults.push(Fault("cut"))
    with pytest.raises(errors.ProviderError) as info:
        await provider.complete(request())
    assert info.value.fallback


async def test_timeouts(sim: OllamaSimulator, provider: OllamaProvider) -> None:
    sim.faults.push(Fault("timeout", delay=2), times=2)
    with pytest.raises(errors.UpstreamTimeout):
        await provider.complete(request())
    with pytest.raises(errors.UpstreamTimeout):
        await collect(provider, request(stream=True))


async def test_connection_refused(session: UpstreamClient, timeouts: Timeouts) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    p = OllamaProvider(ProviderSettings(base_url=f"127.0.0.1:{port}"), session, timeouts)
    with pytest.raises(errors.UpstreamConnectionError):
        await p.complete(request())
    with pytest.raises(errors.UpstreamConnectionError):
        await collect(p, request(stream=True))


# --- pure mapping --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("reason", "tools", "expected"),
    [
        ("stop", False, "stop"),
        ("stop", True, "tool_calls"),
        ("length", False, "length"),
        ("load", False, "stop"),
        (None, False, "stop"),
    ],
)
def test_map_finish_reason(reason: str | None, tools: bool, expected: str) -> None:
    assert ollama.map_finish_reason(reason, has_tool_calls=tools) == expected


def test_map_usage() -> None:
    assert ollama.map_usage({"prompt_eval_count": 26, "eval_count": 298}) == Usage(26, 298)
    assert ollama.map_usage({"eval_count": 5}) == Usage(0, 5)
    # a final object without counts: usage unknown (with a price file pricing the model it was
    # recorded as 0 tokens, free)
    assert ollama.map_usage({}) is None
    for count in ("5", -1, 2**63, 5.5):  # usage unknown, not a malformed answer (recorded free)
        assert ollama.map_usage({"prompt_eval_count": 3, "eval_count": count}) is None


def test_parse_object_tool_calls_and_errors() -> None:
    piece = ollama.parse_object(
        {
            "model": "llama3.2",
            "done": True,
            "done_reason": "stop",
            "eval_count": 3,
            "message": {
                "role": "assistant",
                "content": "",
                "tool_calls": [{"function": {"name": "f", "arguments": {}}}],
            },
        }
    )
    assert ollama.map_finish_reason(piece.done_reason, has_tool_calls=piece.has_tool_calls) == "tool_calls"
    assert piece.usage == Usage(0, 3)
    with pytest.raises(errors.UpstreamServerError):
        ollama.parse_object({"error": "boom"})
    with pytest.raises(errors.MalformedResponse):
        ollama.parse_object({"response": "generate-shaped"})


def test_classify() -> None:
    assert type(ollama.classify(503, {}, {"error": "server busy"}, "")) is errors.Overloaded
    assert type(ollama.classify(502, {}, {"error": "cloud unreachable"}, "")) is errors.UpstreamServerError
    assert type(ollama.classify(429, {}, {"error": "weekly usage limit"}, "")) is errors.QuotaExhausted
    assert type(ollama.classify(429, {}, {"error": "slow down"}, "")) is errors.RateLimited
    exc = ollama.classify(404, {}, {"error": "model 'x' not found"}, "")
    assert type(exc) is errors.UpstreamModelNotFound
    assert exc.message == "ollama: model 'x' not found"
