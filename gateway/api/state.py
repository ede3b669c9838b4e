"""What the handlers need, built once per app by the composition root."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from aiohttp import web

from gateway.api.auth import Authenticator
from gateway.api.write_watch import WriteWatches
from gateway.budgets.ledger import SpendLedger
from gateway.eventlog.base import EventLog
from gateway.limits.limiter import RateLimiter
from gateway.routing.router import Router
from gateway.settings import Settings


@dataclass
class GatewayState:
    settings: Settings
    router: Router
    auth: Authenticator
    event_log: EventLog
    clock: Callable[[], datetime]
    #: what each tenant spent of its budget (None: no budget configured)
    budgets: SpendLedger | None = None
    #: per-tenant rate limits (``gateway.limits``), when configured
    limits: RateLimiter | None = None
    #: completion calls being served now (the event log's group commit asks)
    in_flight: int = 0
    #: optional extras other components register (cost service, health view, metrics)
    extras: dict[str, Any] = field(default_factory=dict)
    #: the streams' writes, watched for clients that stop taking them (``stream_idle_timeout``)
    write_watches: WriteWatches = field(init=False)
    #: when this gateway started (POSIX seconds): the ``created`` of the models it lists, one
    #: value for the process's life (it was each request's time, so every listing differed)
    started: int = field(init=False)

    def __post_init__(self) -> None:
        self.write_watches = WriteWatches(self.settings.stream_idle_timeout)
        self.started = int(self.clock().timestamp())


STATE: web.AppKey[GatewayState] = web.AppKey("gateway_state", GatewayState)
