"""Headers an operator adds to a provider's calls (``providers.<name>.headers``; OpenAI's
``OPENAI_ORG_ID`` / ``OPENAI_PROJECT_ID``): an API gateway's subscription key in front of Azure,
a corporate token in front of Ollama, Anthropic's beta flags. Every call of the provider carries
them (chat, streams, embeddings), over the adapter's own of the same name, and no other
provider's call does."""

from __future__ import annotations

from typing import Any

import openai
import pytest

from gateway.safe_text import redact_secrets
from gateway.settings import ProviderSettings, Settings
from gateway.simulators.registry import SIMULATED_KEY
from tests.support.gateway import running_gateway

HEADERS: dict[str, dict[str, str]] = {
    "openai": {"OpenAI-Project": "proj_ml", "X-Team": "search"},
    "azure": {"Ocp-Apim-Subscription-Key": "apim-secret"},
    "anthropic": {"anthropic-beta": "output-128k-2025-02-19", "anthropic-version": "2023-06-01"},
    "google": {"X-Goog-User-Project": "billing-project"},
    "ollama": {"X-Corp-Token": "t0k"},
}
MODELS = {
    "openai": "gpt-4o",
    "azure": "gpt-4o",
    "anthropic": "claude-3-haiku",
    "google": "gemini-pro",
    "ollama": "llama3",
}
EMBEDDINGS = {"openai": "text-embedding-3-small", "azure": "text-embedding-3-small", "google": "text-embedding-004"}


def lowered(headers: dict[str, str]) -> dict[str, str]:
    return {name.lower(): value for name, value in headers.items()}


async def test_every_call_of_a_provider_carries_its_headers_and_only_its() -> None:
    options: dict[str, dict[str, Any]] = {name: {"headers": headers} for name, headers in HEADERS.items()}
    async with running_gateway(provider_options=options) as gw:
        async with openai.AsyncOpenAI(base_url=gw.base_url, api_key="unused", max_retries=0) as client:
            for provider, model in MODELS.items():
                pin = {"provider": provider}
                await client.chat.completions.create(
                    model=model, messages=[{"role": "user", "content": "hi"}], extra_body=pin
                )
                stream = await client.chat.completions.create(
                    model=model, messages=[{"role": "user", "content": "hi"}], stream=True, extra_body=pin
                )
                _ = [chunk async for chunk in stream]
                if provider in EMBEDDINGS:
                    await client.embeddings.create(model=EMBEDDINGS[provider], input="hi", extra_body=pin)
        for provider, sim in gw.sims.items():
            assert len(sim.requests) == (3 if provider in EMBEDDINGS else 2), provider
            for request in sim.requests:
                sent = lowered(request.headers)
                for name, value in lowered(HEADERS[provider]).items():
                    assert sent.get(name) == value, (provider, request.path, name)
                others = {name for other, headers in HEADERS.items() if other != provider for name in lowered(headers)}
                assert not others & (set(sent) - set(lowered(HEADERS[provider]))), (provider, request.path)
    # the adapter's own of the same name gives way (Anthropic's version pinned), and the
    # credentials still go as the adapter sends them
    anthropic_request = gw.sims["anthropic"].requests[0]
    assert lowered(anthropic_request.headers)["x-api-key"] == SIMULATED_KEY


async def test_a_configured_header_value_is_redacted_as_a_key_is() -> None:
    """An upstream that echoes the subscription key it refused (as a 401 may) put it in the
    client's error, the log, the events and the stores; the provider keys were redacted."""
    secret = "0123456789abcdef0123456789abcdef"
    options: dict[str, dict[str, Any]] = {"azure": {"headers": {"Ocp-Apim-Subscription-Key": secret}}}
    async with running_gateway(providers=("azure",), provider_options=options):
        assert redact_secrets(f"Access denied due to invalid subscription key {secret}.") == (
            "Access denied due to invalid subscription key ***."
        )


def test_openai_organization_and_project_from_the_sdks_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_ORG_ID", "org-123")
    monkeypatch.setenv("OPENAI_PROJECT_ID", "proj_abc")
    settings = Settings(_env_file=None, providers={"openai": {"headers": {"X-Team": "ml"}}})  # type: ignore[call-arg]
    assert settings.provider("openai").headers == {
        "openai-organization": "org-123",
        "openai-project": "proj_abc",
        "x-team": "ml",
    }
    assert settings.provider("azure").headers == {}
    # a value HTTP cannot carry stops the start, in one line without the value
    monkeypatch.setenv("OPENAI_PROJECT_ID", "proj-secret\u2603")
    with pytest.raises(ValueError, match="OPENAI_PROJECT_ID has a character HTTP headers cannot carry"):
        Settings(_env_file=None)  # type: ignore[call-arg]


@pytest.mark.parametrize(
    ("headers", "message"),
    [
        ({"Content-Length": "1"}, "content-length is the gateway's own"),
        ({"Host": "evil"}, "host is the gateway's own"),
        ({"accept": "text/plain"}, "accept is the gateway's own"),
        ({"bad name": "x"}, "no HTTP header name"),
        ({"x-a": "line\r\nx-injected: 1"}, "cannot carry"),
        ({"x-a": "snow\u2603"}, "cannot carry"),
        ({"X-Foo\n": "bar"}, "no HTTP header name"),
        ({"X-Team": "a", "x-team": "b"}, "x-team is given twice"),
    ],
)
def test_headers_that_cannot_be_sent_are_refused_at_start(headers: dict[str, str], message: str) -> None:
    with pytest.raises(ValueError, match=message) as info:
        ProviderSettings(headers=headers)
    assert "injected" not in str(info.value).split("input_value")[0]
