"""Retention of the embedded log in the process that projects it (``gateway/eventlog/retention.py``):
``serve``'s projector, or ``consume``'s beside ``serve --no-project``. It trims only while its
stores hold the log: not while a new store catches up with it, nor while a full rebuild is
pending or running (a replay holds the same lock), since those read the log again from its start.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from pathlib import Path

from aiohttp import web

from consumers.pipeline import Pipeline
from consumers.replay_http import REPLAY
from gateway.eventlog.factory import EMBEDDED_LOG_FILE
from gateway.eventlog.retention import retention_plugin
from gateway.ids import utcnow
from gateway.settings import Settings


def install_log_retention(
    app: web.Application, settings: Settings, pipeline: Pipeline, clock: Callable[[], datetime] = utcnow
) -> None:
    """After the pipeline's own ``cleanup_ctx`` (its start has marked a store that is behind)."""
    days = settings.log_retention_days
    if days is None or settings.kafka_bootstrap_servers:
        return
    service = app[REPLAY]

    path = Path(settings.data_dir) / EMBEDDED_LOG_FILE
    app.cleanup_ctx.append(retention_plugin(path, days, clock, steady=service.whole, lock=service.lock))
