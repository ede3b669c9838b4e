"""POST /v1/chat/completions and POST /v1/completions."""

from __future__ import annotations

import logging
from functools import partial
from typing import Any

import orjson
from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError

from gateway import errors
from gateway.api.calls import (
    AdmittedCall,
    allowed_providers,
    billed_tenant,
    read_body,
    serve_call,
    served_headers,
)
from gateway.api.metadata import call_metadata
from gateway.api.middleware import REQUEST_ID
from gateway.api.responses import ChunkFormatter, chat_completion, text_completion
from gateway.api.state import STATE, GatewayState
from gateway.api.validation import ParsedRequest, parse_chat, parse_completion
from gateway.pricing.base import format_usd
from gateway.routing.router import StreamSession
from gateway.safe_text import header_value
from gateway.usage import CallContext, UsageRecorder

log = logging.getLogger(__name__)


class ClientPayloadNoise(logging.Filter):
    """Keeps aiohttp's "Unhandled exception" out of the ERROR log when it is a request body the
    client broke (a content-encoding that does not decode): the handler has answered 400
    already, and aiohttp's lingering read of the rest of that body raises the same error again.
    And its "Error handling request" for a request head its parser refused (a bad header token,
    a line too long, a bad chunk size), answered 400 before any handler: a traceback of 556
    bytes at ERROR for each, which anyone could send without a key (0.5 MB of log a second from
    one client, in a review)."""

    def filter(self, record: logging.LogRecord) -> bool:
        error = record.exc_info[1] if record.exc_info else None
        return not isinstance(error, (web.RequestPayloadError, HttpProcessingError))


def quiet_client_payload_errors() -> None:
    """Install :class:`ClientPayloadNoise` on aiohttp's server logger (once)."""
    server = logging.getLogger("aiohttp.server")
    if not any(isinstance(f, ClientPayloadNoise) for f in server.filters):
        server.addFilter(ClientPayloadNoise())


async def chat_completions(request: web.Request) -> web.StreamResponse:
    state = request.app[STATE]
    principal = state.auth.authenticate(request)
    parsed = parse_chat(await read_body(request))
    if state.router.catalog.is_legacy_completion_model(parsed.requested_model):
        # as OpenAI answers it: the vendors refuse these models on their chat endpoint, so every
        # provider was asked in vain, and each refusal recorded (a review)
        raise errors.ModelNotFound(
            f"{parsed.requested_model!r} is not a chat model and thus not supported in the "
            "v1/chat/completions endpoint. Did you mean to use v1/completions?",
            param="model",
        )
    return await _serve(request, state, principal, parsed)


async def completions(request: web.Request) -> web.StreamResponse:
    state = request.app[STATE]
    principal = state.auth.authenticate(request)
    body = await read_body(request)
    model = body.get("model") if isinstance(body, dict) else None
    legacy = isinstance(model, str) and state.router.catalog.is_legacy_completion_model(model)
    parsed = parse_completion(body, legacy_model=legacy)
    return await _serve(request, state, principal, parsed)


async def _serve(
    request: web.Request, state: GatewayState, principal: Any, parsed: ParsedRequest
) -> web.StreamResponse:
    return await serve_call(request, state, partial(_answer, request, state, principal, parsed))


async def _answer(
    request: web.Request, state: GatewayState, principal: Any, parsed: ParsedRequest
) -> web.StreamResponse:
    providers = allowed_providers(state, principal, parsed.requested_model, parsed.provider)
    metadata = call_metadata(parsed.metadata, principal.metadata)
    tenant, limits = billed_tenant(state, principal, parsed.tenant_id, metadata)
    ctx = CallContext(
        request_id=request[REQUEST_ID],
        tenant_id=tenant,
        api_key_id=principal.key_id,
        endpoint=parsed.endpoint,
        stream=parsed.template.stream,
        requested_model=parsed.requested_model,
        providers=providers,
        metadata=metadata,
    )
    with AdmittedCall(ctx, limits, state.limits):
        if parsed.template.stream:
            session = await state.router.open_stream(ctx, parsed.template, parsed.provider)
            return await _stream(request, state, ctx, parsed, session, limits)
        served = await state.router.complete(ctx, parsed.template, parsed.provider)
    result = served.result
    UsageRecorder.log_cost(ctx, served.provider, result.model, served.cost)
    created = int(state.clock().timestamp())
    response_id = _response_id(parsed.endpoint, ctx.request_id)
    build = chat_completion if parsed.endpoint == "chat.completions" else text_completion
    body = build(response_id, created, result.model, result)
    return web.Response(
        body=orjson.dumps(body),
        content_type="application/json",
        headers=served_headers(ctx, served, limits, state.limits),
    )


def _response_id(endpoint: str, request_id: str) -> str:
    prefix = "chatcmpl-" if endpoint == "chat.completions" else "cmpl-"
    return prefix + request_id.removeprefix("req_")


class EventStream(web.StreamResponse):
    """An SSE answer whose status line and headers go out with its first chunk, in one write.

    aiohttp's ``StreamResponse`` sends them alone at ``prepare``: one more packet, and one more
    read for the client. Nothing waits for it here: the router opens a stream only once its
    first content is in hand, and the first batch always makes an event (the role chunk)."""

    _send_headers_immediately = False
    #: its client left before its end (``gateway.metrics.CLIENT_LEFT``: a 499 in the metrics)
    client_left = False


def _sse(obj: Any) -> bytes:
    return b"data: " + orjson.dumps(obj) + b"\n\n"


async def _stream(
    request: web.Request,
    state: GatewayState,
    ctx: CallContext,
    parsed: ParsedRequest,
    session: StreamSession,
    limits: dict[str, str] | None,
) -> web.StreamResponse:
    headers = {
        "content-type": "text/event-stream",
        "cache-control": "no-cache",
        "x-request-id": ctx.request_id,
        "x-llm-provider": session.provider,
        "x-llm-model": header_value(session.first_model),
        "x-llm-attempts": str(session.attempts),
    }
    if limits is not None:
        headers.update(limits)
    response = EventStream(headers=headers)
    created = int(state.clock().timestamp())
    formatter: ChunkFormatter | None = None
    held = b""  # the last read of a stream the upstream ended: it goes out with the end, in one write
    watch = state.write_watches.watch(request.transport, ctx.request_id)
    try:
        watch.begin()
        await response.prepare(request)
        watch.end()
        try:
            async for batch in session.batches():
                if formatter is None:
                    model = batch[0].model or session.first_model
                    formatter = ChunkFormatter(
                        parsed.endpoint,
                        _response_id(parsed.endpoint, ctx.request_id),
                        created,
                        model,
                        parsed.include_usage,
                    )
                # what arrived together goes out together: one write per upstream read
                out = formatter.sse(batch)
                if session.complete:
                    held = out
                elif out:
                    watch.begin()
                    await response.write(out)
                    watch.end()
        except errors.StreamCut as cut:
            _log_stream_cost(ctx, session)
            await state.event_log.settled(state.in_flight)
            # the cost travels with a cut stream too (a cut after the usage report is priced)
            cost_line = f": x-llm-cost-usd={format_usd(session.cost)}\n\n".encode()
            watch.begin()
            await response.write(held + cost_line + _sse(cut.to_openai()))
            return response
        session.finish("success")
        _log_stream_cost(ctx, session)
        model = session.served_model or session.provider_model
        cost = session.cost
        cost_text = format_usd(cost) if cost is not None else "unpriced"
        tail = [held]
        if parsed.include_usage and session.usage is not None:
            if formatter is None:
                formatter = ChunkFormatter(
                    parsed.endpoint, _response_id(parsed.endpoint, ctx.request_id), created, model, True
                )
            extension = {
                "cost_usd": cost_text,
                "provider": session.provider,
                "model": model,
                "attempts": session.attempts,
                "request_id": ctx.request_id,
            }
            tail.append(_sse(formatter.usage(session.usage, extension)))
        tail.append(f": x-llm-cost-usd={cost_text}\n\n".encode())
        tail.append(b"data: [DONE]\n\n")
        await state.event_log.settled(state.in_flight)
        watch.begin()
        await response.write_eof(b"".join(tail))
    except ConnectionError:  # reset, or lost while a write waited (a plain ConnectionError: a 500 before)
        _client_gone(ctx, session)
        response.client_left = True
        log.info("client went away during the stream of request %s", ctx.request_id)
    except Exception:  # a bug of the gateway's: the begun stream ends with an error event, billed
        log.exception("unhandled error in the stream of request %s", ctx.request_id)
        await _end_internally_failed(request, state, ctx, session, response, held)
    finally:
        watch.close()
        if session.event is None:  # cancelled (the client went away while we waited)
            try:
                _client_gone(ctx, session)
            except Exception:  # a bug in the recording: the answer is sent, or the client gone
                log.exception("the stream of request %s could not record its end", ctx.request_id)
            if (transport := request.transport) is None or transport.is_closing():
                response.client_left = True  # (not a bug's exception: that is no 499)
        await session.aclose()
    return response


async def _end_internally_failed(
    request: web.Request,
    state: GatewayState,
    ctx: CallContext,
    session: StreamSession,
    response: EventStream,
    held: bytes,
) -> None:
    """End a stream that a bug of the gateway's broke: the attempt recorded (unless it was) and
    its cost line, then what was held, the cost and the error event, in valid HTTP (the headers
    go out with it when nothing was written yet)."""
    failure = errors.StreamFailedInternally(f"Internal error; request id {ctx.request_id}", provider=session.provider)
    failure.billed_unseen = True
    try:  # the bug may be in the recording itself: the stream ends with its error all the same
        if session.event is None:
            session.finish(failure.outcome, error=failure)
            _log_stream_cost(ctx, session)
        await state.event_log.settled(state.in_flight)
        cost = session.cost
    except Exception:
        log.exception("the stream of request %s could not record its attempt", ctx.request_id)
        cost = None
    cost_line = f": x-llm-cost-usd={format_usd(cost)}\n\n".encode()
    try:
        if not response.prepared:
            await response.prepare(request)
        await response.write(held + cost_line + _sse(failure.to_openai()))
    except Exception:  # the client gone, or the bug in the write itself: nothing more to send
        response.client_left = True
        log.info("the stream of request %s could not end with its error", ctx.request_id, exc_info=True)


def _client_gone(ctx: CallContext, session: StreamSession) -> None:
    """Record the stream's attempt as cancelled, with its cost line (one per call, as ever),
    unless it was recorded already (the client went away during the last write)."""
    if session.event is not None:
        return
    session.finish("cancelled")
    _log_stream_cost(ctx, session)


def _log_stream_cost(ctx: CallContext, session: StreamSession) -> None:
    """The call's cost line, from the stream's recorded attempt (unpriced if none is)."""
    model = session.served_model or session.provider_model
    UsageRecorder.log_cost(ctx, session.provider, model, session.cost)
