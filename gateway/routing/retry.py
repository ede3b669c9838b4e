"""Retry on one provider: exponential backoff with jitter (tenacity), honouring server waits.

Only errors whose class says ``retryable`` (rate limits, overload) are retried on the same
provider. A server-requested wait (retry-after-ms / retry-after / Gemini RetryInfo) is honoured
when it fits ``max_server_wait`` and the request's remaining budget; otherwise the provider is
given up at once and the router falls back.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TypeVar

from tenacity import AsyncRetrying, RetryCallState, retry_if_exception, stop_after_attempt

from gateway.backoff import doubling
from gateway.errors import GatewayError

T = TypeVar("T")
Sleep = Callable[[float], Awaitable[None]]


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    attempts: int = 3  # attempts per provider, first one included
    initial_wait: float = 0.5
    max_wait: float = 8.0
    max_server_wait: float = 20.0
    budget_seconds: float = 30.0  # total waiting allowed for one request


@dataclass(slots=True)
class RetryBudget:
    """Waiting time left for one request, shared by every provider it tries."""

    remaining: float
    waits: list[float] = field(default_factory=list)

    def spend(self, seconds: float) -> None:
        self.remaining -= seconds
        self.waits.append(seconds)


def _retryable(exc: BaseException) -> bool:
    return isinstance(exc, GatewayError) and exc.retryable


class _Wait:
    """Server-requested wait if any, else exponential backoff with jitter.

    ``offset`` counts the attempts made before tenacity took over (the first one runs outside
    it, so a call that succeeds at once pays nothing for the retry machinery)."""

    def __init__(self, policy: RetryPolicy, rng: random.Random | None, offset: int = 0) -> None:
        self._policy = policy
        self._offset = offset
        # deterministic (no jitter) when a test injects an rng
        self._jitter = 0.0 if rng is not None else policy.initial_wait
        #: the delay drawn for the last (call, attempt): the stop test and the sleep must judge
        #: the same jittered delay, whichever of the two tenacity asks for first
        self._drawn: tuple[int, int, float] | None = None

    def for_error(self, exc: BaseException | None, attempt_number: int) -> float:
        server_wait = getattr(exc, "retry_after", None)
        if server_wait is not None:
            return float(server_wait)
        backoff = doubling(self._policy.initial_wait, attempt_number, self._policy.max_wait)
        return float(backoff + (random.uniform(0, self._jitter) if self._jitter else 0.0))

    def __call__(self, state: RetryCallState) -> float:
        drawn = self._drawn
        if drawn is not None and drawn[0] == id(state) and drawn[1] == state.attempt_number:
            return drawn[2]
        exc = state.outcome.exception() if state.outcome else None
        delay = self.for_error(exc, state.attempt_number + self._offset)
        self._drawn = (id(state), state.attempt_number, delay)
        return delay


class _Stop:
    """Stop after ``attempts``, when the next wait is too long for the policy or budget, or when
    ``keep_going`` says no (the provider's circuit opened meanwhile)."""

    def __init__(
        self,
        policy: RetryPolicy,
        budget: RetryBudget,
        wait: _Wait,
        offset: int = 0,
        keep_going: Callable[[], bool] | None = None,
    ) -> None:
        self._by_count = stop_after_attempt(policy.attempts - offset)
        self._policy = policy
        self._budget = budget
        self._wait = wait
        self._keep_going = keep_going

    def __call__(self, state: RetryCallState) -> bool:
        if self._by_count(state):
            return True
        exc = state.outcome.exception() if state.outcome else None
        if _too_long(exc, self._wait(state), self._policy, self._budget):
            return True
        return self._keep_going is not None and not self._keep_going()


def _too_long(exc: BaseException | None, delay: float, policy: RetryPolicy, budget: RetryBudget) -> bool:
    server_wait = getattr(exc, "retry_after", None)
    if server_wait is not None and server_wait > policy.max_server_wait:
        return True
    return delay > budget.remaining


async def call_with_retry(
    call: Callable[[], Awaitable[T]],
    *,
    policy: RetryPolicy,
    budget: RetryBudget,
    sleep: Sleep = asyncio.sleep,
    rng: random.Random | None = None,
    keep_going: Callable[[], bool] | None = None,
    may_send: Callable[[], bool] | None = None,
) -> T:
    """Run ``call`` until it succeeds, raises a non-retryable error, or retrying must stop.

    ``keep_going`` is asked before each retry's wait, ``may_send`` after it, when the retry is
    about to be sent: False from either stops retrying (the router asks the provider's circuit
    breaker: it may have opened on this very error, or during the wait, by other calls; in
    half-open a retry must be the one probe, whose place ``may_send`` takes). The last error is
    re-raised as is, so the caller can decide on fallback from its class. (A retry was sent into
    a circuit that opened during its wait, and a second probe beside the one in flight: review.)
    """
    # the first attempt runs outside tenacity: most calls succeed at once
    try:
        return await call()
    except BaseException as exc:
        if not _retryable(exc) or policy.attempts <= 1:
            raise
        first_error = exc
    wait = _Wait(policy, rng, offset=1)
    delay = wait.for_error(first_error, 1)
    if _too_long(first_error, delay, policy, budget) or (keep_going is not None and not keep_going()):
        raise first_error

    async def _sleep(seconds: float) -> None:
        budget.spend(seconds)
        await sleep(seconds)

    await _sleep(delay)
    retrying = AsyncRetrying(
        stop=_Stop(policy, budget, wait, offset=1, keep_going=keep_going),
        wait=wait,
        retry=retry_if_exception(_retryable),
        sleep=_sleep,
        reraise=True,
    )
    last = first_error
    try:
        async for attempt in retrying:
            with attempt:
                if may_send is not None and not may_send():
                    raise _Withheld(last)
                try:
                    return await call()
                except BaseException as exc:
                    last = exc
                    raise
    except _Withheld as withheld:
        raise withheld.error from withheld.error.__cause__
    raise AssertionError("unreachable: tenacity either returns or re-raises")  # pragma: no cover


class _Withheld(Exception):
    """A retry its provider's circuit refused when it was to be sent: ``error`` (the last
    attempt's) ends the retries (not retryable, so tenacity re-raises it at once)."""

    def __init__(self, error: BaseException) -> None:
        super().__init__(str(error))
        self.error = error
