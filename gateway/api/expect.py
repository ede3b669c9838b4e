"""``Expect: 100-continue``: a client is asked for its body only once the request could be taken.

aiohttp's own handler answers ``100 Continue`` to every such request before anything else runs:
a client without a valid key, or declaring a body over the limit, was told to send it all (curl
asks for bodies over 1 MB; an image request may be 20 MB) and refused after it had. Here the key
and the declared ``Content-Length`` are checked first; a refusal is the final answer, in the
OpenAI error format, and the connection is closed (the body it never asked for is not read).
The checks that need the body (the tenant it names, the admin endpoints' admin key) come after,
as for any request.
"""

from __future__ import annotations

import time

from aiohttp import hdrs, web
from aiohttp.http import HttpVersion11
from aiohttp.typedefs import Handler

from gateway import errors
from gateway.api.auth import Authenticator
from gateway.api.middleware import answer_error
from gateway.ids import request_id
from gateway.metrics import METRICS

#: the authenticator whose keys an app's POST routes take (absent: no key is checked up front)
EXPECT_AUTH: web.AppKey[Authenticator] = web.AppKey("expect_auth", Authenticator)


async def expect_continue(request: web.Request) -> web.StreamResponse | None:
    """The ``expect_handler`` of the app's POST routes (see :func:`add_post`)."""
    started = time.monotonic()
    expect = request.headers.get(hdrs.EXPECT, "")
    try:
        if expect.lower() != "100-continue":
            raise errors.ExpectationFailed(f"Unsupported Expect header {expect!r}: only '100-continue' is")
        auth = request.app.get(EXPECT_AUTH)
        if auth is not None:
            auth.authenticate(request)
        length = request.content_length
        if length is not None and length > request.client_max_size:
            raise errors.RequestTooLarge(
                f"Request body of {length} bytes is larger than the limit of {request.client_max_size} bytes"
            )
    except errors.GatewayError as exc:
        response = answer_error(request, exc, request_id())
        # the body was never asked for: the connection cannot be reused, and is closed once the
        # answer is out (aiohttp would wait up to 10 s for the body before it closed, and a stop
        # for that wait)
        response.force_close()
        await response.prepare(request)
        await response.write_eof()
        request.protocol.force_close()
        metrics = request.app.get(METRICS)
        if metrics is not None:
            resource = request.match_info.route.resource
            route = resource.canonical if resource else "unmatched"
            metrics.observe_request(route, exc.status, time.monotonic() - started)
        return response
    if request.version == HttpVersion11:
        await request.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        request.writer.output_size = 0  # as aiohttp's own handler: the answer's size starts here
    return None


def add_post(app: web.Application, path: str, handler: Handler) -> None:
    """``app.router.add_post`` with :func:`expect_continue` as its ``Expect`` handler."""
    app.router.add_post(path, handler, expect_handler=expect_continue)
