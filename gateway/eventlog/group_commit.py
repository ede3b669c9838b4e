"""Group commit: the events staged within one loop turn reach the durable log in one transaction.

Every answer of the gateway waits until the events of its attempts are on the durable log. One
SQLite commit per event costs a WAL frame write and six lock calls, and the cache misses it
leaves behind cost the rest of the request path as much again (``tests/bench/request_path.py``).
Under concurrency, several calls finish in the same loop turn: staged here, their events are
written together by one callback at the start of the next turn, and each call waits for that
(``settled``) before it answers.

A call that cannot be joined by any other (``settled(callers)`` with as many staged events as
calls in flight, e.g. the only call at concurrency 1) writes at once: no extra loop turn.
Without a running event loop, ``stage`` writes at once.

Durability is unchanged for every answer: no client sees a response before its events are on
the log. An event is staged for at most one loop turn; ``flush`` writes it earlier (``close``).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from gateway.events import UsageEvent

log = logging.getLogger(__name__)

#: writes a batch of events durably; logs (never raises) what it could not store
Write = Callable[[list[UsageEvent]], None]


class GroupCommit:
    def __init__(self, write: Write) -> None:
        self._write = write
        self._staged: list[UsageEvent] | None = None
        self._waiters: list[asyncio.Future[None]] = []

    def stage(self, event: UsageEvent) -> None:
        """Accept ``event``; it is written at the start of the next loop turn at the latest.
        Call it from the event loop's thread (the request path); other threads ``publish``."""
        if self._staged is not None:
            self._staged.append(event)
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # a synchronous caller: nothing to group with
            self._write([event])
            return
        self._staged = [event]
        loop.call_soon(self.flush)

    def staged(self) -> int:
        return len(self._staged) if self._staged is not None else 0

    def flush(self) -> None:
        """Write what is staged now and release every caller waiting for it."""
        staged, waiters = self._staged, self._waiters
        if staged is None:
            return
        self._staged, self._waiters = None, []
        try:
            self._write(staged)
        except Exception:  # the writer logs its own failures; this is a bug in it
            log.exception("group commit of %d usage events failed", len(staged))
        finally:
            for waiter in waiters:
                if not waiter.done():
                    waiter.set_result(None)

    async def settled(self, callers: int = 1) -> None:
        """Return once every event staged so far is written. ``callers``: how many calls are in
        flight (this one included); when that many events are staged already, no other call
        can join this commit, so it is written now."""
        if self._staged is None:
            return
        if len(self._staged) >= callers:
            self.flush()
            return
        waiter = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        await waiter
