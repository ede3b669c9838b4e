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


def test_a_call_a_stop_cut_off_says_whether_to_retry_it() -> None:
    """After an attempt its provider may bill, not retried (on another replica it would be billed
    again); without one, retried a second later (its client's SDK retries a 503)."""
    from decimal import Decimal

    from gateway.api.calls import stopping_error
    from gateway.usage import CancelledCall

    billed = stopping_error(CancelledCall(cost=None, attempts=2, billed=True))
    assert (billed.status, billed.code, billed.client_should_retry) == (503, "gateway_stopping", False)
    assert (billed.call_cost, billed.call_attempts, billed.headers) == (None, 2, None)
    free = stopping_error(CancelledCall(cost=Decimal(0), attempts=1, billed=False))
    assert free.client_should_retry is None and free.headers == {"retry-after": "1"}
    assert (free.call_cost, free.call_attempts) == (Decimal(0), 1) and "retry it" in free.message
