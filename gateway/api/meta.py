"""GET /v1/models, GET /healthz, GET /openapi.json."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from aiohttp import web

from gateway.api.openapi import openapi_document
from gateway.api.state import STATE

#: more parts of ``/healthz`` (name -> its current value), from what an installer adds to the
#: gateway (the embedded projector); informational: the gateway answers 200 while it serves calls
HEALTH_PARTS: web.AppKey[dict[str, Callable[[], dict[str, Any]]]] = web.AppKey("health_parts", dict)


async def models(request: web.Request) -> web.Response:
    state = request.app[STATE]
    state.auth.authenticate(request)
    created = int(state.clock().timestamp())
    catalog = state.router.catalog
    data = []
    for name in catalog.listed_models():
        serving = [p for p in state.router.priority if p in state.router.providers and p in catalog.equivalents(name)]
        if serving:
            data.append(
                {"id": name, "object": "model", "created": created, "owned_by": serving[0], "providers": serving}
            )
    return web.json_response({"object": "list", "data": data})


async def healthz(request: web.Request) -> web.Response:
    state = request.app[STATE]
    body: dict[str, Any] = {
        "status": "ok",
        "providers": sorted(state.router.providers),
        "eventsPending": state.event_log.pending(),
    }
    for name, part in request.app.get(HEALTH_PARTS, {}).items():
        body[name] = part()
    return web.json_response(body)


async def openapi(request: web.Request) -> web.Response:
    return web.json_response(openapi_document())
