"""The floor for a Python proxy: the least an aiohttp server can do to pass a chat call through.

No parsing, no routing, no events: read the body, POST it upstream on a shared keep-alive
session, return the answer (a stream is copied through as it arrives)::

    python -m tests.bench.minimal_proxy --port 9200 --upstream http://127.0.0.1:9100
"""

from __future__ import annotations

import argparse
from collections.abc import AsyncIterator, Callable, Sequence

import aiohttp
from aiohttp import web
from aiohttp.typedefs import Handler, Middleware

SESSION: web.AppKey[aiohttp.ClientSession] = web.AppKey("session", aiohttp.ClientSession)
UPSTREAM: web.AppKey[str] = web.AppKey("upstream", str)


async def chat(request: web.Request) -> web.StreamResponse:
    body = await request.read()
    url = request.app[UPSTREAM] + "/v1/chat/completions"
    headers = {"content-type": "application/json", "authorization": "Bearer sk-bench"}
    async with request.app[SESSION].post(url, data=body, headers=headers) as upstream:
        content_type = upstream.headers.get("content-type", "application/json")
        if not content_type.startswith("text/event-stream"):
            return web.Response(body=await upstream.read(), status=upstream.status, content_type="application/json")
        response = web.StreamResponse(status=upstream.status, headers={"content-type": content_type})
        await response.prepare(request)
        async for piece in upstream.content.iter_any():
            await response.write(piece)
        await response.write_eof()
        return response


def make_app(
    upstream: str,
    handler: Handler | None = None,
    *,
    middlewares: Sequence[Middleware] = (),
    client_max_size: int = 1024**2,
) -> web.Application:
    """The proxy's app: one keep-alive client session, ``handler`` (default: ``chat``) on the chat route."""
    app = web.Application(middlewares=middlewares, client_max_size=client_max_size)
    app[UPSTREAM] = upstream.rstrip("/")

    async def session(app: web.Application) -> AsyncIterator[None]:
        connector = aiohttp.TCPConnector(limit=0, limit_per_host=256)
        async with aiohttp.ClientSession(connector=connector) as client:
            app[SESSION] = client
            yield

    app.cleanup_ctx.append(session)
    app.router.add_post("/v1/chat/completions", handler if handler is not None else chat)
    return app


def serve(prog: str, default_port: int, build: Callable[[str], web.Application]) -> None:
    parser = argparse.ArgumentParser(prog=prog)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=default_port)
    parser.add_argument("--upstream", required=True, help="e.g. http://127.0.0.1:9100")
    args = parser.parse_args()
    web.run_app(build(args.upstream), host=args.host, port=args.port, access_log=None, print=None)


def main() -> None:
    serve("python -m tests.bench.minimal_proxy", 9200, make_app)


if __name__ == "__main__":
    main()
