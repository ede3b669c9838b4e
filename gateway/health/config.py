"""Provider-health settings: the window, the documented thresholds, the circuit breaker.

One nested model in :class:`gateway.settings.Settings` (``settings.health``); in the config
file under ``health:``, in the environment as JSON (``LLM_GATEWAY_HEALTH='{"window_seconds": 30}'``).
The meaning of every threshold is spelled out in :mod:`gateway.health` and below.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

#: bounds of the durations (seconds): a window of 1e15 s or "Infinity" crashed the start with a
#: traceback, a cool-down of 1e15 s the embedded projector at the first circuit opening
_DAY = 86_400.0
_WEEK = 7 * _DAY


class HealthSettings(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    #: length of the rolling window every rate and percentile is computed over (event time)
    window_seconds: float = Field(default=60.0, gt=0, le=_WEEK)

    # --- down: the circuit opens (the router skips the provider) --------------------------------
    #: this many failures in a row (successes reset the run; rate limits and client errors don't)
    down_consecutive_failures: int = Field(default=5, ge=1)
    #: ... or at least ``down_min_attempts`` judged attempts in the window with this failure rate
    down_failure_rate: float = Field(default=0.5, gt=0, le=1)
    down_min_attempts: int = Field(default=10, ge=1)

    # --- degraded: still routed to, reported as degraded ----------------------------------------
    #: rates need at least this many judged attempts in the window
    degraded_min_attempts: int = Field(default=5, ge=1)
    degraded_failure_rate: float = Field(default=0.2, gt=0, le=1)
    degraded_rate_limit_rate: float = Field(default=0.3, gt=0, le=1)
    #: p95 latency of successful attempts above this (None: not a criterion)
    degraded_p95_latency_ms: float | None = Field(default=30_000.0, gt=0, allow_inf_nan=False)
    #: p95 time to first token above this (None: not a criterion)
    degraded_p95_ttft_ms: float | None = Field(default=None, gt=0, allow_inf_nan=False)

    # --- circuit breaker ---------------------------------------------------------------------------
    #: False: health is computed and reported, but the router never skips a provider
    circuit_breaker: bool = True
    #: first cool-down after the circuit opens; each failed probe multiplies it, up to the max
    cooldown_seconds: float = Field(default=30.0, gt=0, le=_DAY)
    cooldown_multiplier: float = Field(default=2.0, ge=1, le=100)
    max_cooldown_seconds: float = Field(default=300.0, gt=0, le=_DAY)
    #: a half-open probe whose outcome never arrives frees the probe slot after this long
    probe_timeout_seconds: float = Field(default=60.0, gt=0, le=_DAY)

    # --- sharing between replicas ------------------------------------------------------------------
    #: with Kafka: every replica also reads the usage topic (group-less) to route on one view
    kafka_sync: bool = True
