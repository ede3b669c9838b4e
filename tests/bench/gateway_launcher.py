"""``llm-gateway serve`` without the in-process projector, for attributing CPU (not a product mode).

The embedded ``serve`` projects the log into DuckDB in the same process; this launcher builds
the same app from the same settings (usage events still go to the embedded log) but leaves
projection out, so the overhead table can tell the request path from the projection::

    LLM_GATEWAY_DATA_DIR=... OPENAI_BASE_URL=... python -m tests.bench.gateway_launcher
"""

from __future__ import annotations

import asyncio
import logging
import sys

from aiohttp import web

from gateway.app import create_app
from gateway.server import server_installers
from gateway.settings import load_settings


async def serve() -> None:
    settings = load_settings()
    app = create_app(settings, installers=server_installers(settings, project=False))
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, settings.bind_host, settings.port).start()
    try:
        await asyncio.Event().wait()
    finally:
        await runner.cleanup()


def main() -> None:
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
    asyncio.run(serve())


if __name__ == "__main__":
    main()
