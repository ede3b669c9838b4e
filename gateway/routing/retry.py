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

from tenacity import AsyncRetrying, RetryCallState, retry_if_exception, stop_after_attempt, wait_exponential_jitter

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
    """Server-requested wait if any, else exponential backoff with jitter."""

    def __init__(self, policy: RetryPolicy, rng: random.Random | None) -> None:
        # deterministic (no jitter) when a test injects an rng
        jitter = 0.0 if rng is not None else policy.initial_wait
        self._backoff = wait_exponential_jitter(multiplier=policy.initial_wait, max=policy.max_wait, jitter=jitter)

    def __call__(self, state: RetryCallState) -> float:
        exc = state.outcome.exception() if state.outcome else None
        server_wait = getattr(exc, "retry_after", None)
        if server_wait is not None:
            return float(server_wait)
        return float(self._backoff(state))


class _Stop:
    """Stop after ``attempts``, or when the next wait is too long for the policy or budget."""

    def __init__(self, policy: RetryPolicy, budget: RetryBudget, wait: _Wait) -> None:
        self._by_count = stop_after_attempt(policy.attempts)
        self._policy = policy
        self._budget = budget
        self._wait = wait

    def __call__(self, state: RetryCallState) -> bool:
        if self._by_count(state):
            return True
        exc = state.outcome.exception() if state.outcome else None
        server_wait = getattr(exc, "retry_after", None)
        if server_wait is not None and server_wait > self._policy.max_server_wait:
            return True
        return self._wait(state) > self._budget.remaining


async def call_with_retry(
    call: Callable[[], Awaitable[T]],
    *,
    policy: RetryPolicy,
    budget: RetryBudget,
    sleep: Sleep = asyncio.sleep,
    rng: random.Random | None = None,
) -> T:
    """Run ``call`` until it succeeds, raises a non-retryable error, or retrying must stop.

    The last error is re-raised as is, so the caller can decide on fallback from its class.
    """
    wait = _Wait(policy, rng)

    async def _sleep(seconds: float) -> None:
        budget.spend(seconds)
        await sleep(seconds)

    retrying = AsyncRetrying(
        stop=_Stop(policy, budget, wait),
        wait=wait,
        retry=retry_if_exception(_retryable),
        sleep=_sleep,
        reraise=True,
    )
    async for attempt in retrying:
        with attempt:
            return await call()
    raise AssertionError("unreachable: tenacity either returns or re-raises")  # pragma: no cover
