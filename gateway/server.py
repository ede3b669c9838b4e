"""What ``llm-gateway serve`` adds around the gateway app.

With the embedded event log (no Kafka configured) the gateway runs the projector in the same
process: events go from the SQLite log into DuckDB (and Postgres when ``DATABASE_URL`` is set)
within a fraction of a second, and ``GET /v1/costs`` reads them. With Kafka, projection is the
job of ``llm-gateway consume`` processes. ``Settings.project`` (``LLM_GATEWAY_PROJECT``,
``serve --no-project``) overrides either default.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator

from aiohttp import web

from gateway.app import Installer
from gateway.settings import Settings


def server_installers(settings: Settings) -> list[Installer]:
    """What ``serve`` adds to the gateway app: the in-process projector (with the analytics and
    replay endpoints over its DuckDB) when ``settings.project`` says so; by default (None) only
    on the embedded log."""
    project = settings.project
    if project is None:
        project = not settings.kafka_bootstrap_servers
    if not project:
        if settings.log_retention_days is not None and not settings.kafka_bootstrap_servers:
            logging.getLogger("gateway.eventlog").info(
                "log retention: the process that projects the log trims it (llm-gateway consume on this data "
                "dir); nothing is trimmed while none runs"
            )
        return []
    return [embedded_projector(settings)]


def embedded_projector(settings: Settings) -> Installer:
    def install(app: web.Application) -> None:
        from analytics.http import install_analytics
        from consumers.pipeline import DEFAULT_GROUP, build_pipeline, export_path
        from consumers.replay_http import install_replay
        from gateway.api.meta import HEALTH_PARTS
        from gateway.api.state import STATE
        from gateway.metrics import METRICS, watch_projector

        pipeline = build_pipeline(settings)
        install_analytics(app, pipeline.store, app[STATE].auth, export_dir=export_path(settings))
        install_replay(
            app, settings, pipeline.store, app[STATE].auth, live_group=DEFAULT_GROUP, stats=pipeline.projector.stats
        )
        watch_projector(app[METRICS], pipeline, DEFAULT_GROUP)
        app.setdefault(HEALTH_PARTS, {})["projector"] = pipeline.projector.stats.health

        async def run(app: web.Application) -> AsyncIterator[None]:
            async with pipeline.running():
                yield

        app.cleanup_ctx.append(run)
        from consumers.log_retention import install_log_retention

        install_log_retention(app, settings, pipeline, app[STATE].clock)

    return install
