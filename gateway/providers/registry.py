"""The one place that knows every adapter: provider id -> the module whose ``build`` makes it."""

from __future__ import annotations

import importlib
import logging

from gateway.providers.base import Provider, ProviderFactory, Timeouts
from gateway.providers.upstream_http import UpstreamClient
from gateway.settings import Settings

log = logging.getLogger(__name__)

ADAPTER_MODULES: dict[str, str] = {
    "openai": "gateway.providers.openai",
    "azure": "gateway.providers.azure",
    "anthropic": "gateway.providers.anthropic",
    "google": "gateway.providers.google",
    "ollama": "gateway.providers.ollama",
}


def factory(name: str) -> ProviderFactory:
    module = importlib.import_module(ADAPTER_MODULES[name])
    build: ProviderFactory = module.build
    return build


def build_providers(settings: Settings, session: UpstreamClient, timeouts: Timeouts) -> dict[str, Provider]:
    """Every configured provider (credentials present, not disabled), keyed by id."""
    providers: dict[str, Provider] = {}
    for name in ADAPTER_MODULES:
        provider_settings = settings.provider(name)
        if provider_settings.enabled is False:
            continue
        provider = factory(name)(provider_settings, session, timeouts)
        if provider is not None:
            providers[name] = provider
    usable = [name for name in settings.priority if name in providers]
    ollama = settings.provider("ollama")
    if set(providers) == {"ollama"} and ollama.enabled is None and ollama.base_url is None:
        # Ollama needs no key, so it is on by default: a first `serve` without keys said
        # "configured providers: ollama", /healthz ok, and every call was a 502 (a docs review)
        log.warning(
            "no provider key is set: only Ollama is configured, at its default address (calls fail unless "
            "Ollama runs there). Set OPENAI_API_KEY (or another provider's key), or try every provider "
            "from simulators: llm-gateway serve --simulate"
        )
    if usable:
        left_out = [name for name in providers if name not in usable]
        log.info(
            "configured providers: %s%s",
            ", ".join(usable),
            f" (configured but not in the priority, so not used: {', '.join(left_out)})" if left_out else "",
        )
    elif providers:  # a key missing after a rotation: every call a 404 without a word (a review)
        log.warning(
            "configured providers: none in the priority %s: every call will be refused (configured: %s; set "
            "the key of one the priority names, or add one of these to the priority)",
            settings.priority,
            ", ".join(providers),
        )
    else:  # every call a 404 while /healthz said ok (a docs review)
        log.warning(
            "configured providers: none: every call will be refused (set a provider's key, e.g. "
            "OPENAI_API_KEY, or leave Ollama on; see README 'Configuration')"
        )
    return providers
