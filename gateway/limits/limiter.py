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

A limit of metadata pairs (``rate_limits.metadata``: a team's) is a bucket of its own, shared by
the calls it covers: a call is counted in its tenant's and in each such bucket it falls under,
and only when all of them let it through (a refusal counts in none). The answer's headers are
its tenant's limit's, or the first metadata limit's when the tenant has none.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Hashable, Sequence
from typing import Any, cast

from gateway.errors import TenantRateLimited
from gateway.events import UsageEvent
from gateway.limits.config import MetadataRateLimit, RateLimit, RateLimitSettings
from gateway.metadata_scopes import Account, Scope, ScopeIndex, account_fields, account_name
from gateway.windowed_log import WindowedLog

log = logging.getLogger("gateway.limits")

MINUTE = 60.0
#: a minute in the clock's unit (``time.monotonic_ns``)
MINUTE_NS = 60_000_000_000
#: buckets held before the ones back at their full allowance are forgotten (they start full
#: again); the next sweep waits until twice as many are held as the last one left
SWEEP_AT = 50_000
#: a bucket's verdict on a call: why it refuses (kind, limit, wait; None: it lets it through),
#: the answer's headers, and the requests' arrival time to keep once every bucket lets it through
Verdict = tuple[tuple[str, int, float] | None, dict[str, str], int | None]
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
        self._tenants: dict[Account, _Tenant] = {}
        #: the metadata limits by scope, and indexed for a call's metadata to find them
        self._scoped: dict[Scope, MetadataRateLimit] = {limit.scope: limit for limit in config.metadata}
        self._order = {limit.scope: n for n, limit in enumerate(config.metadata)}
        self._index = ScopeIndex(config.metadata) if config.metadata else None
        self._sweep_at = SWEEP_AT
        #: hands the recorded attempts not yet observed to :meth:`observe` (the recorder's)
        self.flush: Callable[[], None] = lambda: None
        self.refusals = WindowedLog(log, _refusals_counted, key_fields=_key_fields)

    def _state(self, account: Account, now: int, sweep: bool = True) -> _Tenant | None:
        """``account``'s bucket, made (full) when it has none. ``sweep``: it may forget the full
        ones first (not while a call holds others it is about to count in: a review saw one
        swept between its fetch and its count, its call counted in a bucket no longer held)."""
        state = self._tenants.get(account)
        if state is not None:
            return state
        limit = self.config.for_tenant(account) if isinstance(account, str) else self._scoped.get(account)
        if limit is None:
            return None
        if sweep and len(self._tenants) >= self._sweep_at:
            self._sweep(now)
        state = self._tenants[account] = _Tenant(limit, now)
        return state

    def _accounts(self, tenant: str, metadata: dict[str, str] | None) -> list[Account]:
        """The buckets a call of ``tenant`` with ``metadata`` counts in: its tenant's (when it has
        a limit) first, then each metadata limit's it falls under, in the order of the settings
        (whatever the order of the call's pairs: the headers are the first one's)."""
        accounts: list[Account] = [tenant] if self.config.for_tenant(tenant) is not None else []
        if metadata and self._index is not None:
            matched = self._index.matching(tenant, metadata)
            if len(matched) > 1:
                matched.sort(key=lambda limit: self._order[limit.scope])
            accounts.extend(limit.scope for limit in matched)
        return accounts

    def _sweep(self, now: int) -> None:
        """Forget the tenants back at their full allowance. Amortised: a sweep that frees little
        is not run again until the table has doubled (a sweep at every new tenant held the loop
        22 ms a call at 50,000 tenants: a review)."""
        for tenant in [t for t, state in self._tenants.items() if state.full(now)]:
            del self._tenants[tenant]
        self._sweep_at = max(SWEEP_AT, 2 * len(self._tenants))

    def _buckets(self, tenant: str, metadata: dict[str, str] | None) -> Sequence[Account]:
        """The buckets to release, charge or read for a call: its tenant's alone (held or not)
        where no metadata limit is given, else :meth:`_accounts`."""
        return self._accounts(tenant, metadata) if metadata and self._index is not None else (tenant,)

    def admit(self, tenant: str, metadata: dict[str, str] | None = None) -> dict[str, str] | None:
        """Count one call of ``tenant`` with ``metadata`` in each bucket it falls under, and the
        rate-limit headers of its answer (None: it is under no limit); :class:`TenantRateLimited`
        when one of them makes it wait (counted in none)."""
        now = self._clock()
        if metadata is None or self._index is None:  # the common case: the tenant's bucket alone
            state = self._state(tenant, now)
            if state is None:
                return None
            refused, headers, tat = self._verdict(state, now)
            if refused is not None:
                self._refused(tenant, tenant, *refused, headers)
            self._count(state, tat)
            return headers
        accounts = self._accounts(tenant, metadata)
        if not accounts:
            return None
        if len(self._tenants) + len(accounts) > self._sweep_at:  # once, before any is fetched
            self._sweep(now)
        states = [cast(_Tenant, self._state(account, now, sweep=False)) for account in accounts]
        verdicts = [self._verdict(state, now) for state in states]
        refusals = [
            (verdict[0][2], account, verdict) for account, verdict in zip(accounts, verdicts, strict=True) if verdict[0]
        ]
        if refusals:
            # the longest wait: a retry after a shorter one would meet the other bucket's refusal
            _, account, (refused, headers, _) = max(refusals, key=lambda refusal: refusal[0])
            self._refused(account, tenant, *cast(tuple[str, int, float], refused), headers)
        for state, (_, _, tat) in zip(states, verdicts, strict=True):
            self._count(state, tat)
        return verdicts[0][1]

    @staticmethod
    def _count(state: _Tenant, tat: int | None) -> None:
        if tat is not None:
            state.tat = tat
        if state.limit.max_concurrent_requests is not None:
            state.in_flight += 1

    @staticmethod
    def _verdict(state: _Tenant, now: int) -> Verdict:
        """What ``state``'s limits say of one more call now (nothing is counted)."""
        limit = state.limit
        headers: dict[str, str] = {}
        refused: tuple[str, int, float] | None = None
        counted: int | None = None
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
                counted = tat
            headers["x-ratelimit-limit-requests"] = str(per_minute)
            headers["x-ratelimit-remaining-requests"] = str(max(0, (window - (tat - scaled_now)) // MINUTE_NS))
            headers["x-ratelimit-reset-requests"] = reset_text((tat - scaled_now) / window * MINUTE)
        return refused, headers, counted

    def release(self, tenant: str, metadata: dict[str, str] | None = None) -> None:
        """A call :meth:`admit` let through has ended (answered, failed, or its stream over)."""
        for account in self._buckets(tenant, metadata):
            state = self._tenants.get(account)
            if state is not None and state.limit.max_concurrent_requests is not None and state.in_flight:
                state.in_flight -= 1

    def observe(self, event: UsageEvent) -> None:
        """An attempt recorded (the recorder's observer): its tokens come out of each bucket its
        call counts in."""
        tokens = event.prompt_tokens + event.completion_tokens
        if tokens <= 0:
            return
        now = self._clock()
        for account in self._buckets(event.tenant_id, event.metadata):
            state = self._state(account, now)
            if state is None or state.limit.tokens_per_minute is None:
                continue
            state.refill(now)
            # at most a day of the limit owed: the longest wait a refusal gives (the tokens of
            # one attempt are bounded only by what the stores hold)
            state.tokens = max(state.tokens - tokens, 1 - state.limit.tokens_per_minute * MAX_DEBT_MINUTES)

    def current(self, tenant: str, admitted: dict[str, str], metadata: dict[str, str] | None = None) -> dict[str, str]:
        """``admitted``'s headers with the tokens left now: a non-streaming answer's own tokens
        are taken when it is answered (the headers of its admission said the bucket was full)."""
        accounts = self._buckets(tenant, metadata)
        state = self._tenants.get(accounts[0]) if accounts else None
        if state is None or (capacity := state.limit.tokens_per_minute) is None:
            return admitted
        self.flush()  # the attempts' events reach the observers a loop turn later
        now = self._clock()
        return {**admitted, **_tokens_left(capacity, state.refill(now))}

    def _refused(
        self, account: Account, tenant: str, kind: str, limit: int, wait: float, headers: dict[str, str]
    ) -> None:
        where = (
            f"at its {limit} requests at once" if kind == "concurrent requests" else f"over its {limit} {kind} a minute"
        )
        self.refusals.hit(
            (account, kind),
            lambda since: f"rate limit: {account_name(account)} is {where}; refused for {reset_text(wait)}{since}",
            {**account_fields(account), "limit": kind, "perMinute": limit, "retryAfterMs": wait_ms(wait)},
        )
        scoped = None if isinstance(account, str) else self._scoped[account]
        raise TenantRateLimited.of(tenant, kind, limit, wait, headers, scoped)


def _key_fields(key: Hashable) -> dict[str, Any]:
    account, kind = cast(tuple[Account, str], key)
    return {**account_fields(account), "limit": kind}


def _refusals_counted(key: Hashable, count: int, seconds: float) -> str:
    account, kind = cast(tuple[Account, str], key)
    return (
        f"rate limit: {account_name(account)}: {count} more calls refused ({kind}), in the "
        f"{seconds:.0f} s after the last such line"
    )
