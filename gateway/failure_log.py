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

import logging
import time
from collections.abc import Callable, Hashable
from typing import Any, cast

from gateway.events import UsageEvent
from gateway.safe_text import log_value
from gateway.windowed_log import WindowedLog

log = logging.getLogger("gateway.providers")

#: the outcomes that are not a provider failing
QUIET = frozenset({"success", "cancelled", "client_error", "content_filtered"})
#: the longest upstream message a line quotes
MESSAGE_CHARS = 200
#: failures whose message may quote the model's answer
_ANSWER_IN_MESSAGE = frozenset({"malformed_response", "stream_cut"})


class FailureLog:
    def __init__(self, every: float = 60.0, clock: Callable[[], float] = time.monotonic) -> None:
        #: one window per (provider, outcome)
        self.windows = WindowedLog(log, _counted, key_fields=_key_fields, every=every, clock=clock)

    def __call__(self, event: UsageEvent) -> None:
        if event.outcome in QUIET:
            return
        fields = {
            "provider": event.provider,
            "outcome": event.outcome,
            "httpStatus": event.http_status,
            "errorCode": event.error_code,
            "model": event.provider_model[:MESSAGE_CHARS],
            "requestId": event.request_id,
        }
        self.windows.hit((event.provider, event.outcome), lambda since: _full(event, since), fields)

    def flush(self) -> None:
        """Write every count not written yet (at a stop)."""
        self.windows.flush()


def _full(event: UsageEvent, since: str) -> str:
    status = f"HTTP {event.http_status}" if event.http_status is not None else "no HTTP answer"
    code = f" {log_value(event.error_code)}" if event.error_code else ""
    message = "" if event.outcome in _ANSWER_IN_MESSAGE else (event.error_message or "")[:MESSAGE_CHARS]
    model = log_value(event.provider_model[:MESSAGE_CHARS])
    quoted = log_value(message) if message else "-"
    return (
        f"{event.provider} attempt failed: {event.outcome} ({status}{code}) model={model} "
        f"request={event.request_id}: {quoted}{since}"
    )


def _key_fields(key: Hashable) -> dict[str, Any]:
    provider, outcome = cast(tuple[str, str], key)
    return {"provider": provider, "outcome": outcome}


def _counted(key: Hashable, count: int, seconds: float) -> str:
    provider, outcome = cast(tuple[str, str], key)
    attempts = "attempt" if count == 1 else "attempts"
    return f"{provider}: {count} more {attempts} failed: {outcome}, in the {seconds:.0f} s after the last such line"
