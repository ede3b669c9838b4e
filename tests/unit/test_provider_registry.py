"""Which providers a start configures, and what it says about them."""

from __future__ import annotations

import logging

import pytest

from gateway.providers.base import Timeouts
from gateway.providers.registry import build_providers
from gateway.providers.upstream_http import UpstreamClient
from gateway.settings import Settings

SDK_VARIABLES = (
    "OPENAI_API_KEY", "OPENAI_BASE_URL", "AZURE_OPENAI_API_KEY", "AZURE_OPENAI_ENDPOINT", "ANTHROPIC_API_KEY",
    "ANTHROPIC_BASE_URL", "GEMINI_API_KEY", "GOOGLE_API_KEY", "GOOGLE_GEMINI_BASE_URL", "OLLAMA_HOST",
)  # fmt: skip

NO_KEY = "no provider key is set: only Ollama is configured"


@pytest.mark.parametrize(
    ("environment", "warned"),
    [
        ({}, True),  # Ollama alone, on by default at its default address: say so
        ({"OPENAI_API_KEY": "sk-x"}, False),
        ({"OLLAMA_HOST": "gpu-box:11434"}, False),  # an Ollama the operator named
    ],
)
async def test_a_start_without_keys_says_only_the_default_ollama_is_there(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, environment: dict[str, str], warned: bool
) -> None:
    """A first ``serve`` without keys said "configured providers: ollama", /healthz ok, and every
    call was a 502 with no Ollama running (a docs review)."""
    for name in SDK_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    for name, value in environment.items():
        monkeypatch.setenv(name, value)
    caplog.set_level(logging.INFO, logger="gateway")
    async with UpstreamClient() as session:
        providers = build_providers(Settings(_env_file=None), session, Timeouts(1, 1, 1))  # type: ignore[call-arg]
    assert "ollama" in providers
    said = [r for r in caplog.records if NO_KEY in r.getMessage()]
    assert bool(said) == warned and all(r.levelno == logging.WARNING for r in said)
    if warned:
        assert "llm-gateway serve --simulate" in said[0].getMessage()
