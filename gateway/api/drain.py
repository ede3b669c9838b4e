"""A stop's grace for the requests in flight: ``LLM_GATEWAY_SHUTDOWN_TIMEOUT`` seconds, once.

aiohttp's runner spends its ``shutdown_timeout`` twice: it waits that long for a handler, then
(handler cancellation being off) marks the request cancelled and waits that long again, and only
then cancels the handler; each wait rounded up to a whole second. A stop with the default 25 s
took 52 s, past Kubernetes' 30 s grace, whose SIGKILL lost every event of the calls in flight
(a review: 0 of 10 recorded).

So the app drains its own requests when it shuts down (``on_shutdown``, after the listening
socket has closed): the error middleware, every request's outermost handler here, keeps the
tasks serving requests; the drain waits for them up to the timeout, then cancels those still
running (a call records its attempt ``cancelled``, with its cost line) and waits for them to
end. The runner's own timeout, :data:`RUNNER_BACKSTOP`, only bounds what is left after that.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

from aiohttp import web

log = logging.getLogger(__name__)

#: the tasks serving a request now (one per connection with a request in progress)
IN_FLIGHT = web.AppKey("requests_in_flight", set)
_TIMEOUT = web.AppKey("drain_timeout", float)
#: how long the cancelled requests get to record their events and end
CANCELLED_GRACE = 5.0
#: the runner's ``shutdown_timeout``: after the drain, nothing should be left to wait for
RUNNER_BACKSTOP = 1.0


_AT_ONCE = web.AppKey("drain_at_once", list)
#: how many requests the stop cancelled after the timeout (the stop's last line says so)
CANCELLED = web.AppKey("drain_cancelled", int)
#: the tasks the stop cancelled: their calls answer "the gateway is stopping" (``stopped``)
_STOPPED = web.AppKey("drain_stopped", set)


def install_drain(app: web.Application, timeout: float) -> None:
    """Track ``app``'s requests (``IN_FLIGHT``, kept by the error middleware) and drain them
    within ``timeout`` seconds when it shuts down."""
    app[IN_FLIGHT] = set()
    app[_TIMEOUT] = timeout
    app[_AT_ONCE] = []
    app[CANCELLED] = 0
    app[_STOPPED] = set()
    app.on_shutdown.append(_drain)


def stopped(app: web.Application) -> bool:
    """Whether the current task was cancelled by the stop's drain (not by its client or a bug)."""
    return asyncio.current_task() in app.get(_STOPPED, ())


def at_stop(app: web.Application, hook: Callable[[], None]) -> None:
    """Run ``hook`` as soon as a stop begins, before the drain waits: work not worth waiting for
    (an analytics query, interrupted so: it held a stop for the whole timeout, a diff review)."""
    if _AT_ONCE in app:
        app[_AT_ONCE].append(hook)
        return

    async def run(app: web.Application) -> None:
        hook()

    app.on_shutdown.append(run)


async def _drain(app: web.Application) -> None:
    for hook in app[_AT_ONCE]:
        hook()
    tasks: set[asyncio.Task[Any]] = app[IN_FLIGHT]
    if not tasks:
        return
    timeout = app[_TIMEOUT]
    log.info("stopping: %d request(s) in flight, waiting up to %s s for them", len(tasks), timeout)
    _, running = await asyncio.wait(set(tasks), timeout=timeout)
    if not running:
        return
    log.warning("stopping: cancelling %d request(s) still running after %s s", len(running), timeout)
    app[CANCELLED] = len(running)
    app[_STOPPED].update(running)
    for task in running:
        task.cancel()
    _, stuck = await asyncio.wait(running, timeout=CANCELLED_GRACE)
    if stuck:
        log.error("stopping: %d request(s) did not end %s s after their cancellation", len(stuck), CANCELLED_GRACE)
