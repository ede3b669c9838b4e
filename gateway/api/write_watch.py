"""A client that stops taking a stream: its connection is aborted once one write has waited
``limit`` seconds.

The gateway reads the upstream only as fast as the client takes the stream, so a client that
stops reading (and keeps its connection open) held the handler, the upstream stream and one of
the upstream host's pooled connections for as long as it liked: a review's three stalled readers
held theirs for 105 s and counting, past the upstream's own idle timeout, and a stop (SIGTERM)
waited for them (122 s), longer than an orchestrator's grace period before its SIGKILL, which
loses the event. Aborted, the pending write raises ``ConnectionError``: the stream is recorded
``cancelled`` and its upstream closed, as when the client leaves.

One timer per stream, re-armed every ``limit`` seconds while the stream lives (streams last
seconds, so most never see it fire); a write costs two attribute stores and a clock read.
"""

from __future__ import annotations

import asyncio
import logging

log = logging.getLogger(__name__)


class WriteWatch:
    __slots__ = ("_handle", "_limit", "_loop", "_request_id", "_transport", "since")

    def __init__(self, transport: asyncio.Transport | None, limit: float, request_id: str) -> None:
        self._loop = asyncio.get_running_loop()
        self._transport = transport
        self._limit = limit
        self._request_id = request_id
        #: when the write in progress began (``loop.time()``); None between writes
        self.since: float | None = None
        self._handle = self._loop.call_later(limit, self._check)

    def begin(self) -> None:
        self.since = self._loop.time()

    def end(self) -> None:
        self.since = None

    def close(self) -> None:
        self._handle.cancel()

    def _check(self) -> None:
        since = self.since
        waited = 0.0 if since is None else self._loop.time() - since
        if waited >= self._limit:
            log.info("request %s: the client took nothing for %.0f s: closing its stream", self._request_id, waited)
            if self._transport is not None:
                self._transport.abort()
            return
        self._handle = self._loop.call_later(self._limit - waited, self._check)
