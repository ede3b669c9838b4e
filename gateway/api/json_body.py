"""The JSON body of an admin or analytics request (``/v1/analytics/sql``, ``/v1/admin/replay``):
any body a client can break is a 400 in the OpenAI error format, as on the completion routes.
A body nested past Python's parser (``RecursionError``) or that claims an encoding it is not in
(``RequestPayloadError``) was a 500 there (a review); a number too long for Python's integer
conversion said to raise ``sys.set_int_max_str_digits()``."""

from __future__ import annotations

import json
from typing import Any

from aiohttp import web

from gateway.errors import InvalidRequest


async def body_bytes(request: web.Request) -> bytes:
    """The request's body; a content-encoding that does not decode, or the client gone mid-body,
    is the client's fault: a 400 ``invalid_body``, not a 500 with a traceback (nobody may be left
    to read it). Every JSON route reads its body so (``calls.read_body`` too)."""
    try:
        return await request.read()
    except (web.RequestPayloadError, ConnectionError) as exc:
        cause = exc.__cause__ or exc
        raise InvalidRequest(f"The request body could not be read: {cause}", code="invalid_body") from exc


async def json_body(request: web.Request, *, empty: Any) -> Any:
    """The parsed body (standard library ``json``: integers exact), or ``empty`` for none."""
    raw = await body_bytes(request)
    if not raw.strip():
        return empty
    try:
        return json.loads(raw)
    except RecursionError:
        raise InvalidRequest("the request body is not valid JSON: nested too deep", code="invalid_json") from None
    except ValueError as exc:  # UnicodeDecodeError too
        reason = "a number too long" if "int_max_str_digits" in str(exc) else str(exc)
        raise InvalidRequest(f"the request body is not valid JSON: {reason}", code="invalid_json") from exc
