"""Wiring rate limits into a gateway app: the limiter the handlers ask before a call, fed the
attempts' tokens by the router's recorder. Without rate limits configured nothing is installed."""

from __future__ import annotations

from aiohttp import web

from gateway.api.state import STATE
from gateway.limits.config import RateLimit
from gateway.limits.limiter import RateLimiter, log
from gateway.settings import Settings


def install_limits(app: web.Application, settings: Settings) -> None:
    if not settings.rate_limits.enabled:
        return
    state = app[STATE]
    config = settings.rate_limits
    limiter = RateLimiter(config)
    log.info(
        "rate limits: %d tenant(s) listed; every other tenant: %s%s",
        len(config.tenants),
        _described(config.default) if config.default is not None else "no limit",
        f"; {len(config.metadata)} limit(s) of metadata pairs" if config.metadata else "",
    )
    state.limits = limiter
    state.router.recorder.observers.append(limiter.observe)
    limiter.flush = state.router.recorder.flush_observers

    async def flush(_app: web.Application) -> None:
        limiter.refusals.flush()

    app.on_cleanup.append(flush)


def _described(limit: RateLimit) -> str:
    parts = [
        f"{value} {what}"
        for value, what in (
            (limit.requests_per_minute, "requests a minute"),
            (limit.tokens_per_minute, "tokens a minute"),
            (limit.max_concurrent_requests, "requests at once"),
        )
        if value is not None
    ]
    return ", ".join(parts)
