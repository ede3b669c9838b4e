"""What ``llm-gateway serve`` adds around the gateway app (the embedded projector, etc.)."""

from __future__ import annotations

from gateway.app import AppPlugin
from gateway.settings import Settings


def server_plugins(settings: Settings) -> list[AppPlugin]:
    return []
