"""GET /v1/models, GET /healthz, GET /openapi.json."""

from __future__ import annotations

from aiohttp import web

from gateway.api.openapi import openapi_document
from gateway.api.state import STATE


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
    return web.json_response(
        {"status": "ok", "providers": sorted(state.router.providers), "eventsPending": state.event_log.pending()}
    )


async def openapi(request: web.Request) -> web.Response:
    return web.json_response(openapi_document())
