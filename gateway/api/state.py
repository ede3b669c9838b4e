"""What the handlers need, built once per app by the composition root."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from aiohttp import web

from gateway.api.auth import Authenticator
from gateway.eventlog.base import EventLog
from gateway.routing.router import Router
from gateway.settings import Settings


@dataclass
class GatewayState:
    settings: Settings
    router: Router
    auth: Authenticator
    event_log: EventLog
    clock: Callable[[], datetime]
    #: completion calls being served now (the event log's group commit asks)
    in_flight: int = 0
    #: optional extras other components register (cost service, health view, metrics)
    extras: dict[str, Any] = field(default_factory=dict)


STATE: web.AppKey[GatewayState] = web.AppKey("gateway_state", GatewayState)
