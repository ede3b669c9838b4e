"""Wiring budgets into a gateway app: the ledger (the router's recorder feeds it the attempts,
the handlers ask it before a call), its follower of the log (the embedded log, read to its end
before the gateway takes calls; or the Kafka topic, in the background), and its snapshots in
the data dir. Without budgets configured nothing is installed."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sqlite3
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import orjson
from aiohttp import web
from prometheus_client import Gauge

from gateway.api.state import STATE
from gateway.budgets import snapshot as snapshots
from gateway.budgets.ledger import SpendLedger
from gateway.ids import Clock
from gateway.metrics import METRICS, GatewayMetrics
from gateway.settings import Settings

if TYPE_CHECKING:
    from gateway.budgets.kafka_sync import KafkaBudgetSync

log = logging.getLogger("gateway.budgets")

#: how often a changed snapshot is written (seconds)
SNAPSHOT_EVERY = 5.0


def install_budgets(app: web.Application, settings: Settings, clock: Clock) -> None:
    """Plug the budgets of ``settings`` into a built, not yet started gateway app."""
    if not settings.budgets.enabled:
        return
    state = app[STATE]
    ledger = SpendLedger(settings.budgets, clock=clock)
    state.budgets = ledger
    state.router.recorder.observers.append(ledger.observe)
    if settings.metrics_auth or not settings.api_keys:
        watch_budgets(app[METRICS], ledger)
    else:  # the metrics would show every tenant's spend to any caller: /v1/budgets shows a key its own
        log.info("budgets: no budget metrics while GET /metrics is open (LLM_GATEWAY_METRICS_AUTH=true gives them)")
    path = settings.data_dir / snapshots.FILE

    async def follow(app: web.Application) -> AsyncIterator[None]:
        from gateway.eventlog.sqlite import SqliteEventLog

        if settings.kafka_bootstrap_servers:
            from gateway.budgets.kafka_sync import KafkaBudgetSync

            topic = settings.topic
            snapshot = await asyncio.to_thread(snapshots.load, path, settings.budgets, f"kafka:{topic}")
            sync = KafkaBudgetSync(
                ledger,
                settings.kafka,
                topic,
                snapshot,
                partitions=settings.topic_partitions,
                client_id="llm-gateway-budgets" + (f"-{settings.instance_id}" if settings.instance_id else ""),
            )
            await sync.start()
            tasks = [
                asyncio.create_task(_complete_when_read(sync, ledger)),
                asyncio.create_task(_save_every(path, sync, ledger, settings)),
            ]
            try:
                yield
            finally:
                await _cancel(tasks)
                await sync.close()
                _save_final(path, sync, ledger, settings)
            return
        if not isinstance(state.event_log, SqliteEventLog):  # an in-memory log (tests): no log to read
            ledger.follows_log = False
            ledger.complete = True
            yield
            return
        from gateway.budgets.follow import LOG_NAME, SqliteBudgetFollower

        snapshot = await asyncio.to_thread(snapshots.load, path, settings.budgets, LOG_NAME)
        follower = SqliteBudgetFollower(state.event_log.path, ledger)
        await follower.catch_up(snapshot)
        tasks = [
            asyncio.create_task(follower.run()),
            asyncio.create_task(_save_every(path, follower, ledger, settings)),
        ]
        try:
            yield
        finally:
            await _cancel(tasks)
            try:
                await follower.drain()
            except sqlite3.Error as exc:
                log.warning("budgets: cannot read the embedded log at the stop (%s)", exc)
            await follower.close()
            _save_final(path, follower, ledger, settings)

    app.cleanup_ctx.append(follow)

    async def flush_refusals(_app: web.Application) -> None:
        ledger.refusals.flush()

    app.on_cleanup.append(flush_refusals)


def watch_budgets(metrics: GatewayMetrics, ledger: SpendLedger) -> None:
    """Report each budget's limit and spend of its period at every scrape (a tenant's, for each
    tenant given one by name or with a spend this period, and each metadata budget), and whether
    the spend is complete: series a gateway without budgets does not have. The series are made
    again at each scrape: a tenant under ``default`` whose period passed without a call has
    none (each tenant that ever spent would be a series for good)."""
    labels = ["tenant", "metadata", "period"]
    limit = Gauge(
        "llm_gateway_budget_limit_usd",
        "Each budget's limit in USD (tenant: empty for a budget of every tenant's calls; metadata: the pairs "
        "of the calls it covers, empty for a tenant's budget)",
        labels,
        registry=metrics.registry,
    )
    spent = Gauge(
        "llm_gateway_budget_spent_usd",
        "What each budget's calls spent of its current period, in USD (approximate float; exact in /v1/budgets)",
        labels,
        registry=metrics.registry,
    )
    complete = Gauge(
        "llm_gateway_budgets_complete",
        "1 once the budgets counted the log's events of their periods, 0 while a starting replica reads them "
        "(the spend may be short)",
        registry=metrics.registry,
    )

    named = ledger.config.tenants

    def refresh() -> None:
        limit.clear()
        spent.clear()
        for standing in [*map(ledger.standing, ledger.tenants()), *ledger.scoped_standings(None)]:
            if standing is None or (not standing.spent and standing.tenant not in named and not standing.metadata):
                continue
            # the pairs as JSON: "a=1,b=2" was also {"a": "1,b=2"} and {"a=1,b": "2"} (a review)
            pairs = orjson.dumps(dict(sorted(standing.metadata.items()))).decode() if standing.metadata else ""
            series = (standing.tenant or "", pairs, standing.budget.period)
            limit.labels(*series).set(float(standing.budget.usd))
            spent.labels(*series).set(float(standing.spent))
        complete.set(1 if ledger.complete else 0)

    metrics.on_scrape(refresh)


async def _cancel(tasks: list[asyncio.Task[None]]) -> None:
    for task in tasks:
        task.cancel()
    for task in tasks:
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def _complete_when_read(sync: KafkaBudgetSync, ledger: SpendLedger) -> None:
    began = time.perf_counter()
    await sync.caught_up.wait()
    ledger.complete = True
    log.info("budgets: read %d records of %s in %.1f s", sync.received, sync.topic, time.perf_counter() - began)


class Follower(Protocol):
    def moved(self) -> object: ...

    def snapshot(self) -> snapshots.Snapshot: ...


async def _save_every(path: Path, follower: Follower, ledger: SpendLedger, settings: Settings) -> None:
    """Write the snapshot every :data:`SNAPSHOT_EVERY` seconds while the follower reads on (once
    the start's read is over: one taken before would make the next start read the whole period
    again). Unmoved, nothing is taken: with the broker down, the pending attempts made each
    snapshot cost 85 ms of the event loop (a review)."""
    last = None
    while True:
        await asyncio.sleep(SNAPSHOT_EVERY)
        moved = follower.moved()
        if not ledger.complete or moved == last:
            continue
        try:
            await asyncio.to_thread(snapshots.save, path, follower.snapshot(), settings.budgets)
            last = moved
        except OSError as exc:  # a full disk: the next start reads more of the log, nothing is lost
            log.warning("budgets: cannot write the snapshot %s (%s)", path, exc)


def _save_final(path: Path, follower: Follower, ledger: SpendLedger, settings: Settings) -> None:
    """The stop's snapshot: written after any periodic one still writing (``snapshot.save``
    writes one at a time), so it is the one left."""
    if not ledger.complete:
        return
    try:
        snapshots.save(path, follower.snapshot(), settings.budgets)
    except OSError as exc:
        log.warning("budgets: cannot write the snapshot %s (%s)", path, exc)
