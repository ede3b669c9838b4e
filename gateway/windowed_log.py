"""A WARNING that cannot flood: for each key, a full line at most once a window (a minute), the
others of the window counted in a line at its end (and at a stop), then a full line again for
the next one. What an outage at hundreds of requests a second, or a client trying keys, writes:
two lines a minute per kind, with the numbers."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Hashable
from typing import Any

from gateway.json_log import FIELDS

#: keys held before the ones of windows over are forgotten
PRUNE_AT = 1000


class WindowedLog:
    def __init__(
        self,
        logger: logging.Logger,
        counted: Callable[[Hashable, int, float], str],
        *,
        key_fields: Callable[[Hashable], dict[str, Any]] | None = None,
        every: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """``counted(key, count, seconds)``: the text of a window's count line; ``key_fields(key)``:
        its fields in JSON logs (with ``count``)."""
        self.every = every
        self._log = logger
        self._counted = counted
        self._key_fields = key_fields
        self._prune_at = PRUNE_AT
        self._clock = clock
        #: key -> when its window began (its last full line), and how many came since
        self._last: dict[Hashable, tuple[float, int]] = {}
        #: key -> the timer of the line that writes its window's count
        self._timers: dict[Hashable, asyncio.TimerHandle] = {}

    def hit(self, key: Hashable, full: Callable[[str], str], fields: dict[str, Any] | None = None) -> None:
        """One more of ``key``: its full line, ``full(since)``, when its window is over (``since``:
        " (N more since the last such line)" or ""), else counted. ``fields``: the full line's
        in JSON logs (with ``more``, the count ``since`` gives)."""
        now = self._clock()
        last = self._last.get(key)
        if last is not None and now - last[0] < self.every:
            self._last[key] = (last[0], last[1] + 1)
            if not last[1]:  # the first one counted: its line comes at the end of the window
                self._count_in(key, last[0] + self.every - now)
            return
        self._cancel(key)
        if last is None and len(self._last) >= self._prune_at:
            self._prune(now)
        self._last[key] = (now, 0)
        more = last[1] if last is not None else 0
        since = f" ({more} more since the last such line)" if more else ""
        extra = {**(fields or {}), "more": more} if fields is not None or more else None
        self._log.warning("%s", full(since), extra={FIELDS: extra} if extra is not None else None)

    def _prune(self, now: float) -> None:
        """Forget the keys whose window is over with nothing counted (a key per tenant refused,
        made-up tenants included, was kept for good: a review). Amortised: not again until the
        table has doubled."""
        for key in [k for k, (began, count) in self._last.items() if not count and now - began >= self.every]:
            del self._last[key]
        self._prune_at = max(PRUNE_AT, 2 * len(self._last))

    def flush(self) -> None:
        """Write every count not written yet (at a stop)."""
        for key in list(self._last):
            self._cancel(key)
            self._count(key)

    def _count_in(self, key: Hashable, delay: float) -> None:
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # no loop (a synchronous caller): the next full line carries the count
            return
        self._timers[key] = loop.call_later(max(delay, 0.0), self._count, key)

    def _cancel(self, key: Hashable) -> None:
        timer = self._timers.pop(key, None)
        if timer is not None:
            timer.cancel()

    def _count(self, key: Hashable) -> None:
        """The line of the ones counted in ``key``'s window, if any. The window goes on: the next
        one after its end writes a full line (a status that changed shows: a diff review)."""
        self._timers.pop(key, None)
        last = self._last.get(key)
        if last is None or not last[1]:
            return
        self._last[key] = (last[0], 0)
        fields = {**(self._key_fields(key) if self._key_fields is not None else {}), "count": last[1]}
        self._log.warning("%s", self._counted(key, last[1], self._clock() - last[0]), extra={FIELDS: fields})
