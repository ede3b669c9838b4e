"""What an API key may call (``api_keys[].models`` / ``providers``): a team's key limited to the
models it pays for, a tenant's data kept with the vendors it may go to. Refusals are 403s
before any provider is asked (no event, no rate-limit allowance spent); the providers bound
the fallbacks too; ``/v1/models`` lists what the key may call."""

from __future__ import annotations

from typing import Any

import openai
import pytest

from gateway.settings import ApiKey
from tests.support.gateway import RunningGateway, running_gateway

KEYS = [
    {"key": "sk-team", "tenant": "team", "models": ["gpt-4o-mini", "claude-3-*", "text-embedding-3-small"]},
    {"key": "sk-eu", "tenant": "eu", "providers": ["anthropic", "ollama"]},
    {"key": "sk-admin", "tenant": "platform", "admin": True},
]


@pytest.fixture
async def gw() -> Any:
    limits = {"default": {"requests_per_minute": 60}}  # a bucket that refills a call a second
    async with running_gateway(settings={"api_keys": KEYS, "rate_limits": limits}) as running:
        yield running


def client(gw: RunningGateway, key: str) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=gw.base_url, api_key=key, max_retries=2)


def upstream_calls(gw: RunningGateway) -> dict[str, int]:
    return {name: len(sim.requests) for name, sim in gw.sims.items() if sim.requests}


async def test_a_key_calls_only_its_models(gw: RunningGateway) -> None:
    async with client(gw, "sk-team") as team:
        await team.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}])
        await team.chat.completions.create(model="claude-3-haiku", messages=[{"role": "user", "content": "hi"}])
        await team.embeddings.create(model="text-embedding-3-small", input="hi")
        before = upstream_calls(gw)
        for call in (
            team.chat.completions.create(model="gpt-4", messages=[{"role": "user", "content": "hi"}]),
            team.chat.completions.create(model="gpt-4o-mini-2024-07-18", messages=[{"role": "user", "content": "hi"}]),
            team.completions.create(model="gpt-3.5-turbo-instruct", prompt="hi"),
            team.embeddings.create(model="text-embedding-3-large", input="hi"),
        ):
            with pytest.raises(openai.PermissionDeniedError) as info:
                await call
            assert info.value.code == "model_not_allowed"
            assert info.value.response.headers["x-should-retry"] == "false"
        with pytest.raises(openai.PermissionDeniedError, match="may not use the model 'gpt-4'"):
            await team.chat.completions.create(model="gpt-4", messages=[{"role": "user", "content": "hi"}], stream=True)
        listed = {model.id for model in (await team.models.list()).data}
        with pytest.raises(openai.NotFoundError):
            await team.models.retrieve("gpt-4")
        assert (await team.models.retrieve("gpt-4o-mini")).id == "gpt-4o-mini"
    assert upstream_calls(gw) == before  # the refusals asked no provider
    assert len(gw.event_log.events) == 3  # and recorded nothing
    assert "claude-3-haiku" in listed and "gpt-4" not in listed
    assert all(
        name == "gpt-4o-mini" or name.startswith("claude-3-") or name.startswith("text-embedding-3-s")
        for name in listed
    )
    # the rate limit counts the calls made (4 with the one below), not the 5 refusals: the
    # bucket refills a call a second, so 51 to 53 had they counted
    async with client(gw, "sk-admin") as admin:
        raw = await admin.chat.completions.with_raw_response.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}], extra_body={"tenantId": "team"}
        )
    assert int(raw.headers["x-ratelimit-remaining-requests"]) >= 60 - 4 - 1


async def test_a_key_reaches_only_its_providers_fallbacks_included(gw: RunningGateway) -> None:
    """gpt-4's group goes to OpenAI first: the EU key's call is served by Anthropic and no other
    provider sees it; a pin to a provider it may not use, or a model only such providers serve, is
    a 403; /v1/models names only its providers."""
    async with client(gw, "sk-eu") as eu:
        raw = await eu.chat.completions.with_raw_response.create(
            model="gpt-4", messages=[{"role": "user", "content": "hi"}]
        )
        assert (raw.headers["x-llm-provider"], raw.headers["x-llm-attempts"]) == ("anthropic", "1")
        stream = await eu.chat.completions.create(
            model="gpt-4", messages=[{"role": "user", "content": "hi"}], stream=True
        )
        _ = [chunk async for chunk in stream]
        with pytest.raises(openai.PermissionDeniedError) as pinned:
            await eu.chat.completions.create(
                model="gpt-4", messages=[{"role": "user", "content": "hi"}], extra_body={"provider": "openai"}
            )
        assert (pinned.value.code, pinned.value.param) == ("provider_not_allowed", "provider")
        with pytest.raises(openai.PermissionDeniedError, match="No provider this API key may use serves"):
            await eu.embeddings.create(model="text-embedding-3-small", input="hi")
        models = {model.id: model for model in (await eu.models.list()).data}
    assert upstream_calls(gw) == {"anthropic": 2}
    assert [e.provider for e in gw.event_log.events] == ["anthropic", "anthropic"]
    assert models["gpt-4"].owned_by == "anthropic"
    assert set(models["gpt-4"].model_extra["providers"]) <= {"anthropic", "ollama"}
    assert "text-embedding-3-small" not in models
    # the same call by a key without limits goes to OpenAI, as its group says
    async with client(gw, "sk-admin") as admin:
        raw = await admin.chat.completions.with_raw_response.create(
            model="gpt-4", messages=[{"role": "user", "content": "hi"}]
        )
    assert raw.headers["x-llm-provider"] == "openai"


async def test_a_refusal_for_the_providers_spends_no_rate_limit() -> None:
    """A model that only providers the key may not use serve is refused by the router's rule,
    but before the budget and rate-limit checks, as a model refusal is (it spent the tenant's
    allowance: with 1 request a minute, the next allowed call was a 429; a review)."""
    keys = [{"key": "sk-eu", "tenant": "eu", "providers": ["anthropic", "ollama"]}]
    limits = {"default": {"requests_per_minute": 1}}
    async with running_gateway(settings={"api_keys": keys, "rate_limits": limits}) as gw:
        async with openai.AsyncOpenAI(base_url=gw.base_url, api_key="sk-eu", max_retries=0) as eu:
            for call in (
                eu.embeddings.create(model="text-embedding-3-small", input="hi"),
                eu.chat.completions.create(model="o1", messages=[{"role": "user", "content": "hi"}]),
                eu.completions.create(model="gpt-3.5-turbo-instruct", prompt="hi"),
            ):
                with pytest.raises(openai.PermissionDeniedError) as info:
                    await call
                assert info.value.code == "provider_not_allowed"
            raw = await eu.chat.completions.with_raw_response.create(
                model="claude-3-haiku", messages=[{"role": "user", "content": "hi"}]
            )
    assert raw.headers["x-llm-provider"] == "anthropic"
    assert upstream_calls(gw) == {"anthropic": 1}


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ({"models": []}, "empty list allows no call"),
        ({"providers": []}, "empty list allows no call"),
        ({"models": ["gpt-*-mini"]}, "only at its end"),
        ({"models": [" gpt-4"]}, "no model name"),
        ({"providers": ["openai", "mistral"]}, "unknown provider"),
    ],
)
def test_limits_that_make_no_sense_are_refused_at_start(entry: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        ApiKey(key="sk-x", tenant="t", **entry)
