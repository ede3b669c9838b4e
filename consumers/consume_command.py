"""``llm-gateway consume``: a consumer-group member projecting the log into the stores, serving
the analytics API (``/v1/costs``, SQL, ``/metrics``, ``/healthz``) over the DuckDB it owns."""

from __future__ import annotations

import argparse
import asyncio
import logging
from collections.abc import AsyncIterator
from typing import Any

from aiohttp import web

from gateway.api.drain import RUNNER_BACKSTOP
from gateway.json_log import say
from gateway.runtime import Termination, listening_socket
from gateway.settings import Settings
from gateway.startup import startup_failure, warn_if_open, warn_if_readable

log = logging.getLogger(__name__)


def _batch_size(text: str) -> int:
    """A batch of 0 events made a consumer that said ``ok`` and never projected anything."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if not 1 <= value <= 100_000:
        raise argparse.ArgumentTypeError(f"must be 1 to 100000, got {value}")
    return value


def register(sub: Any) -> None:
    parser = sub.add_parser("consume", help="project the event log into DuckDB (and Postgres) and serve analytics")
    parser.add_argument("--group", default="llm-usage-projector", help="consumer group id")
    parser.add_argument("--host", help="analytics API bind address (default: as for serve)")
    parser.add_argument(
        "--port", type=int, help="analytics API port (default LLM_GATEWAY_CONSUME_PORT, 8081; 0 = no HTTP API)"
    )
    parser.add_argument("--batch-size", type=_batch_size, default=5000, help="events per batch (1 to 100000)")
    parser.set_defaults(run=run)


def build_consumer_app(settings: Settings, group: str, batch_size: int, host: str | None = None) -> web.Application:
    """``host``: where it listens (default ``settings.bind_host``)."""
    from analytics.http import install_analytics
    from consumers.pipeline import build_pipeline, export_path
    from consumers.replay_http import install_replay
    from gateway.api.auth import Authenticator
    from gateway.api.drain import install_drain
    from gateway.api.middleware import error_middleware
    from gateway.metrics import METRICS, METRICS_AUTH, GatewayMetrics, metrics_handler, watch_projector

    pipeline = build_pipeline(settings, group_id=group, batch_size=batch_size)
    app = web.Application(middlewares=[error_middleware])
    install_drain(app, settings.shutdown_timeout)
    from gateway.api.browser_guard import is_loopback_host

    auth = Authenticator(
        settings.api_keys, settings.default_tenant, loopback=is_loopback_host(host or settings.bind_host)
    )
    from gateway.api.expect import EXPECT_AUTH

    app[EXPECT_AUTH] = auth
    install_analytics(app, pipeline.store, auth, export_dir=export_path(settings))
    install_replay(app, settings, pipeline.store, auth, live_group=group, stats=pipeline.projector.stats)

    async def healthz(request: web.Request) -> web.Response:
        stats = pipeline.projector.stats
        # stuck on a bug, or no log to read: not ok (paused waits for a store)
        return web.json_response(stats.health(), status=503 if stats.failing or stats.waiting_for_log else 200)

    app.router.add_get("/healthz", healthz)
    metrics = GatewayMetrics()
    watch_projector(metrics, pipeline, group)
    app[METRICS] = metrics
    if settings.metrics_auth:
        app[METRICS_AUTH] = auth
    app.router.add_get("/metrics", metrics_handler)

    async def lifecycle(app: web.Application) -> AsyncIterator[None]:
        async with pipeline.running():
            yield

    app.cleanup_ctx.append(lifecycle)
    from consumers.log_retention import install_log_retention

    install_log_retention(app, settings, pipeline)
    return app


async def _consume(settings: Settings, args: argparse.Namespace) -> None:
    port = settings.consume_port if args.port is None else args.port
    host = args.host or settings.bind_host
    sock = listening_socket(host, port) if port else None  # a taken port: before joining the group
    app = build_consumer_app(settings, args.group, args.batch_size, host)
    # the app drains its requests within the shutdown timeout itself (gateway/api/drain.py)
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=RUNNER_BACKSTOP)
    warn_if_readable(settings.data_dir)
    terminated = Termination()  # a SIGTERM while it joins its group stops it once it has
    stopping = False
    try:
        await runner.setup()  # inside the try: see serve
        if sock is not None:
            await web.SockSite(runner, sock).start()
            log.info("consumer %s: analytics API on http://%s:%s", args.group, host, sock.getsockname()[1])
            warn_if_open(bool(settings.api_keys), host, "consumer")
        await terminated.wait()
        stopping = True
    finally:
        await runner.cleanup()
    if stopping:  # a log alone tells a clean stop from a kill (it ended on "SIGTERM: stopping")
        log.info("llm-gateway consume stopped: its projection ended and its group %s was left", args.group)


def run(args: argparse.Namespace, settings: Settings) -> int:
    try:
        asyncio.run(_consume(settings, args))
    except KeyboardInterrupt:
        pass
    except Exception as exc:
        if (reason := startup_failure(exc)) is None:
            raise
        say(f"llm-gateway consume: cannot start: {reason}")
        return 1
    return 0
