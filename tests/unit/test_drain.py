"""A stop's drain (gateway/api/drain.py): work not worth waiting for is stopped first."""

from __future__ import annotations

import asyncio
import time

from aiohttp import web

from gateway.api.drain import IN_FLIGHT, _drain, at_stop, install_drain


async def test_a_hook_at_stop_runs_before_the_drain_waits() -> None:
    """An analytics query in flight held a stop for the whole shutdown timeout: its interrupt
    ran after the drain had waited (a diff review)."""
    app = web.Application()
    install_drain(app, 10.0)
    interrupted = asyncio.Event()
    at_stop(app, interrupted.set)
    query = asyncio.create_task(interrupted.wait())  # a query that ends once interrupted
    app[IN_FLIGHT].add(query)
    started = time.monotonic()
    await _drain(app)
    assert query.done() and time.monotonic() - started < 1


async def test_without_a_drain_a_hook_runs_at_shutdown() -> None:
    app = web.Application()
    ran: list[bool] = []
    at_stop(app, lambda: ran.append(True))
    app.freeze()
    await app.shutdown()
    assert ran == [True]
