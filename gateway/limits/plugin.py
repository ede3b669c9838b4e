"""Wiring rate limits into a gateway app: the limiter the handlers ask before a call, fed the
attempts' tokens by the router's recorder. Without rate limits configured nothing is installed."""

from __future__ import annotations

from aiohttp import web

from gateway.api.state import STATE
from gateway.limits.limiter import RateLimiter
from gateway.settings import Settings


def install_limits(app: web.Application, settings: Settings) -> None:
    if not settings.rate_limits.enabled:
        return
    state = app[STATE]
    limiter = RateLimiter(settings.rate_limits)
    state.limits = limiter
    state.router.recorder.observers.append(limiter.observe)

    async def flush(_app: web.Application) -> None:
        limiter.refusals.flush()

    app.on_cleanup.append(flush)
