"""Requests and tokens a minute per tenant, in this process.

Requests: a GCRA (generic cell rate algorithm), a leaky bucket kept as one time per tenant: a
tenant may make its whole minute's calls at once, then one every ``60 / requests_per_minute``
seconds; the bucket drains at that pace. A call refused is not counted.

Tokens: a bucket of ``tokens_per_minute``, refilled at that rate; every attempt's tokens (prompt
and completion, as its usage event has them) are taken out when the attempt is recorded. A call
is let through while the bucket holds a token, as the tokens of a call are known only once it is
over: a tenant's last call of a minute can take the bucket below zero, and its next calls wait
until the bucket has filled back above it (a limit enforced late, never early).

Both answer with OpenAI's rate-limit headers (``x-ratelimit-limit-requests``,
``x-ratelimit-remaining-requests``, ``x-ratelimit-reset-requests``, and the same for tokens);
a refusal is OpenAI's 429 with ``retry-after`` and ``retry-after-ms``, which the SDKs wait for
and retry on. Each process keeps its own counts (with several replicas, give each its share).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Hashable
from typing import Any, cast

from gateway.errors import TenantRateLimited
from gateway.events import UsageEvent
from gateway.limits.config import RateLimit, RateLimitSettings
from gateway.safe_text import log_value
from gateway.windowed_log import WindowedLog

log = logging.getLogger("gateway.limits")

MINUTE = 60.0
#: a minute in the clock's unit (``time.monotonic_ns``)
MINUTE_NS = 60_000_000_000
#: tenants held before the ones back at their full allowance are forgotten (they start full
#: again); the next sweep waits until twice as many are held as the last one left
SWEEP_AT = 50_000
#: the wait a refusal for calls at once gives (one of them may end at any time)
CONCURRENT_WAIT = 1.0
#: the most a tenant's token bucket owes, in minutes of its limit (a refusal waits at most a day)
MAX_DEBT_MINUTES = 1440


class _Tenant:
    """One tenant's buckets. Requests: the GCRA's theoretical arrival time, kept exactly as an
    integer in nanoseconds times ``requests_per_minute`` (each call adds a minute, in that unit),
    so no float rounds a call away after days of uptime. Tokens: what the bucket held at
    ``filled_at`` (below zero: owed)."""

    __slots__ = ("filled_at", "in_flight", "limit", "tat", "tokens")

    def __init__(self, limit: RateLimit, now: int) -> None:
        self.limit = limit
        self.tat = now * (limit.requests_per_minute or 0)
        self.tokens = float(limit.tokens_per_minute or 0)
        self.filled_at = now
        #: calls admitted and not ended (only with ``max_concurrent_requests``)
        self.in_flight = 0

    def refill(self, now: int) -> float:
        """The tokens the bucket holds now."""
        capacity = self.limit.tokens_per_minute
        assert capacity is not None
        if now > self.filled_at:
            self.tokens = min(float(capacity), self.tokens + (now - self.filled_at) * capacity / MINUTE_NS)
            self.filled_at = now
        return self.tokens

    def full(self, now: int) -> bool:
        if self.in_flight:
            return False
        requests_back = self.tat <= now * (self.limit.requests_per_minute or 0)
        tokens_back = self.limit.tokens_per_minute is None or self.refill(now) >= self.limit.tokens_per_minute
        return requests_back and tokens_back


def _tokens_left(capacity: int, tokens: float) -> dict[str, str]:
    """The headers of what a token bucket holding ``tokens`` of ``capacity`` has left."""
    return {
        "x-ratelimit-remaining-tokens": str(max(0, math.floor(tokens))),
        "x-ratelimit-reset-tokens": reset_text((capacity - tokens) * MINUTE / capacity),
    }


def reset_text(seconds: float) -> str:
    """A wait as OpenAI writes it in ``x-ratelimit-reset-*``: ``20ms``, ``1.5s``, ``6m0s``."""
    ms = wait_ms(seconds)
    if ms < 1000:
        return f"{ms}ms"
    if ms < 60_000:
        return f"{ms / 1000:g}s"
    minutes, rest = divmod(math.ceil(ms / 1000), 60)
    return f"{minutes}m{rest}s"


def wait_ms(seconds: float) -> int:
    """Whole milliseconds, up: a float's last bit (0.1000000001 s) is no millisecond more."""
    return max(0, math.ceil(round(seconds * 1000, 6)))


class RateLimiter:
    def __init__(self, config: RateLimitSettings, clock: Callable[[], int] = time.monotonic_ns) -> None:
        """``clock``: nanoseconds (``time.monotonic_ns``)."""
        self.config = config
        self._clock = clock
        self._tenants: dict[str, _Tenant] = {}
        self._sweep_at = SWEEP_AT
        #: hands the recorded attempts not yet observed to :meth:`observe` (the recorder's)
        self.flush: Callable[[], None] = lambda: None
        self.refusals = WindowedLog(log, _refusals_counted, key_fields=_key_fields)

    def _state(self, tenant: str, now: int) -> _Tenant | None:
        state = self._tenants.get(tenant)
        if state is not None:
            return state
        limit = self.config.for_tenant(tenant)
        if limit is None:
            return None
        if len(self._tenants) >= self._sweep_at:
            self._sweep(now)
        state = self._tenants[tenant] = _Tenant(limit, now)
        return state

    def _sweep(self, now: int) -> None:
        """Forget the tenants back at their full allowance. Amortised: a sweep that frees little
        is not run again until the table has doubled (a sweep at every new tenant held the loop
        22 ms a call at 50,000 tenants: a review)."""
        for tenant in [t for t, state in self._tenants.items() if state.full(now)]:
            del self._tenants[tenant]
        self._sweep_at = max(SWEEP_AT, 2 * len(self._tenants))

    def admit(self, tenant: str) -> dict[str, str] | None:
        """Count one call of ``tenant``, and the rate-limit headers of its answer (None: it has no
        limit); :class:`TenantRateLimited` when it must wait (not counted)."""
        now = self._clock()
        state = self._state(tenant, now)
        if state is None:
            return None
        limit = state.limit
        headers: dict[str, str] = {}
        refused: tuple[str, int, float] | None = None
        if (at_once := limit.max_concurrent_requests) is not None and state.in_flight >= at_once:
            refused = ("concurrent requests", at_once, CONCURRENT_WAIT)
        if (capacity := limit.tokens_per_minute) is not None:
            tokens = state.refill(now)
            if refused is None and tokens < 1:  # until the bucket holds a token again
                refused = ("tokens", capacity, (1 - tokens) * MINUTE / capacity)
            headers["x-ratelimit-limit-tokens"] = str(capacity)
            headers.update(_tokens_left(capacity, tokens))
        if (per_minute := limit.requests_per_minute) is not None:
            scaled_now = now * per_minute  # the unit of ``tat``: a call adds MINUTE_NS to it
            window = MINUTE_NS * per_minute
            tat = max(state.tat, scaled_now)
            if refused is None and tat + MINUTE_NS - scaled_now > window:
                refused = ("requests", per_minute, (tat + MINUTE_NS - window - scaled_now) / window * MINUTE)
            elif refused is None:
                tat += MINUTE_NS
                state.tat = tat
            headers["x-ratelimit-limit-requests"] = str(per_minute)
            headers["x-ratelimit-remaining-requests"] = str(max(0, (window - (tat - scaled_now)) // MINUTE_NS))
            headers["x-ratelimit-reset-requests"] = reset_text((tat - scaled_now) / window * MINUTE)
        if refused is not None:
            self._refused(tenant, *refused, headers)
        if at_once is not None:
            state.in_flight += 1
        return headers

    def release(self, tenant: str) -> None:
        """A call :meth:`admit` let through has ended (answered, failed, or its stream over)."""
        state = self._tenants.get(tenant)
        if state is not None and state.limit.max_concurrent_requests is not None and state.in_flight:
            state.in_flight -= 1

    def observe(self, event: UsageEvent) -> None:
        """An attempt recorded (the recorder's observer): its tokens come out of its tenant's bucket."""
        tokens = event.prompt_tokens + event.completion_tokens
        if tokens <= 0:
            return
        now = self._clock()
        state = self._state(event.tenant_id, now)
        if state is None or state.limit.tokens_per_minute is None:
            return
        state.refill(now)
        # at most a day of the limit owed: the longest wait a refusal gives (the tokens of one
        # attempt are bounded only by what the stores hold)
        state.tokens = max(state.tokens - tokens, 1 - state.limit.tokens_per_minute * MAX_DEBT_MINUTES)

    def current(self, tenant: str, admitted: dict[str, str]) -> dict[str, str]:
        """``admitted``'s headers with the tokens left now: a non-streaming answer's own tokens
        are taken when it is answered (the headers of its admission said the bucket was full)."""
        state = self._tenants.get(tenant)
        if state is None or (capacity := state.limit.tokens_per_minute) is None:
            return admitted
        self.flush()  # the attempts' events reach the observers a loop turn later
        now = self._clock()
        return {**admitted, **_tokens_left(capacity, state.refill(now))}

    def _refused(self, tenant: str, kind: str, limit: int, wait: float, headers: dict[str, str]) -> None:
        where = (
            f"at its {limit} requests at once" if kind == "concurrent requests" else f"over its {limit} {kind} a minute"
        )
        self.refusals.hit(
            (tenant, kind),
            lambda since: f"rate limit: tenant {log_value(tenant)} is {where}; refused for {reset_text(wait)}{since}",
            {"tenantId": tenant, "limit": kind, "perMinute": limit, "retryAfterMs": wait_ms(wait)},
        )
        raise TenantRateLimited.of(tenant, kind, limit, wait, headers)


def _key_fields(key: Hashable) -> dict[str, Any]:
    tenant, kind = cast(tuple[str, str], key)
    return {"tenantId": tenant, "limit": kind}


def _refusals_counted(key: Hashable, count: int, seconds: float) -> str:
    tenant, kind = cast(tuple[str, str], key)
    return (
        f"rate limit: tenant {log_value(str(tenant))}: {count} more calls refused ({kind}), in the "
        f"{seconds:.0f} s after the last such line"
    )
