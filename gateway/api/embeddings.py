"""POST /v1/embeddings: OpenAI's request and answer, served by the providers of the model itself.

The request: ``model``, ``input`` (a string, an array of strings, an array of token ids or an
array of them), ``encoding_format`` (``float`` or ``base64``), ``dimensions``, ``user``, and the
gateway's ``provider`` and ``tenantId``. Every attempt is a usage event (``endpoint``
``embeddings``: input tokens only) with its cost line, as a completion's.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from typing import Any

import orjson
from aiohttp import web

from gateway.api.calls import (
    AdmittedCall,
    allowed_providers,
    billed_tenant,
    read_body,
    serve_call,
    served_headers,
)
from gateway.api.metadata import call_metadata, request_metadata
from gateway.api.middleware import REQUEST_ID
from gateway.api.state import STATE, GatewayState
from gateway.api.tool_validation import type_name
from gateway.api.validation import common_fields, expect_object, integer_field, refuse_unknown, string_field
from gateway.embedding import EmbeddingRequest, EmbeddingResult, as_base64, as_floats
from gateway.errors import InvalidRequest
from gateway.usage import CallContext, UsageRecorder

#: every field the endpoint reads; any other is refused, as OpenAI refuses it
KNOWN = frozenset({"model", "input", "encoding_format", "dimensions", "user", "provider", "tenantId", "metadata"})
#: OpenAI's limit of inputs in one request
MAX_INPUTS = 2048
#: the largest ``dimensions`` asked (the vendors' models have at most a few thousand)
MAX_DIMENSIONS = 65536
_INPUT_SHAPES = "a string, an array of strings, an array of token ids, or an array of arrays of token ids"


@dataclass(frozen=True, slots=True)
class ParsedEmbeddings:
    template: EmbeddingRequest  # model = the requested model; the router maps it per provider
    provider: str | None
    tenant_id: str | None
    #: the request's metadata (``gateway/api/metadata.py``; None: none)
    metadata: dict[str, str] | None = None


def _token_ids(value: list[Any], where: str) -> tuple[int, ...]:
    if not value:
        raise InvalidRequest(f"'{where}' is an empty array of token ids", param="input", code="invalid_value")
    for token in value:
        if isinstance(token, bool) or not isinstance(token, int) or not 0 <= token < 2**31:
            raise InvalidRequest(
                f"'{where}' holds {token!r}: token ids are integers from 0 to {2**31 - 1}",
                param="input",
                code="invalid_value",
            )
    return tuple(value)


def _inputs(body: dict[str, Any]) -> tuple[tuple[str, ...] | None, tuple[tuple[int, ...], ...] | None]:
    value = body.get("input")
    if value is None:
        raise InvalidRequest("Missing required parameter: 'input'", param="input", code="missing_required_parameter")
    if value == "":
        raise InvalidRequest("'input' must not be empty", param="input", code="invalid_value")
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list):
        raise InvalidRequest(f"'input' must be {_INPUT_SHAPES}", param="input", code="invalid_type")
    if not value:
        raise InvalidRequest("'input' must not be an empty array", param="input", code="invalid_value")
    if all(isinstance(item, int | float) and not isinstance(item, bool) for item in value):
        # one input of token ids, however long (the model's context is the vendor's to check);
        # a float there is a bad token id, not a mix
        return None, (_token_ids(value, "input"),)
    if len(value) > MAX_INPUTS:
        raise InvalidRequest(
            f"'input' holds {len(value)} inputs; at most {MAX_INPUTS} go in one request",
            param="input",
            code="invalid_value",
        )
    if all(isinstance(item, str) for item in value):
        for i, text in enumerate(value):
            if not text:  # OpenAI's 400 too; a vector of nothing is of no use
                raise InvalidRequest(f"'input[{i}]' must not be empty", param="input", code="invalid_value")
        return tuple(value), None
    if all(isinstance(item, list) for item in value):
        return None, tuple(_token_ids(item, f"input[{i}]") for i, item in enumerate(value))
    raise InvalidRequest(
        f"'input' must be {_INPUT_SHAPES}, not a mix (found {type_name(value[0])} and others)",
        param="input",
        code="invalid_type",
    )


def _encoding(body: dict[str, Any]) -> bool:
    """Whether the vectors go back as base64."""
    value = body.get("encoding_format")
    if value is None or value == "float":
        return False
    if value == "base64":
        return True
    raise InvalidRequest(
        f"'encoding_format' must be 'float' or 'base64', got {value!r}"[:200],
        param="encoding_format",
        code="invalid_value",
    )


def parse_embeddings(raw: Any) -> ParsedEmbeddings:
    body = expect_object(raw)
    refuse_unknown(body, frozenset(), KNOWN)
    model, provider, tenant = common_fields(body)
    texts, tokens = _inputs(body)
    template = EmbeddingRequest(
        model=model,
        texts=texts,
        tokens=tokens,
        dimensions=integer_field(body, "dimensions", 1, MAX_DIMENSIONS),
        user=string_field(body, "user"),
        base64=_encoding(body),
    )
    return ParsedEmbeddings(template, provider, tenant, request_metadata(body))


def embedding_list(result: EmbeddingResult, *, base64: bool) -> dict[str, Any]:
    """OpenAI's answer: a ``list`` of ``embedding`` objects. ``usage`` is null when the vendor
    reported none (Gemini): the gateway does not make a count up."""
    encode = as_base64 if base64 else as_floats
    usage = result.usage
    return {
        "object": "list",
        "data": [
            {"object": "embedding", "index": i, "embedding": encode(vector)} for i, vector in enumerate(result.vectors)
        ],
        "model": result.model,
        "usage": None if usage is None else {"prompt_tokens": usage.prompt_tokens, "total_tokens": usage.prompt_tokens},
    }


async def embeddings(request: web.Request) -> web.StreamResponse:
    state = request.app[STATE]
    principal = state.auth.authenticate(request)
    parsed = parse_embeddings(await read_body(request))
    return await serve_call(request, state, partial(_answer, request, state, principal, parsed))


async def _answer(
    request: web.Request, state: GatewayState, principal: Any, parsed: ParsedEmbeddings
) -> web.StreamResponse:
    model = parsed.template.model
    providers = allowed_providers(state, principal, model, parsed.provider, same_model=True)
    metadata = call_metadata(parsed.metadata, principal.metadata)
    tenant, limits = billed_tenant(state, principal, parsed.tenant_id, metadata)
    ctx = CallContext(
        request_id=request[REQUEST_ID],
        tenant_id=tenant,
        api_key_id=principal.key_id,
        endpoint="embeddings",
        stream=False,
        requested_model=model,
        providers=providers,
        metadata=metadata,
    )
    with AdmittedCall(ctx, limits, state.limits):
        served = await state.router.embed(ctx, parsed.template, parsed.provider)
    UsageRecorder.log_cost(ctx, served.provider, served.result.model, served.cost)
    body = embedding_list(served.result, base64=parsed.template.base64)
    return web.Response(
        body=orjson.dumps(body),
        content_type="application/json",
        headers=served_headers(ctx, served, limits, state.limits),
    )
