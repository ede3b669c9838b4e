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
"""

from __future__ import annotations

from typing import Literal

from gateway.health.config import HealthSettings
from gateway.health.window import WindowStats

HealthState = Literal["healthy", "degraded", "down"]


def down_reason(stats: WindowStats, consecutive_failures: int, c: HealthSettings) -> str | None:
    if consecutive_failures >= c.down_consecutive_failures:
        return f"{consecutive_failures} consecutive failures"
    if stats.judged >= c.down_min_attempts and stats.failure_rate >= c.down_failure_rate:
        return (
            f"failure rate {stats.failure_rate:.0%} >= {c.down_failure_rate:.0%} over {stats.judged} attempts"
            f" in the last {c.window_seconds:g}s"
        )
    return None


def degraded_reason(stats: WindowStats, c: HealthSettings) -> str | None:
    over = f" over {stats.judged} attempts in the last {c.window_seconds:g}s"
    if stats.judged >= c.degraded_min_attempts:
        if stats.failure_rate >= c.degraded_failure_rate:
            return f"failure rate {stats.failure_rate:.0%} >= {c.degraded_failure_rate:.0%}{over}"
        if stats.rate_limit_rate >= c.degraded_rate_limit_rate:
            return f"rate-limit rate {stats.rate_limit_rate:.0%} >= {c.degraded_rate_limit_rate:.0%}{over}"
    p95, limit = stats.p95_latency_ms, c.degraded_p95_latency_ms
    if p95 is not None and limit is not None and p95 > limit:
        return f"p95 latency {p95:g} ms > {limit:g} ms"
    p95, limit = stats.p95_ttft_ms, c.degraded_p95_ttft_ms
    if p95 is not None and limit is not None and p95 > limit:
        return f"p95 time to first token {p95:g} ms > {limit:g} ms"
    return None


#: hysteresis: a degraded (or down) provider is healthy again only once its rates fall below this
#: share of the degraded thresholds, so a rate hovering at a threshold does not flap (and log)
RECOVERY_FACTOR = 0.75


def assess(
    stats: WindowStats,
    consecutive_failures: int,
    c: HealthSettings,
    *,
    can_be_down: bool = True,
    previous: HealthState = "healthy",
) -> tuple[HealthState, str]:
    """The state and why. ``can_be_down=False``: the caller decides "down" (the breaker).
    ``previous``: the state reported last, for the recovery hysteresis."""
    if can_be_down and (reason := down_reason(stats, consecutive_failures, c)) is not None:
        return "down", reason
    if (reason := degraded_reason(stats, c)) is not None:
        return "degraded", reason
    if previous != "healthy" and stats.judged >= c.degraded_min_attempts:
        failure_bar = c.degraded_failure_rate * RECOVERY_FACTOR
        limit_bar = c.degraded_rate_limit_rate * RECOVERY_FACTOR
        if stats.failure_rate >= failure_bar or stats.rate_limit_rate >= limit_bar:
            return "degraded", (
                f"recovering: failure rate {stats.failure_rate:.0%} / rate-limit rate {stats.rate_limit_rate:.0%}"
                f" not yet below {failure_bar:.0%} / {limit_bar:.0%}"
            )
    return "healthy", f"within thresholds ({stats.judged} attempts in the last {c.window_seconds:g}s)"
