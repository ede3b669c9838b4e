"""GET /v1/providers/health: the health view as JSON (latencies in ms, rates as fractions)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from aiohttp import web

from gateway.api.state import STATE
from gateway.health.plugin import HEALTH
from gateway.health.transitions import HealthTransition
from gateway.health.view import ModelHealth, ProviderHealth
from gateway.health.window import WindowStats


async def provider_health(request: web.Request) -> web.Response:
    """Any key may read the providers' health; the per-model breakdown takes an admin key (or
    an open gateway): model names are the tenants' (a fine-tune's name says whose it is), and a
    model only one tenant uses shows that tenant's traffic."""
    state = request.app[STATE]
    admin = state.auth.authenticate(request).admin
    view = request.app[HEALTH]
    configured = [p for p in state.router.priority if p in state.router.providers]
    names = configured + [p for p in view.providers() if p not in configured]
    return web.json_response(
        {
            "object": "provider_health",
            "generated_at": _iso(view.now()),
            "window_seconds": view.config.window_seconds,
            "thresholds": view.config.model_dump(exclude={"kafka_sync"}),
            "providers": {name: provider_json(view.health(name), models=admin) for name in names},
        }
    )


def provider_json(health: ProviderHealth, *, models: bool = True) -> dict[str, Any]:
    return {
        "state": health.state,
        "reason": health.reason,
        "circuit": health.circuit,
        "consecutive_failures": health.consecutive_failures,
        "opened_at": _iso(health.opened_at),
        "retry_at": _iso(health.retry_at),
        "cooldown_seconds": health.cooldown_seconds,
        "probe_in_flight": health.probe_in_flight,
        "last_transition": transition_json(health.last_transition),
        "window": stats_json(health.stats),
        "models": {name: model_json(model) for name, model in health.models.items()} if models else {},
    }


def model_json(health: ModelHealth) -> dict[str, Any]:
    return {
        "state": health.state,
        "reason": health.reason,
        "consecutive_failures": health.consecutive_failures,
        "last_transition": transition_json(health.last_transition),
        "window": stats_json(health.stats),
    }


def stats_json(stats: WindowStats) -> dict[str, Any]:
    return {
        "end": _iso(stats.window_end),
        "attempts": stats.attempts,
        "successes": stats.successes,
        "failures": stats.failures,
        "rate_limited": stats.rate_limited,
        "timeouts": stats.timeouts,
        "neutral": stats.neutral,
        "failure_rate": round(stats.failure_rate, 4),
        "rate_limit_rate": round(stats.rate_limit_rate, 4),
        "timeout_rate": round(stats.timeout_rate, 4),
        "latency_ms": {"p50": stats.p50_latency_ms, "p95": stats.p95_latency_ms},
        "ttft_ms": {"p50": stats.p50_ttft_ms, "p95": stats.p95_ttft_ms},
    }


def transition_json(transition: HealthTransition | None) -> dict[str, Any] | None:
    if transition is None:
        return None
    return {
        "at": _iso(transition.at),
        "kind": transition.kind,
        "from": transition.previous,
        "to": transition.current,
        "reason": transition.reason,
    }


def _iso(value: datetime | None) -> str | None:
    return None if value is None else value.isoformat()
