"""The documented thresholds: window stats -> healthy / degraded / down, with the reason.

With ``c = HealthSettings`` and ``judged = attempts - neutral`` over the window:

- **down**: ``consecutive_failures >= c.down_consecutive_failures``, or
  ``judged >= c.down_min_attempts`` and ``failure_rate >= c.down_failure_rate``.
  For a provider as a whole, down means its circuit is open (or half-open): the breaker applies
  these rules to the attempts since it last closed, see :mod:`gateway.health.breaker`.
- **degraded**: ``judged >= c.degraded_min_attempts`` and (``failure_rate >=
  c.degraded_failure_rate`` or ``rate_limit_rate >= c.degraded_rate_limit_rate``), or the p95
  latency of successes above ``c.degraded_p95_latency_ms``, or the p95 time to first token above
  ``c.degraded_p95_ttft_ms`` (each when set).
- **healthy**: otherwise (also with no attempts at all: no evidence against it).

The decision (:func:`decide`) is numbers only and returns which rule fired; the reason text is
written from that (:func:`explain`) only when somebody reads it. The view judges every event
with :func:`decide` and words a reason only on a transition, which keeps the per-event cost
to a few comparisons.
"""

from __future__ import annotations

from typing import Literal, Protocol

from gateway.health.config import HealthSettings
from gateway.health.window import WindowStats

HealthState = Literal["healthy", "degraded", "down"]
#: which rule decided the state
Cause = Literal[
    "consecutive", "failure_rate_down", "failure_rate", "rate_limit_rate", "p95_latency", "p95_ttft",
    "recovering", "within",
]  # fmt: skip


class Evidence(Protocol):
    """What :func:`decide` reads: a :class:`~gateway.health.window.WindowStats` snapshot, or a
    live :class:`~gateway.health.window.RollingWindow` (the same counts, kept incrementally).
    Reasons are always worded from a snapshot (:func:`explain`)."""

    @property
    def judged(self) -> int: ...
    @property
    def failures(self) -> int: ...
    @property
    def rate_limited(self) -> int: ...
    def p95_latency_above(self, limit: float) -> bool: ...
    def p95_ttft_above(self, limit: float) -> bool: ...


#: hysteresis: a degraded (or down) provider is healthy again only once its rates fall below this
#: share of the degraded thresholds, so a rate hovering at a threshold does not flap (and log)
RECOVERY_FACTOR = 0.75


def decide(
    s: Evidence,
    consecutive_failures: int,
    c: HealthSettings,
    *,
    can_be_down: bool = True,
    previous: HealthState = "healthy",
) -> tuple[HealthState, Cause]:
    """The state and the rule that decided it. ``can_be_down=False``: the caller decides "down"
    (the breaker). ``previous``: the state reported last, for the recovery hysteresis."""
    judged = s.judged
    failure_rate = s.failures / judged if judged else 0.0
    if can_be_down:
        if consecutive_failures >= c.down_consecutive_failures:
            return "down", "consecutive"
        if judged >= c.down_min_attempts and failure_rate >= c.down_failure_rate:
            return "down", "failure_rate_down"
    rate_limit_rate = s.rate_limited / judged if judged else 0.0
    enough = judged >= c.degraded_min_attempts
    if enough:
        if failure_rate >= c.degraded_failure_rate:
            return "degraded", "failure_rate"
        if rate_limit_rate >= c.degraded_rate_limit_rate:
            return "degraded", "rate_limit_rate"
    limit = c.degraded_p95_latency_ms
    if limit is not None and s.p95_latency_above(limit):
        return "degraded", "p95_latency"
    limit = c.degraded_p95_ttft_ms
    if limit is not None and s.p95_ttft_above(limit):
        return "degraded", "p95_ttft"
    if previous != "healthy" and enough:
        if (
            failure_rate >= c.degraded_failure_rate * RECOVERY_FACTOR
            or rate_limit_rate >= c.degraded_rate_limit_rate * RECOVERY_FACTOR
        ):
            return "degraded", "recovering"
    return "healthy", "within"


def explain(cause: Cause, s: WindowStats, consecutive_failures: int, c: HealthSettings) -> str:
    """The reason text of a decision."""
    over = f" over {s.judged} attempts in the last {c.window_seconds:g}s"
    if cause == "consecutive":
        return f"{consecutive_failures} consecutive failures"
    if cause == "failure_rate_down":
        return f"failure rate {s.failure_rate:.0%} >= {c.down_failure_rate:.0%}{over}"
    if cause == "failure_rate":
        return f"failure rate {s.failure_rate:.0%} >= {c.degraded_failure_rate:.0%}{over}"
    if cause == "rate_limit_rate":
        return f"rate-limit rate {s.rate_limit_rate:.0%} >= {c.degraded_rate_limit_rate:.0%}{over}"
    if cause == "p95_latency":
        return f"p95 latency {s.p95_latency_ms:g} ms > {c.degraded_p95_latency_ms:g} ms"
    if cause == "p95_ttft":
        return f"p95 time to first token {s.p95_ttft_ms:g} ms > {c.degraded_p95_ttft_ms:g} ms"
    if cause == "recovering":
        failure_bar = c.degraded_failure_rate * RECOVERY_FACTOR
        limit_bar = c.degraded_rate_limit_rate * RECOVERY_FACTOR
        return (
            f"recovering: failure rate {s.failure_rate:.0%} / rate-limit rate {s.rate_limit_rate:.0%}"
            f" not yet below {failure_bar:.0%} / {limit_bar:.0%}"
        )
    return f"within thresholds ({s.judged} attempts in the last {c.window_seconds:g}s)"


def down_reason(s: WindowStats, consecutive_failures: int, c: HealthSettings) -> str | None:
    """Why ``s`` (and the run of failures) says down; None if it does not."""
    state, cause = decide(s, consecutive_failures, c)
    return explain(cause, s, consecutive_failures, c) if state == "down" else None


def assess(
    stats: WindowStats,
    consecutive_failures: int,
    c: HealthSettings,
    *,
    can_be_down: bool = True,
    previous: HealthState = "healthy",
) -> tuple[HealthState, str]:
    """The state and why (see :func:`decide`)."""
    state, cause = decide(stats, consecutive_failures, c, can_be_down=can_be_down, previous=previous)
    return state, explain(cause, stats, consecutive_failures, c)
