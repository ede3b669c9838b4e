"""Request ids and the OpenAI error format for every failure: never a traceback to the client."""

from __future__ import annotations

import asyncio
import logging

import orjson
from aiohttp import web
from aiohttp.typedefs import Handler

from gateway import errors
from gateway.api.drain import IN_FLIGHT
from gateway.errors import MAX_RETRY_AFTER
from gateway.ids import request_id
from gateway.metrics import METRICS
from gateway.pricing.base import format_usd

log = logging.getLogger(__name__)

REQUEST_ID: web.RequestKey[str] = web.RequestKey("request_id", str)


def client_gone(request: web.Request) -> bool:
    """Whether the request's client has closed its connection."""
    transport = request.transport
    return transport is None or transport.is_closing()


def release_body(request: web.Request) -> None:
    """Drop the request's body once it is answered. aiohttp keeps a keep-alive connection's last
    request until the next one comes, and the request keeps the body it read (``read()``
    caches it): each idle client held its last body, 15 MB an image request, for as long as it
    kept its connection open (a re-test: 739 MB for 40 idle clients)."""
    if getattr(request, "_read_bytes", None) is not None:
        request._read_bytes = None


class ClientWatch:
    """``client_gone`` of a request while it is served (``CLIENT_GONE``); :meth:`release` at its
    end. A task the request started (a pooled upstream connection's) copies the request's
    context and keeps it: holding the request there kept its body, 20 MB an image request, for
    as long as the connection lived (a review: 455 MB after 25 such requests)."""

    __slots__ = ("_request",)

    def __init__(self, request: web.Request) -> None:
        self._request: web.Request | None = request

    def __call__(self) -> bool:
        request = self._request
        return request is not None and client_gone(request)

    def release(self) -> None:
        self._request = None


#: the longest ``retry-after`` a client's SDK may wait for before its own retry: the Python SDK
#: waits at most 60 s (it retries on its own schedule past that), the Node SDK any time at all
#: (a review: a create() with a 5 s timeout slept 90 s on an upstream's retry-after, and 30 then
#: 60 s on the cool-downs of circuits open). A longer wait says ``x-should-retry: false``
SDK_RETRY_WAIT = 60


def retry_after_header(seconds: float) -> str:
    """Whole seconds, 1 to a day: an upstream's ``retry-after: inf`` (or 1e400) made
    ``round`` raise, and the client got a bare 500 without the OpenAI error object."""
    if seconds != seconds:  # NaN
        return "1"
    return str(int(max(1, min(round(min(seconds, MAX_RETRY_AFTER)), MAX_RETRY_AFTER))))


def error_label(exc: errors.GatewayError) -> str:
    """The code an error answer is counted under: the gateway's own (a vendor's code for a bad
    request, free text, counts as its class's), ``circuits_open`` when no provider was tried."""
    if isinstance(exc, errors.AllProvidersFailed) and not exc.attempts:
        return "circuits_open"
    if exc.metric_code is not None:
        return exc.metric_code
    code = exc.code
    return code if code is not None and code in _GATEWAY_CODES else type(exc).code or "error"


def _codes(cls: type[errors.GatewayError]) -> set[str]:
    own = {cls.code} if cls.code is not None else set()
    return own.union(*(_codes(sub) for sub in cls.__subclasses__()))


#: the error codes the gateway's own classes give (the router's for every provider failed among them)
_GATEWAY_CODES = _codes(errors.GatewayError)


def error_response(exc: errors.GatewayError, rid: str) -> web.Response:
    headers = {"x-request-id": rid}
    if exc.client_should_retry is False:
        headers["x-should-retry"] = "false"
    # a call that reached providers says what it cost, failed or not, as its cost line and the
    # stores do: an attempt the provider bills (a malformed 200, a stream cut after it began)
    # costs its price or an unknown amount, which the error answers left out
    if isinstance(exc, errors.AllProvidersFailed):
        # the attempts sent: a request every connection of a provider was busy for was not
        headers["x-llm-attempts"] = str(sum(not isinstance(a, errors.ConnectionsBusy) for a in exc.attempts))
        headers["x-llm-cost-usd"] = format_usd(exc.cost)
        waits = [a.retry_after for a in exc.attempts if a.retry_after is not None]
        if exc.retry_after is not None:  # circuits open: when the first lets a probe through
            waits.append(exc.retry_after)
        if waits:
            headers["retry-after"] = retry_after_header(min(waits))
    elif isinstance(exc, errors.ProviderError):
        headers["x-llm-provider"] = exc.provider
        headers["x-llm-cost-usd"] = format_usd(exc.call_cost)
        if exc.call_attempts is not None:  # the vendor's refusal may follow retries and fallbacks
            headers["x-llm-attempts"] = str(exc.call_attempts)
        if exc.retry_after is not None:
            headers["retry-after"] = retry_after_header(exc.retry_after)
    elif exc.call_attempts is not None:  # another error that ended a call after attempts (the router's)
        headers["x-llm-attempts"] = str(exc.call_attempts)
        headers["x-llm-cost-usd"] = format_usd(exc.call_cost)
    if exc.headers is not None:
        headers.update(exc.headers)
    if int(headers.get("retry-after", 0)) > SDK_RETRY_WAIT:
        headers["x-should-retry"] = "false"  # the client schedules its own retry by retry-after
    return web.Response(
        status=exc.status, body=orjson.dumps(exc.to_openai()), content_type="application/json", headers=headers
    )


_HTTP_ERRORS: dict[int, type[errors.GatewayError]] = {
    404: errors.RouteNotFound,
    405: errors.MethodNotAllowed,
    413: errors.RequestTooLarge,
    415: errors.UnsupportedMediaType,
}


#: the tasks of an app without a drain: tracked the same way, looked at by nobody
_UNTRACKED: set[object] = set()


def answer_error(request: web.Request, exc: errors.GatewayError, rid: str) -> web.Response:
    """The error answer for ``exc``, counted in the metrics by its code."""
    metrics = request.app.get(METRICS)
    if metrics is not None:
        metrics.observe_error(error_label(exc))
    return error_response(exc, rid)


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    rid = request_id()
    request[REQUEST_ID] = rid
    in_flight = request.app.get(IN_FLIGHT, _UNTRACKED)  # a stop drains them (gateway/api/drain.py)
    task = asyncio.current_task()
    in_flight.add(task)
    try:
        response = await handler(request)
    except errors.GatewayError as exc:
        return answer_error(request, exc, rid)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        cls = _HTTP_ERRORS.get(exc.status, errors.InvalidRequest if exc.status < 500 else errors.GatewayError)
        message = exc.text if exc.text and not exc.text.startswith(f"{exc.status}:") else exc.reason
        if exc.status == 404:
            message = f"Unknown route {request.method} {request.path}"
        elif exc.status == 405:
            message = f"Method {request.method} is not allowed on {request.path}"
        elif exc.status == 413:
            message = f"Request body too large: {exc.text}"
        response = answer_error(request, cls(message), rid)
        if isinstance(exc, web.HTTPMethodNotAllowed):  # RFC 9110: a 405 says what is allowed
            response.headers["allow"] = ", ".join(sorted(exc.allowed_methods))
        return response
    except Exception:
        log.exception("unhandled error in %s %s (request %s)", request.method, request.path, rid)
        return answer_error(request, errors.InternalError(f"Internal error; request id {rid}"), rid)
    finally:
        in_flight.discard(task)
        release_body(request)
    if not response.prepared:
        response.headers["x-request-id"] = rid
    return response
