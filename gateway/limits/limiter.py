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
#: tenants kept before the ones back at their full allowance are forgotten (they start full again)
SWEEP_AT = 50_000


class _Tenant:
    __slots__ = ("filled_at", "limit", "tat", "tokens")

    def __init__(self, limit: RateLimit, now: float) -> None:
        self.limit = limit
        #: requests: when the bucket is empty again (the GCRA's theoretical arrival time)
        self.tat = now
        #: tokens: what the bucket held at ``filled_at`` (below zero: owed)
        self.tokens = float(limit.tokens_per_minute or 0)
        self.filled_at = now

    def refill(self, now: float) -> float:
        """The tokens the bucket holds now."""
        capacity = self.limit.tokens_per_minute
        assert capacity is not None
        if now > self.filled_at:
            self.tokens = min(float(capacity), self.tokens + (now - self.filled_at) * capacity / MINUTE)
            self.filled_at = now
        return self.tokens

    def full(self, now: float) -> bool:
        requests_back = self.tat <= now
        tokens_back = self.limit.tokens_per_minute is None or self.refill(now) >= self.limit.tokens_per_minute
        return requests_back and tokens_back


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
    def __init__(self, config: RateLimitSettings, clock: Callable[[], float] = time.monotonic) -> None:
        self.config = config
        self._clock = clock
        self._tenants: dict[str, _Tenant] = {}
        self.refusals = WindowedLog(log, _refusals_counted, key_fields=_key_fields)

    def _state(self, tenant: str, now: float) -> _Tenant | None:
        state = self._tenants.get(tenant)
        if state is not None:
            return state
        limit = self.config.for_tenant(tenant)
        if limit is None:
            return None
        if len(self._tenants) >= SWEEP_AT:
            self._sweep(now)
        state = self._tenants[tenant] = _Tenant(limit, now)
        return state

    def _sweep(self, now: float) -> None:
        for tenant in [t for t, state in self._tenants.items() if state.full(now)]:
            del self._tenants[tenant]

    def admit(self, tenant: str) -> dict[str, str] | None:
        """Count one call of ``tenant``, and the rate-limit headers of its answer (None: it has no
        limit); :class:`TenantRateLimited` when it must wait (not counted)."""
        now = self._clock()
        state = self._state(tenant, now)
        if state is None:
            return None
        limit = state.limit
        headers: dict[str, str] = {}
        if (capacity := limit.tokens_per_minute) is not None:
            tokens = state.refill(now)
            if tokens < 1:
                wait = (1 - tokens) * MINUTE / capacity  # until the bucket holds a token again
                self._refused(tenant, "tokens", capacity, wait)
            headers["x-ratelimit-limit-tokens"] = str(capacity)
            headers["x-ratelimit-remaining-tokens"] = str(max(0, math.floor(tokens)))
            headers["x-ratelimit-reset-tokens"] = reset_text((capacity - tokens) * MINUTE / capacity)
        if (per_minute := limit.requests_per_minute) is not None:
            interval = MINUTE / per_minute
            tat = max(state.tat, now) + interval
            if tat - now > MINUTE + 1e-9:
                self._refused(tenant, "requests", per_minute, tat - MINUTE - now)
            state.tat = tat
            headers["x-ratelimit-limit-requests"] = str(per_minute)
            headers["x-ratelimit-remaining-requests"] = str(
                max(0, math.floor((MINUTE - (tat - now)) / interval + 1e-9))
            )
            headers["x-ratelimit-reset-requests"] = reset_text(tat - now)
        return headers

    def observe(self, event: UsageEvent) -> None:
        """An attempt recorded (the recorder's observer): its tokens come out of its tenant's bucket."""
        tokens = event.prompt_tokens + event.completion_tokens
        if tokens <= 0:
            return
        state = self._state(event.tenant_id, self._clock())
        if state is None or state.limit.tokens_per_minute is None:
            return
        state.refill(self._clock())
        state.tokens -= tokens

    def _refused(self, tenant: str, kind: str, limit: int, wait: float) -> None:
        self.refusals.hit(
            (tenant, kind),
            lambda since: (
                f"rate limit: tenant {log_value(tenant)} is over its {limit} {kind} a minute; "
                f"refused for {reset_text(wait)}{since}"
            ),
            {"tenantId": tenant, "limit": kind, "perMinute": limit, "retryAfterMs": wait_ms(wait)},
        )
        raise TenantRateLimited.of(tenant, kind, limit, wait)


def _key_fields(key: Hashable) -> dict[str, Any]:
    tenant, kind = cast(tuple[str, str], key)
    return {"tenantId": tenant, "limit": kind}


def _refusals_counted(key: Hashable, count: int, seconds: float) -> str:
    tenant, kind = cast(tuple[str, str], key)
    return (
        f"rate limit: tenant {log_value(str(tenant))}: {count} more calls refused ({kind}), in the "
        f"{seconds:.0f} s after the last such line"
    )
