"""The minimal proxy with the gateway's plumbing and none of its work: the attribution baseline.

What ``minimal_proxy`` does, the way the gateway does it: a middleware that times the call by
route, the request body decoded and the upstream body encoded with orjson, one prebuilt
``ClientTimeout``, the gateway's upstream headers, the answer decoded and re-encoded with the
gateway's five ``x-llm-*`` / ``x-request-id`` headers. No validation, routing, pricing, usage
event, log line, health or metrics. The gap from ``minimal`` to here is the cost of doing the
plumbing the gateway's way; the gap from here to ``gateway`` is the gateway's own work *as it
runs interleaved with the plumbing* (compare ``tests.bench.request_path``, the same work alone).
Streams are copied through as ``minimal_proxy`` does::

    python -m tests.bench.shaped_proxy --port 9201 --upstream http://127.0.0.1:9100
"""

from __future__ import annotations

import time

import aiohttp
import orjson
from aiohttp import web
from aiohttp.typedefs import Handler

from gateway.ids import request_id
from tests.bench.minimal_proxy import SESSION, UPSTREAM, serve
from tests.bench.minimal_proxy import make_app as make_proxy_app

TIMEOUT = aiohttp.ClientTimeout(total=120, sock_connect=5)
#: the middleware's last (route, seconds), as the gateway's hands them to its request metrics
LAST: web.AppKey[dict[str, float]] = web.AppKey("last", dict)


@web.middleware
async def timed(request: web.Request, handler: Handler) -> web.StreamResponse:
    started = time.monotonic()
    resource = request.match_info.route.resource
    route = resource.canonical if resource else "unmatched"
    try:
        return await handler(request)
    finally:
        request.app[LAST][route] = time.monotonic() - started


async def chat(request: web.Request) -> web.StreamResponse:
    if request.content_type not in ("application/json", ""):
        raise web.HTTPUnsupportedMediaType()
    body = orjson.loads(await request.read())
    url = request.app[UPSTREAM] + "/v1/chat/completions"
    stream = bool(body.get("stream"))
    headers = {"authorization": "Bearer sk-bench", "accept": "text/event-stream" if stream else "application/json"}
    async with request.app[SESSION].post(url, data=orjson.dumps(body), headers=headers, timeout=TIMEOUT) as upstream:
        rid = request_id()
        if stream:
            response = web.StreamResponse(
                headers={"content-type": "text/event-stream", "cache-control": "no-cache", "x-request-id": rid}
            )
            await response.prepare(request)
            async for piece in upstream.content.iter_any():
                await response.write(piece)
            await response.write_eof()
            return response
        data = orjson.loads(await upstream.read())
    return web.Response(
        body=orjson.dumps(data),
        content_type="application/json",
        headers={
            "x-request-id": rid,
            "x-llm-provider": "openai",
            "x-llm-model": str(data.get("model")),
            "x-llm-attempts": "1",
            "x-llm-cost-usd": "0.000175",
        },
    )


def make_app(upstream: str) -> web.Application:
    app = make_proxy_app(upstream, chat, middlewares=[timed], client_max_size=1_048_576)
    app[LAST] = {}
    return app


def main() -> None:
    serve("python -m tests.bench.shaped_proxy", 9201, make_app)


if __name__ == "__main__":
    main()
