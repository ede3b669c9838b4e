"""GET /v1/models, GET /healthz, GET /openapi.json."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from aiohttp import web

from gateway import errors
from gateway.api.access import Access
from gateway.api.openapi import openapi_document
from gateway.api.state import STATE, GatewayState
from gateway.api.validation import model_name

#: more parts of ``/healthz`` (name -> its current value), from what an installer adds to the
#: gateway (the embedded projector); informational: the gateway answers 200 while it serves calls
HEALTH_PARTS: web.AppKey[dict[str, Callable[[], dict[str, Any]]]] = web.AppKey("health_parts", dict)


def _model_object(state: GatewayState, name: str, created: int, access: Access | None) -> dict[str, Any] | None:
    """A model as OpenAI lists it, with the providers that serve it in the order the router
    tries them (``owned_by``: the first); None when no configured provider serves it, or the
    key may not use it (nor any provider serving it)."""
    if access is not None and not access.allows_model(name):
        return None
    try:
        candidates = state.router.candidates(name, None)
    except errors.GatewayError:
        return None
    serving = list(dict.fromkeys(c.provider for c in candidates))
    if access is not None:
        serving = access.serving(serving)
    if not serving:
        return None
    return {"id": name, "object": "model", "created": created, "owned_by": serving[0], "providers": serving}


async def models(request: web.Request) -> web.Response:
    state = request.app[STATE]
    access = state.auth.authenticate(request).access
    found = (_model_object(state, name, state.started, access) for name in state.router.catalog.listed_models())
    return web.json_response({"object": "list", "data": [model for model in found if model is not None]})


async def model(request: web.Request) -> web.Response:
    """GET /v1/models/{model}: one model (``client.models.retrieve``), 404 when none serves it."""
    state = request.app[STATE]
    access = state.auth.authenticate(request).access
    name = model_name(request.match_info["model"])
    found = _model_object(state, name, state.started, access)
    if found is None:
        raise errors.ModelNotFound(f"The model '{name}' does not exist or no configured provider serves it")
    return web.json_response(found)


async def healthz(request: web.Request) -> web.Response:
    state = request.app[STATE]
    # the providers calls may go to: configured and in the priority (one it leaves out was
    # listed, though no call reaches it; a review)
    providers = sorted(p for p in state.router.providers if p in state.router.priority)
    body: dict[str, Any] = {
        # a gateway that can serve no call is not ready (every call a 404): 503 for a probe
        "status": "ok" if providers else "no_providers",
        "providers": providers,
        "eventsPending": state.event_log.pending(),
        "eventLog": event_log_health(state),
        "priceVersion": state.router.recorder.price_version,
    }
    for name, part in request.app.get(HEALTH_PARTS, {}).items():
        body[name] = part()
    return web.json_response(body, status=200 if providers else 503)


def event_log_health(state: GatewayState) -> dict[str, Any]:
    """Whether usage events reach the durable log: ``unavailable`` with the error and since when
    while they wait (a broker that cannot be reached or refuses the credentials, a spool file
    that refuses writes). Informational, as calls go on: the gateway answers 200 all the same (a
    503 would take every replica out of a load balancer for a broker's outage)."""
    outage = state.event_log.outage()
    if outage is None:
        return {"status": "ok"}
    return {"status": "unavailable", "error": outage.error, "since": outage.since.isoformat()}


async def openapi(request: web.Request) -> web.Response:
    return web.json_response(openapi_document())
