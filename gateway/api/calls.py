"""What every call to the providers shares, whatever its endpoint (chat and legacy completions,
embeddings): reading the JSON body, the in-flight wrapper, the cost line of a call that ends in an
error, and the headers of a served answer."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
from aiohttp import web

from gateway import errors
from gateway.api.auth import Principal
from gateway.api.drain import stopped
from gateway.api.json_body import body_bytes
from gateway.api.middleware import ClientWatch
from gateway.api.state import STATE, GatewayState
from gateway.limits.limiter import RateLimiter
from gateway.pricing.base import format_usd
from gateway.providers.upstream_http import CLIENT_GONE
from gateway.routing.router import Served
from gateway.safe_text import header_value
from gateway.usage import CANCELLED_CALL, CallContext, CancelledCall, UsageRecorder


async def read_body(request: web.Request) -> Any:
    if request.content_type not in ("application/json", "", "application/octet-stream", "text/plain"):
        raise errors.UnsupportedMediaType(f"Content-Type must be application/json, got {request.content_type}")
    try:
        raw = await body_bytes(request)
    except web.HTTPRequestEntityTooLarge as exc:
        raise errors.RequestTooLarge(
            f"Request body is larger than the limit of {request.app[STATE].settings.max_body_bytes} bytes"
        ) from exc
    if not raw.strip():
        raise errors.InvalidRequest("The request body is empty; expected a JSON object")
    try:
        return orjson.loads(raw)
    except (ValueError, RecursionError) as exc:
        raise errors.InvalidRequest(f"The request body is not valid JSON: {exc}", code="invalid_json") from exc


async def serve_call(
    request: web.Request, state: GatewayState, answer: Callable[[], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    """Run ``answer``, a call to the providers, as one in flight: watching its client, and not
    answering before the events of its attempts are on the log."""
    state.in_flight += 1
    watch = ClientWatch(request)
    watching = CLIENT_GONE.set(watch)
    note = CancelledCall()
    noting = CANCELLED_CALL.set(note)
    try:
        return await answer()
    except asyncio.CancelledError:
        if note.stream_open or not stopped(request.app):
            raise
        # the stop's timeout ended the call: an answer, not a dropped connection
        raise stopping_error(note) from None
    finally:
        watch.release()
        CLIENT_GONE.reset(watching)
        CANCELLED_CALL.reset(noting)
        try:
            # no answer (nor error) goes out before the events of its attempts are on the log
            await state.event_log.settled(state.in_flight)
        finally:  # cancelled while it waits: still no longer in flight
            state.in_flight -= 1


def stopping_error(note: CancelledCall) -> errors.GatewayStopping:
    """The answer of a call a stop cut off: what its attempts cost, and no retry after an attempt
    its provider may bill (the client retries on another replica otherwise, ``retry-after`` 1 s)."""
    error = errors.GatewayStopping(
        "The gateway stopped before this call finished (its shutdown timeout)"
        + (
            f" after {note.attempts} provider attempt(s), which the provider may bill: not retried"
            if note.billed
            else "; no provider billed it: retry it"
        )
    )
    error.call_attempts = note.attempts
    error.call_cost = note.cost
    if note.billed:
        error.client_should_retry = False  # type: ignore[misc]
    else:
        error.headers = {"retry-after": "1"}
    return error


class AdmittedCall:
    """A call from its admission to its end (its answer, its error, or its stream's end): a call
    that fails after its attempts gets its cost line (one line per call) and its tenant's
    rate-limit headers, as a served answer; at its end it leaves its tenant's calls at once."""

    __slots__ = ("ctx", "limiter", "limits")

    def __init__(self, ctx: CallContext, limits: dict[str, str] | None, limiter: RateLimiter | None) -> None:
        self.ctx = ctx
        self.limits = limits
        self.limiter = limiter

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, _tb: object) -> None:
        if isinstance(exc, errors.ProviderError):
            UsageRecorder.log_cost(self.ctx, exc.provider, self.ctx.requested_model, exc.call_cost)
        elif isinstance(exc, errors.AllProvidersFailed):
            UsageRecorder.log_cost(self.ctx, "none", self.ctx.requested_model, exc.cost)
        if self.limits is not None:
            if isinstance(exc, errors.GatewayError):
                exc.headers = {**self.limits, **exc.headers} if exc.headers else self.limits
            if self.limiter is not None:
                self.limiter.release(self.ctx.tenant_id, self.ctx.metadata)


def allowed_providers(
    state: GatewayState, principal: Principal, model: str, pinned: str | None, *, same_model: bool = False
) -> frozenset[str] | None:
    """The providers the call's key may use (None: any), after checking that it may ask for the
    model, pin the provider, and reach a provider serving the model (``gateway/api/access.py``):
    a 403 before the budget and rate-limit checks."""
    access = principal.access
    if access is None:
        return None
    access.check(model, pinned)
    if access.providers is not None:
        state.router.admit(model, pinned, access.providers, same_model=same_model)
    return access.providers


def billed_tenant(
    state: GatewayState, principal: Principal, requested: str | None, metadata: dict[str, str]
) -> tuple[str, dict[str, str] | None]:
    """The tenant a call bills (``Authenticator.tenant_for``), and its rate-limit headers (None:
    it has no limit). :class:`~gateway.errors.BudgetExceeded` when it has spent its budget of the
    period, or a budget of the call's ``metadata`` is spent;
    :class:`~gateway.errors.TenantRateLimited` when it is over its rate limit: no provider is
    asked, no event recorded."""
    tenant = state.auth.tenant_for(principal, requested)
    if state.budgets is not None:
        state.budgets.check(tenant, metadata)
    if state.limits is not None:
        return tenant, state.limits.admit(tenant, metadata)
    return tenant, None


def served_headers(
    ctx: CallContext, served: Served[Any], limits: dict[str, str] | None, limiter: RateLimiter | None
) -> dict[str, str]:
    """The headers of a served non-streaming call: who served it, how, and what it cost (and the
    tenant's rate limits, when it has any, the call's own tokens taken)."""
    headers = {
        "x-request-id": ctx.request_id,
        "x-llm-provider": served.provider,
        "x-llm-model": header_value(served.result.model),
        "x-llm-attempts": str(served.attempts),
        "x-llm-cost-usd": format_usd(served.cost) if served.cost is not None else "unpriced",
    }
    if limits is not None:
        headers.update(limits if limiter is None else limiter.current(ctx.tenant_id, limits, ctx.metadata))
    return headers
