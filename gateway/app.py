"""The composition root: ``create_app`` builds the gateway from settings (and test fakes).

Nothing happens at import time. Resources (the shared HTTP client session, the event log,
background consumers) open and close in ``cleanup_ctx`` generators.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from datetime import datetime

from aiohttp import web

from gateway.api import budgets, completions, embeddings, meta
from gateway.api.auth import Authenticator
from gateway.api.browser_guard import is_loopback_host
from gateway.api.drain import install_drain
from gateway.api.expect import EXPECT_AUTH, add_post
from gateway.api.middleware import error_middleware
from gateway.api.state import STATE, GatewayState
from gateway.budgets.plugin import install_budgets
from gateway.eventlog.base import EventLog
from gateway.failure_log import FailureLog
from gateway.health.plugin import health_plugin, install_health
from gateway.ids import utcnow
from gateway.limits.plugin import install_limits
from gateway.metrics import METRICS, METRICS_AUTH, GatewayMetrics, metrics_handler, metrics_middleware
from gateway.pricing.base import PriceBook
from gateway.providers.base import Provider, Timeouts
from gateway.providers.registry import build_providers
from gateway.providers.upstream_http import UpstreamClient
from gateway.routing.catalog import KNOWN_PROVIDERS, ModelCatalog
from gateway.routing.retry import RetryPolicy, Sleep
from gateway.routing.router import Router
from gateway.safe_text import register_secret, url_password
from gateway.settings import Settings
from gateway.usage import UsageRecorder

log = logging.getLogger(__name__)

#: extra parts other packages (consumers, analytics) plug into a built, not yet started app:
#: they may add routes, app keys and ``cleanup_ctx`` entries
Installer = Callable[[web.Application], None]


@asynccontextmanager
async def _price_file_watch(settings: Settings, book: PriceBook) -> AsyncIterator[None]:
    """Follow the price file while the app runs (gateway/pricing/reload.py)."""
    from gateway.pricing.book import CompositePriceBook

    if settings.price_file is None or not settings.price_reload_seconds or not isinstance(book, CompositePriceBook):
        yield
        return
    from gateway.pricing.reload import PriceFileWatch

    task = asyncio.create_task(PriceFileWatch(book, settings.price_file).run(settings.price_reload_seconds))
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


def create_app(
    settings: Settings,
    *,
    providers: Mapping[str, Provider] | None = None,
    event_log: EventLog | None = None,
    price_book: PriceBook | None = None,
    clock: Callable[[], datetime] = utcnow,
    sleep: Sleep = asyncio.sleep,
    rng: random.Random | None = None,
    installers: list[Installer] | None = None,
) -> web.Application:
    """Build the gateway. Tests pass fakes; ``llm-gateway serve`` passes only settings."""
    completions.quiet_client_payload_errors()
    for name in KNOWN_PROVIDERS:
        provider = settings.provider(name)
        register_secret(provider.api_key)
        register_secret(url_password(provider.base_url))
        for value in provider.headers.values():  # an API gateway's key before Azure (a review)
            register_secret(value)
    for key in settings.api_keys:
        register_secret(key.key)
    register_secret(settings.kafka_sasl_password)
    register_secret(settings.kafka_ssl_key_password)
    if event_log is None:
        from gateway.eventlog.factory import build_event_log

        event_log = build_event_log(settings)
    if price_book is None:
        from gateway.pricing.book import load_price_book

        price_book = load_price_book(settings.price_file)

    metrics = GatewayMetrics()
    recorder = UsageRecorder(
        event_log, price_book, clock=clock, instance=settings.event_instance, defer_observers=True, group_commit=True
    )
    recorder.observers.append(metrics.observe_event)
    failures = FailureLog()
    recorder.observers.append(failures)
    metrics.on_scrape(lambda: metrics.spool_depth.set(event_log.pending()))
    metrics.on_scrape(lambda: metrics.event_log_up.set(0 if event_log.outage() else 1))
    provider_map: dict[str, Provider] = dict(providers or {})
    router = Router(
        provider_map,
        ModelCatalog(settings.model_groups),
        recorder,
        first_content_timeout=settings.request_timeout,
        priority=list(settings.priority),
        policy=RetryPolicy(
            attempts=settings.retry_attempts,
            initial_wait=settings.retry_initial_wait,
            max_wait=settings.retry_max_wait,
            max_server_wait=settings.retry_max_server_wait,
            budget_seconds=settings.retry_budget_seconds,
        ),
        sleep=sleep,
        rng=rng,
    )
    router.native_first = settings.native_first
    state = GatewayState(
        settings=settings,
        router=router,
        auth=Authenticator(settings.api_keys, settings.default_tenant, loopback=is_loopback_host(settings.bind_host)),
        event_log=event_log,
        clock=clock,
    )
    app = web.Application(
        middlewares=[metrics_middleware(metrics, inner=error_middleware)], client_max_size=settings.max_body_bytes
    )
    app[STATE] = state
    app[METRICS] = metrics
    if settings.metrics_auth:
        app[METRICS_AUTH] = state.auth
    install_drain(app, settings.shutdown_timeout)

    async def flush_failures(_app: web.Application) -> None:
        failures.flush()
        state.auth.refusals.flush()

    app.on_cleanup.append(flush_failures)
    app[EXPECT_AUTH] = state.auth
    add_post(app, "/v1/chat/completions", completions.chat_completions)
    add_post(app, "/v1/completions", completions.completions)
    add_post(app, "/v1/embeddings", embeddings.embeddings)
    app.router.add_get("/v1/models", meta.models)
    app.router.add_get("/v1/models/{model}", meta.model)
    app.router.add_get("/v1/budgets", budgets.budgets)
    app.router.add_get("/healthz", meta.healthz)
    app.router.add_get("/openapi.json", meta.openapi)
    app.router.add_get("/metrics", metrics_handler)

    async def resources(app: web.Application) -> AsyncIterator[None]:
        await event_log.start()
        timeouts = Timeouts(settings.request_timeout, settings.connect_timeout, settings.stream_idle_timeout)
        proxies = settings.proxy_rules()
        if proxies.active:
            log.info("provider calls go through a proxy: %s", proxies.describe())
        async with UpstreamClient(limit_per_host=256, proxies=proxies) as session:
            if providers is None:
                provider_map.update(build_providers(settings, session, timeouts))
            async with _price_file_watch(settings, price_book):
                yield
        await event_log.close(timeout=5.0)

    app.cleanup_ctx.append(resources)
    install_health(app, health_plugin(settings, clock=clock))
    install_budgets(app, settings, clock)
    install_limits(app, settings)
    if settings.log_retention_days is not None and settings.kafka_bootstrap_servers:
        log.warning("log_retention_days applies to the embedded log only: on Kafka, the topic's retention does")
    for install in installers or []:
        install(app)
    return app
