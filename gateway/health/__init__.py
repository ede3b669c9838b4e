"""Provider health, derived from the attempt events (no synthetic, billed probe calls).

- :mod:`~gateway.health.window`: rolling windows (event time) of attempts, failure / rate-limit /
  timeout rates, nearest-rank p50/p95 latency and time to first token; which outcomes count.
- :mod:`~gateway.health.rules`: the thresholds for healthy / degraded / down.
- :mod:`~gateway.health.breaker`: the circuit of one provider, closed -> open -> half_open.
- :mod:`~gateway.health.view`: :class:`HealthView`, ``apply(event)`` / ``gate(provider)`` /
  ``health(provider)`` / ``snapshot()``, logging every transition on ``gateway.health``.
- :mod:`~gateway.health.kafka_sync`: one view for all replicas (each reads the usage topic).
- :mod:`~gateway.health.plugin`: wiring into the gateway app.

Defaults (``HealthSettings``, ``settings.health``), over the last 60 s of attempts:

- failures = ``PROVIDER_FAILURES`` + ``auth_error`` + ``quota_exhausted``; rate limits are
  counted apart; client errors, content filters, unknown models and cancellations never count
  against a provider (and are left out of the rates' denominator);
- **down** (circuit opens, the router skips the provider): 5 failures in a row, or >= 50 %
  failures over >= 10 judged attempts; after 30 s ONE real request probes it (half-open): a
  success closes the circuit, a failure reopens it for twice as long (30, 60, 120, 240, 300 s);
- **degraded** (still used): >= 20 % failures or >= 30 % rate limits over >= 5 judged attempts,
  or p95 latency of successes > 30 s (p95 time to first token: off by default); it is healthy
  again only once both rates are below 75 % of those thresholds (hysteresis: no flapping);
- **healthy** otherwise.

This package imports no adapter (only ``kafka_sync`` imports aiokafka), so gateways and
consumers can both use it.
"""

from gateway.health.config import HealthSettings
from gateway.health.transitions import HealthTransition
from gateway.health.view import HealthView

__all__ = ["HealthSettings", "HealthTransition", "HealthView"]
