"""Azure OpenAI adapter against the Azure simulator over real HTTP (deployment and v1 paths)."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from gateway import errors
from gateway.providers.azure import DEFAULT_API_VERSION, AzureProvider, build, resource_root
from gateway.providers.base import Timeouts
from gateway.providers.upstream_http import UpstreamClient
from gateway.settings import ProviderSettings
from gateway.simulators.azure import AzureSimulator
from gateway.simulators.base import Fault
from gateway.types import ChatRequest, ChatResult, Message, StreamChunk, Usage

KEY = "azure-test-key"
DEPLOYMENT = "prod-4o"
VERSION = "gpt-4o-2024-08-06"


def chat(**kwargs: Any) -> ChatRequest:
    messages = [Message("system", "Be brief."), Message("user", "Say hello to me")]
    return ChatRequest(model="gpt-4o", messages=messages, **kwargs)


@pytest.fixture
async def sim() -> AsyncIterator[AzureSimulator]:
    s = AzureSimulator(api_key=KEY, deployments={DEPLOYMENT: VERSION, "instruct": "gpt-35-turbo-instruct-0914"})
    await s.start()
    try:
        yield s
    finally:
        await s.stop()


def make(sim: AzureSimulator, session: UpstreamClient, timeouts: Timeouts, **settings: Any) -> AzureProvider:
    values: dict[str, Any] = {
        "api_key": KEY,
        "base_url": sim.base_url,
        "deployments": {"gpt-4o": DEPLOYMENT},
    }
    return AzureProvider(ProviderSettings(**(values | settings)), session, timeouts)


@pytest.fixture
def provider(sim: AzureSimulator, session: UpstreamClient, timeouts: Timeouts) -> AzureProvider:
    return make(sim, session, timeouts)


async def collect(provider: AzureProvider, request: ChatRequest) -> list[StreamChunk]:
    return [chunk async for chunk in provider.stream(request)]


async def call(provider: AzureProvider, request: ChatRequest, streaming: bool) -> ChatResult | list[StreamChunk]:
    return await collect(provider, request) if streaming else await provider.complete(request)


# --- request mapping --------------------------------------------------------------------------


async def test_deployment_url_mapping(provider: AzureProvider, sim: AzureSimulator) -> None:
    await provider.complete(chat(max_tokens=64, temperature=0.5, stop=["END"]))
    [rec] = sim.requests
    assert rec.path == f"/openai/deployments/{DEPLOYMENT}/chat/completions"
    assert rec.query == {"api-version": DEFAULT_API_VERSION}
    assert rec.headers["api-key"] == KEY
    assert "Authorization" not in rec.headers
    assert rec.body == {
        "model": DEPLOYMENT,
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "Say hello to me"},
        ],
        "max_tokens": 64,
        "temperature": 0.5,
        "stop": ["END"],
        "stream": False,
    }


async def test_api_version_and_endpoint_forms(sim: AzureSimulator, session: UpstreamClient, timeouts: Timeouts) -> None:
    p = make(sim, session, timeouts, base_url=f"{sim.base_url}/openai/", api_version="2025-04-01-preview")
    await p.complete(chat())
    assert sim.requests[0].path == f"/openai/deployments/{DEPLOYMENT}/chat/completions"
    assert sim.requests[0].query == {"api-version": "2025-04-01-preview"}
    assert resource_root("https://r.openai.azure.com/openai/v1/") == "https://r.openai.azure.com"


async def test_model_without_deployment_mapping_is_the_deployment(
    sim: AzureSimulator, session: UpstreamClient, timeouts: Timeouts
) -> None:
    p = make(sim, session, timeouts, deployments={})
    with pytest.raises(errors.UpstreamModelNotFound) as info:  # "gpt-4o" is not a deployment here
        await p.complete(chat())
    assert sim.requests[0].path == "/openai/deployments/gpt-4o/chat/completions"
    assert (info.value.http_status, info.value.upstream_code) == (404, "DeploymentNotFound")
    assert info.value.fallback and not info.value.retryable


async def test_v1_path(sim: AzureSimulator, session: UpstreamClient, timeouts: Timeouts) -> None:
    p = make(sim, session, timeouts, use_v1=True)
    result = await p.complete(chat(max_tokens=100))
    rec = sim.requests[0]
    assert rec.path == "/openai/v1/chat/completions"
    assert rec.query == {}
    assert rec.headers["api-key"] == KEY
    assert rec.body["model"] == DEPLOYMENT and rec.body["max_tokens"] == 100
    assert result.text == sim.reply and result.model == VERSION
    chunks = await collect(p, chat())
    assert sim.requests[1].path == "/openai/v1/chat/completions"
    assert "".join(c.text for c in chunks) == sim.reply


async def test_legacy_completions(sim: AzureSimulator, session: UpstreamClient, timeouts: Timeouts) -> None:
    p = make(sim, session, timeouts, deployments={"gpt-35-turbo-instruct": "instruct"})
    request = ChatRequest(model="gpt-35-turbo-instruct", messages=[], prompt="Once upon a time", max_tokens=4)
    result = await p.complete(request)
    rec = sim.requests[0]
    assert rec.path == "/openai/deployments/instruct/completions"
    assert rec.query == {"api-version": DEFAULT_API_VERSION}
    assert rec.body == {
        "model": "instruct",
        "prompt": "Once upon a time",
        "max_tokens": 4,
        "stream": False,
    }
    assert (result.text, result.finish_reason) == ("Hello from the simulator,", "length")
    assert result.usage == Usage(prompt_tokens=4, completion_tokens=4)
    assert result.model == "gpt-35-turbo-instruct-0914"
    chunks = await collect(p, request)
    assert "".join(c.text for c in chunks) == "Hello from the simulator,"
    assert chunks[-1].usage == Usage(prompt_tokens=4, completion_tokens=4)


# --- results ----------------------------------------------------------------------------------


async def test_complete_reports_model_version_not_deployment(provider: AzureProvider, sim: AzureSimulator) -> None:
    sim.cached_tokens, sim.reasoning_tokens = 3, 2
    result = await provider.complete(chat())
    assert result.text == sim.reply
    assert result.finish_reason == "stop"
    assert result.model == VERSION
    assert result.usage == Usage(prompt_tokens=6, completion_tokens=10, cached_tokens=3, reasoning_tokens=2)
    assert result.upstream_request_id is not None


async def test_stream_skips_prompt_filter_chunk(provider: AzureProvider, sim: AzureSimulator) -> None:
    chunks = await collect(provider, chat())
    assert sim.requests[0].body["stream_options"] == {"include_usage": True}
    assert "".join(c.text for c in chunks) == sim.reply
    assert all(c.model == VERSION for c in chunks)  # the leading model:"" chunk yields nothing
    assert [c.finish_reason for c in chunks if c.finish_reason] == ["stop"]
    assert chunks[-1].usage == Usage(prompt_tokens=6, completion_tokens=8)


async def test_stream_without_usage_support(provider: AzureProvider, sim: AzureSimulator) -> None:
    sim.stream_usage_supported = False
    chunks = await collect(provider, chat())
    assert "".join(c.text for c in chunks) == sim.reply
    assert all(c.usage is None for c in chunks)
    assert chunks[-1].finish_reason == "stop"


@pytest.mark.parametrize("streaming", [False, True])
async def test_output_filter_is_a_finish_reason(provider: AzureProvider, sim: AzureSimulator, streaming: bool) -> None:
    sim.faults.push(Fault("content_filter", status=200))
    out = await call(provider, chat(), streaming)
    if isinstance(out, ChatResult):
        assert (out.text, out.finish_reason) == ("", "content_filter")
    else:
        assert [c.finish_reason for c in out if c.finish_reason] == ["content_filter"]


# --- errors -----------------------------------------------------------------------------------

FAULTS = [
    (Fault("rate_limit", retry_after=6), errors.RateLimited, 429, "429", 6.0),
    (Fault("rate_limit", retry_after_ms=2500), errors.RateLimited, 429, "429", 2.5),
    (Fault("quota"), errors.QuotaExhausted, 429, "insufficient_quota", None),
    (Fault("content_filter"), errors.ContentFiltered, 400, "content_filter", None),
    (Fault("overloaded"), errors.Overloaded, 503, "server_is_overloaded", None),
    (Fault("server_error"), errors.UpstreamServerError, 500, "server_error", None),
    (Fault("auth"), errors.UpstreamAuthError, 401, "401", None),
    (Fault("bad_request"), errors.UpstreamBadRequest, 400, "context_length_exceeded", None),
    (Fault("not_found"), errors.UpstreamModelNotFound, 404, "DeploymentNotFound", None),
]


@pytest.mark.parametrize("streaming", [False, True])
@pytest.mark.parametrize(("fault", "cls", "status", "code", "retry_after"), FAULTS)
async def test_error_faults(
    provider: AzureProvider,
    sim: AzureSimulator,
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
    assert (info.value.provider, info.value.http_status) == ("azure", status)
    assert info.value.upstream_code == code
    assert info.value.retry_after == retry_after


async def test_content_filter_block_is_not_retried(provider: AzureProvider, sim: AzureSimulator) -> None:
    sim.faults.push(Fault("content_filter"))
    with pytest.raises(errors.ContentFiltered) as info:
        await provider.complete(chat())
    e = info.value
    assert (e.param, e.retryable, e.fallback, e.client_should_retry) == (
        "prompt",
        False,
        False,
        False,
    )


async def test_wrong_key(sim: AzureSimulator, session: UpstreamClient, timeouts: Timeouts) -> None:
    with pytest.raises(errors.UpstreamAuthError) as info:
        await make(sim, session, timeouts, api_key="wrong").complete(chat())
    assert (info.value.http_status, info.value.upstream_code) == (401, "401")


@pytest.mark.parametrize("streaming", [False, True])
async def test_malformed_body(provider: AzureProvider, sim: AzureSimulator, streaming: bool) -> None:
    sim.faults.push(Fault("malformed"))
    with pytest.raises(errors.MalformedResponse):
        await call(provider, chat(), streaming)


async def test_stream_cut(provider: AzureProvider, sim: AzureSimulator) -> None:
    sim.faults.push(Fault("cut", after_chunks=2))
    got: list[StreamChunk] = []
    with pytest.raises(errors.StreamCut):
        async for chunk in provider.stream(chat()):
            got.append(chunk)
    assert "".join(c.text for c in got) == "Hello from"


async def test_in_band_stream_error(provider: AzureProvider, sim: AzureSimulator) -> None:
    sim.faults.push(Fault("stream_error", after_chunks=1))
    got: list[StreamChunk] = []
    with pytest.raises(errors.UpstreamServerError) as info:
        async for chunk in provider.stream(chat()):
            got.append(chunk)
    assert [c.text for c in got] == ["Hello"]
    assert info.value.http_status == 200


async def test_timeouts(provider: AzureProvider, sim: AzureSimulator) -> None:
    sim.faults.push(Fault("timeout", delay=2), times=2)
    outcomes = await asyncio.gather(provider.complete(chat()), collect(provider, chat()), return_exceptions=True)
    assert [type(o) for o in outcomes] == [errors.UpstreamTimeout, errors.UpstreamTimeout]


@pytest.mark.parametrize("streaming", [False, True])
async def test_connection_refused(session: UpstreamClient, timeouts: Timeouts, streaming: bool) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    p = AzureProvider(ProviderSettings(api_key=KEY, base_url=f"http://127.0.0.1:{port}"), session, timeouts)
    with pytest.raises(errors.UpstreamConnectionError):
        await call(p, chat(), streaming)


async def test_build(session: UpstreamClient, timeouts: Timeouts) -> None:
    assert build(ProviderSettings(api_key=KEY), session, timeouts) is None  # no endpoint
    assert build(ProviderSettings(base_url="https://r.openai.azure.com"), session, timeouts) is None
    p = build(ProviderSettings(api_key=KEY, base_url="https://r.openai.azure.com/"), session, timeouts)
    assert isinstance(p, AzureProvider) and p.name == "azure"
    target = p.target(chat(), stream=False)
    assert target.url == "https://r.openai.azure.com/openai/deployments/gpt-4o/chat/completions"


# --- the simulator's own Azure rules ------------------------------------------------------------


async def test_simulator_requires_api_version_and_reports_azure_shapes(
    sim: AzureSimulator, aio: aiohttp.ClientSession
) -> None:
    url = f"{sim.base_url}/openai/deployments/{DEPLOYMENT}/chat/completions"
    body = {"messages": [{"role": "user", "content": "hi"}]}
    async with aio.post(url, json=body, headers={"api-key": KEY}) as resp:
        assert resp.status == 404
        assert await resp.json() == {"error": {"code": "404", "message": "Resource not found"}}
    async with aio.post(url, json=body, headers={"api-key": KEY}, params={"api-version": "2024-10-21"}) as resp:
        data = await resp.json()
        assert resp.status == 200 and data["model"] == VERSION
        assert data["prompt_filter_results"][0]["prompt_index"] == 0
        assert "content_filter_results" in data["choices"][0]
    v1 = f"{sim.base_url}/openai/v1/chat/completions"
    async with aio.post(v1, json={**body, "model": DEPLOYMENT}, headers={"authorization": f"Bearer {KEY}"}) as resp:
        assert resp.status == 200  # the v1 API also takes the key as a Bearer token
    sim.faults.push(Fault("rate_limit", retry_after=6))
    async with aio.post(v1, json={**body, "model": DEPLOYMENT}, headers={"api-key": KEY}) as resp:
        assert resp.status == 429
        assert (resp.headers["retry-after"], resp.headers["retry-after-ms"]) == ("6", "6000")
        assert "Please retry after 6 seconds" in (await resp.json())["error"]["message"]


@pytest.mark.parametrize("model", ["o3-mini", "o1", "o4-mini-2025-04-16", "gpt-5"])
async def test_reasoning_models_get_max_completion_tokens(
    sim: AzureSimulator, session: UpstreamClient, timeouts: Timeouts, model: str
) -> None:
    """The o-series (and gpt-5) refuse ``max_tokens`` on Azure as on OpenAI ("Unsupported
    parameter: 'max_tokens' is not supported with this model"): it was always renamed to
    ``max_tokens``. The model, not the deployment's name, decides; the GPT models keep it."""
    p = make(sim, session, timeouts, deployments={model: DEPLOYMENT, "gpt-4o": DEPLOYMENT})
    request = ChatRequest(model=model, messages=[Message("user", "hi")], max_tokens=500)
    await p.complete(request)
    body = sim.requests[-1].body
    assert body["max_completion_tokens"] == 500 and "max_tokens" not in body
    await p.complete(chat(max_tokens=64))
    assert sim.requests[-1].body["max_tokens"] == 64 and "max_completion_tokens" not in sim.requests[-1].body


@pytest.mark.parametrize(
    ("deployment", "deployments", "reasoning"),
    [
        ("prod-o3-mini", {}, True),  # a model group naming the deployment: its name says the model
        ("team_gpt-5", {}, True),
        ("o1", {}, True),
        ("reasoner-prod", {"o3-mini": "reasoner-prod"}, True),  # ``deployments`` says the model
        ("Prod-O3-Mini", {}, True),  # in any case (re-test)
        ("GPT-5-chat", {}, True),
        ("prod-o4mini", {}, True),
        ("prod-gpt-4o", {}, False),
        ("photo1", {}, False),
        ("team-o365-bot", {}, False),  # no o-series name (re-test)
        ("gpt5-mini", {}, True),  # GPT-5 without its hyphen (re-test)
        ("assist-dep", {"o365-assist": "assist-dep"}, False),  # a gateway model name alike (re-test)
        ("chat-prod", {"gpt-4o": "chat-prod"}, False),
    ],
)
async def test_a_deployment_named_directly_gets_the_length_field_of_its_model(
    sim: AzureSimulator,
    session: UpstreamClient,
    timeouts: Timeouts,
    deployment: str,
    deployments: dict[str, str],
    reasoning: bool,
) -> None:
    """A model group maps a name to an Azure deployment (``azure: prod-o3-mini``): the adapter
    judged the deployment's name as a model name, so an o-series deployment was sent
    ``max_tokens`` and refused it with a 400 that does not fall back (review)."""
    sim.served_model = None  # the simulator serves (and judges) the deployment's own name
    sim.deployments = {d: m for m, d in deployments.items()} or None
    p = make(sim, session, timeouts, deployments=deployments)
    result = await p.complete(ChatRequest(model=deployment, messages=[Message("user", "hi")], max_tokens=50))
    assert result.finish_reason == "stop"
    body = sim.requests[-1].body
    field = "max_completion_tokens" if reasoning else "max_tokens"
    assert body[field] == 50 and len({"max_tokens", "max_completion_tokens"} & set(body)) == 1


@pytest.mark.parametrize(
    ("api_version", "asks_usage"), [("2024-06-01", False), ("2024-08-01-preview", False), ("2024-10-21", True)]
)
async def test_streams_ask_for_usage_only_where_the_api_version_knows_how(
    sim: AzureSimulator, session: UpstreamClient, timeouts: Timeouts, api_version: str, asks_usage: bool
) -> None:
    """Api-versions before 2024-09-01 refuse ``stream_options`` ("Unrecognized request argument
    supplied"): every stream of a gateway configured with one was a 400 (review). Their streams
    have no usage report: billed at an unknown cost."""
    p = make(sim, session, timeouts, api_version=api_version)
    chunks = await collect(p, chat())
    assert "".join(c.text for c in chunks) == sim.reply
    assert ("stream_options" in sim.requests[-1].body) is asks_usage
    assert (chunks[-1].usage is not None) is asks_usage
    v1 = make(sim, session, timeouts, api_version=api_version, use_v1=True)
    await collect(v1, chat())
    assert "stream_options" in sim.requests[-1].body  # the v1 API takes it


async def test_deployments_keyed_by_openais_spelling_serve_azures(
    sim: AzureSimulator, session: UpstreamClient, timeouts: Timeouts
) -> None:
    """The gpt-3.5-turbo group sends Azure ``gpt-35-turbo``; a map keyed by the requested model
    (``gpt-3.5-turbo: prod-35``, as the README's ``gpt-4o: prod-gpt4o``) was not found, and the
    call went to a deployment named ``gpt-35-turbo``: a 404 that fell back (a review)."""
    p = make(sim, session, timeouts, deployments={"gpt-3.5-turbo": DEPLOYMENT})
    assert p.deployment("gpt-35-turbo") == DEPLOYMENT
    await p.complete(ChatRequest("gpt-35-turbo", [Message("user", "hi")]))
    assert sim.requests[-1].path == f"/openai/deployments/{DEPLOYMENT}/chat/completions"
    exact = make(sim, session, timeouts, deployments={"gpt-35-turbo": DEPLOYMENT})
    assert exact.deployment("gpt-35-turbo") == DEPLOYMENT  # (both spellings to two deployments: refused)
