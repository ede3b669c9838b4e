"""Wiring budgets into a gateway app: the ledger (the router's recorder feeds it, the handlers
ask it before a call), the read of the current periods at the start, and with Kafka the sync
of every replica's events. Without budgets configured nothing is installed."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

from aiohttp import web

from gateway.api.state import STATE
from gateway.budgets.ledger import SpendLedger
from gateway.ids import Clock
from gateway.settings import Settings

if TYPE_CHECKING:
    from gateway.eventlog.kafka_follow import TopicFollower

log = logging.getLogger("gateway.budgets")


def install_budgets(app: web.Application, settings: Settings, clock: Clock) -> None:
    """Plug the budgets of ``settings`` into a built, not yet started gateway app."""
    if not settings.budgets.enabled:
        return
    state = app[STATE]
    shared = bool(settings.kafka_bootstrap_servers)
    ledger = SpendLedger(settings.budgets, clock=clock, shared_stream=shared)
    state.budgets = ledger
    state.router.recorder.observers.append(ledger.observe)

    async def follow(app: web.Application) -> AsyncIterator[None]:
        if not shared:
            from gateway.budgets.seed import seed_from_log
            from gateway.eventlog.sqlite import SqliteEventLog

            if isinstance(state.event_log, SqliteEventLog):
                await seed_from_log(state.event_log.path, ledger)
            yield
            return
        from gateway.budgets.kafka_sync import KafkaBudgetSync

        sync = KafkaBudgetSync(
            ledger,
            settings.kafka_bootstrap_servers or "",
            settings.topic,
            partitions=settings.topic_partitions,
            client_id="llm-gateway-budgets" + (f"-{settings.instance_id}" if settings.instance_id else ""),
        )
        await sync.start()
        watch = asyncio.create_task(_complete_when_read(sync, ledger))
        try:
            yield
        finally:
            watch.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watch
            await sync.close()

    app.cleanup_ctx.append(follow)

    async def flush_refusals(_app: web.Application) -> None:
        ledger.refusals.flush()

    app.on_cleanup.append(flush_refusals)


async def _complete_when_read(sync: TopicFollower, ledger: SpendLedger) -> None:
    began = time.perf_counter()
    await sync.caught_up.wait()
    ledger.complete = True
    log.info(
        "budgets: read the current periods' %d records of %s in %.1f s",
        sync.received,
        sync.topic,
        time.perf_counter() - began,
    )
