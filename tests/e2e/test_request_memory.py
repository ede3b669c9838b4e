"""A request's memory is freed when it is answered: nothing that outlives it keeps it."""

from __future__ import annotations

import asyncio
import base64
import gc

import openai
from aiohttp import web

from tests.support.gateway import running_gateway

#: a 3 MB image: large enough to tell this request's body from anything else alive
PHOTO = base64.b64encode(b"\xff\xd8\xff" + b"\x04" * 3_000_000).decode()


def bodies_alive(app: web.Application) -> int:
    """The requests to ``app`` alive with their body (the simulator's own are not counted: its
    server keeps a keep-alive connection's last request until the next one comes)."""
    gc.collect()
    return sum(
        1
        for o in gc.get_objects()
        if isinstance(o, web.Request) and o.app is app and len(getattr(o, "_read_bytes", None) or b"") > 3_000_000
    )


async def test_an_answered_request_is_not_kept_by_the_upstream_connection_it_opened() -> None:
    """The request's client-gone check lived in a context variable, and an upstream connection
    opened while serving the request copies its context (the transport's reader callback) for
    as long as it is pooled: each such connection kept a whole request, body included. A review
    sent 25 image requests of 19 MB and the gateway held 455 MB of them, for good."""
    async with running_gateway(providers=("openai",)) as gw:
        gw.sims["openai"].max_requests = 1  # the simulator keeps no large body either
        messages = [
            {
                "role": "user",
                "content": [{"type": "image_url", "image_url": {"url": f"data:image/jpeg;base64,{PHOTO}"}}],
            }
        ]
        for _ in range(3):  # each client is a new connection to the gateway, closed after its call
            async with openai.AsyncOpenAI(base_url=gw.base_url, api_key="unused", max_retries=0) as client:
                await client.chat.completions.create(model="gpt-4o", messages=messages)  # type: ignore[arg-type]
        await asyncio.sleep(0.05)  # the closed connections' handlers end
        assert bodies_alive(gw.app) == 0


async def test_an_idle_keep_alive_connection_does_not_keep_its_last_request_body() -> None:
    """aiohttp keeps a connection's last request until the next one comes, and the request
    kept the body it read: 40 idle clients held 739 MB of image bodies (a re-test)."""
    async with running_gateway(providers=("openai",)) as gw:
        gw.sims["openai"].max_requests = 1
        messages = [
            {
                "role": "user",
                "content": [{"type": "image_url", "image_url": {"url": f"data:image/jpeg;base64,{PHOTO}"}}],
            }
        ]
        clients = [openai.AsyncOpenAI(base_url=gw.base_url, api_key="unused", max_retries=0) for _ in range(2)]
        try:
            for client in clients:  # each leaves its connection open, idle
                await client.chat.completions.create(model="gpt-4o", messages=messages)  # type: ignore[arg-type]
            await asyncio.sleep(0.05)
            assert bodies_alive(gw.app) == 0
        finally:
            for client in clients:
                await client.close()
