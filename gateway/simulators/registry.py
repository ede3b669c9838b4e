"""Every provider simulator, and how a gateway's settings point at a running one."""

from __future__ import annotations

import importlib
from dataclasses import dataclass

from gateway.settings import ProviderSettings
from gateway.simulators.base import Simulator


@dataclass(frozen=True, slots=True)
class SimulatorSpec:
    module: str
    cls: str
    base_url: str  # how the provider's base URL is formed from the simulator's root URL


SIMULATORS: dict[str, SimulatorSpec] = {
    "openai": SimulatorSpec("gateway.simulators.openai", "OpenAISimulator", "{url}/v1"),
    "azure": SimulatorSpec("gateway.simulators.azure", "AzureSimulator", "{url}"),
    "anthropic": SimulatorSpec("gateway.simulators.anthropic", "AnthropicSimulator", "{url}"),
    "google": SimulatorSpec("gateway.simulators.google", "GeminiSimulator", "{url}"),
    "ollama": SimulatorSpec("gateway.simulators.ollama", "OllamaSimulator", "{url}"),
}

SIMULATED_KEY = "sk-simulated"


def make_simulator(provider: str, **kwargs: object) -> Simulator:
    spec = SIMULATORS[provider]
    cls = getattr(importlib.import_module(spec.module), spec.cls)
    simulator: Simulator = cls(**kwargs)
    return simulator


def provider_settings_for(provider: str, simulator: Simulator) -> ProviderSettings:
    """Settings that point the provider's adapter at a started simulator."""
    url = SIMULATORS[provider].base_url.format(url=simulator.base_url)
    return ProviderSettings(api_key=SIMULATED_KEY, base_url=url)
