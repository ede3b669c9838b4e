"""Wiring provider health into a gateway app: the view, the router gate, the recorder observer,
the ``GET /v1/providers/health`` route and (with Kafka) the replica sync.

``create_app`` does::

    install_health(app, health_plugin(settings, clock=clock))

after the app, its ``STATE`` and its routes exist (before the app starts). ``install_health``
makes the view the router's ``circuits``, appends the observer to ``recorder.observers``, stores the view under
:data:`HEALTH`, adds the route and appends the sync's ``cleanup_ctx``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

from aiohttp import web

from gateway.events import UsageEvent
from gateway.health.config import HealthSettings
from gateway.health.view import HealthView
from gateway.ids import Clock, utcnow
from gateway.settings import Settings

HEALTH: web.AppKey[HealthView] = web.AppKey("provider_health", HealthView)

#: a ``cleanup_ctx`` generator
AppPlugin = Callable[[web.Application], AsyncIterator[None]]


@dataclass(frozen=True, slots=True)
class HealthWiring:
    #: also the router's ``circuits``
    view: HealthView
    #: for ``UsageRecorder.observers``
    observer: Callable[[UsageEvent], None]
    #: for ``app.cleanup_ctx``: follows the usage topic when Kafka is configured, else a no-op
    plugin: AppPlugin


def health_plugin(settings: Settings, *, clock: Clock = utcnow, config: HealthSettings | None = None) -> HealthWiring:
    """The health components of one gateway process. ``config`` defaults to ``settings.health``;
    ``clock`` must be the clock the ``UsageRecorder`` stamps events with."""
    config = config if config is not None else settings.health
    view = HealthView(config, clock=clock, steady=True)

    async def follow_replicas(app: web.Application) -> AsyncIterator[None]:
        if not (settings.kafka_bootstrap_servers and config.kafka_sync):
            # embedded mode: one process, the in-process view is the whole view; a restart
            # remembers the window's attempts from the log
            from gateway.api.state import STATE
            from gateway.eventlog.sqlite import SqliteEventLog
            from gateway.health.recall import recall

            event_log = app[STATE].event_log
            if isinstance(event_log, SqliteEventLog):
                await recall(view, event_log.path)
            yield
            return
        from gateway.health.kafka_sync import KafkaHealthSync

        sync = KafkaHealthSync(
            view,
            settings.kafka,
            settings.topic,
            partitions=settings.topic_partitions,
            client_id="llm-gateway-health" + (f"-{settings.instance_id}" if settings.instance_id else ""),
        )
        await sync.start()
        try:
            yield
        finally:
            await sync.close()

    return HealthWiring(view, view.observe, follow_replicas)


def install_health(app: web.Application, wiring: HealthWiring) -> None:
    """Plug ``wiring`` into a built, not yet started gateway app."""
    from gateway.api.health import provider_health
    from gateway.api.state import STATE
    from gateway.metrics import METRICS, watch_health

    state = app[STATE]
    state.router.circuits = wiring.view
    state.router.recorder.observers.append(wiring.observer)
    app[HEALTH] = wiring.view
    if METRICS in app:
        router = state.router  # its providers are made at start-up: read at each scrape
        watch_health(app[METRICS], wiring.view, lambda: [name for name in router.priority if name in router.providers])
    app.router.add_get("/v1/providers/health", provider_health)
    app.cleanup_ctx.append(wiring.plugin)
