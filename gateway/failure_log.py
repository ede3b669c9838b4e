"""A WARNING for provider attempts that failed: what an operator reads to see an expired key or
a vendor's outage, from the usage events (a ``UsageRecorder`` observer).

A review found every upstream failure silent but for its call's cost line (``provider=none``)
and, after five, a circuit opening: a primary provider's expired key (401) showed up only as
a circuit flapping. Each (provider, outcome) logs at most once per ``every`` seconds, saying how
many more failed alike since its last line, so an outage at hundreds of requests a second is a
line a minute per kind, not a flood; those in between are counted in a line at the end of the
minute (and at a stop: a re-test saw an outage's 59 seconds as one line once the circuits had
opened and no failure came to carry the count). Not logged: successes, calls the client ended,
and the vendor's refusals of the request itself (``client_error``, ``content_filtered``: the
client's answer carries them). An unreadable 200 answer's message is not quoted: it holds the
start of the model's answer (what the upstream wrote, maybe the prompt).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

from gateway.events import UsageEvent
from gateway.safe_text import log_value

log = logging.getLogger("gateway.providers")

#: the outcomes that are not a provider failing
QUIET = frozenset({"success", "cancelled", "client_error", "content_filtered"})
#: the longest upstream message a line quotes
MESSAGE_CHARS = 200
#: failures whose message may quote the model's answer
_ANSWER_IN_MESSAGE = frozenset({"malformed_response", "stream_cut"})


class FailureLog:
    def __init__(self, every: float = 60.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.every = every
        self._clock = clock
        #: (provider, outcome) -> when its window began (its last full line), and how many failed
        #: alike since
        self._last: dict[tuple[str, str], tuple[float, int]] = {}
        #: (provider, outcome) -> the timer of the line that writes its window's count
        self._timers: dict[tuple[str, str], asyncio.TimerHandle] = {}

    def __call__(self, event: UsageEvent) -> None:
        if event.outcome in QUIET:
            return
        key = (event.provider, event.outcome)
        now = self._clock()
        last = self._last.get(key)
        if last is not None and now - last[0] < self.every:
            self._last[key] = (last[0], last[1] + 1)
            if not last[1]:  # the first one counted: its line comes at the end of the window
                self._summary_in(key, last[0] + self.every - now)
            return
        # a new window, with a full line (a status or message that changed shows: a diff review)
        self._cancel(key)
        self._last[key] = (now, 0)
        since = f" ({_attempts(last[1])} since the last such line)" if last is not None and last[1] else ""
        status = f"HTTP {event.http_status}" if event.http_status is not None else "no HTTP answer"
        code = f" {log_value(event.error_code)}" if event.error_code else ""
        message = "" if event.outcome in _ANSWER_IN_MESSAGE else (event.error_message or "")[:MESSAGE_CHARS]
        log.warning(
            "%s attempt failed: %s (%s%s) model=%s request=%s: %s%s",
            event.provider,
            event.outcome,
            status,
            code,
            log_value(event.provider_model[:MESSAGE_CHARS]),
            event.request_id,
            log_value(message) if message else "-",
            since,
        )

    def _summary_in(self, key: tuple[str, str], delay: float) -> None:
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # no loop (a synchronous caller): the next line carries the count
            return
        self._timers[key] = loop.call_later(max(delay, 0.0), self._summary, key)

    def _cancel(self, key: tuple[str, str]) -> None:
        timer = self._timers.pop(key, None)
        if timer is not None:
            timer.cancel()

    def _summary(self, key: tuple[str, str]) -> None:
        """The line of the failures counted in ``key``'s window, if any. The window goes on: the
        next failure after its end writes a full line."""
        self._timers.pop(key, None)
        last = self._last.get(key)
        if last is None or not last[1]:
            return
        self._last[key] = (last[0], 0)
        log.warning(
            "%s: %s failed: %s, in the %.0f s after the last such line",
            key[0],
            _attempts(last[1]),
            key[1],
            self._clock() - last[0],
        )

    def flush(self) -> None:
        """Write every count not written yet (at a stop)."""
        for key in list(self._last):
            self._cancel(key)
            self._summary(key)


def _attempts(count: int) -> str:
    return f"{count} more attempt" if count == 1 else f"{count} more attempts"
