"""The circuit breaker of one provider: closed -> open -> half_open -> closed (or open again).

Driven by attempt samples (event time) and a clock; it never calls a provider itself: the
"probe" is the next real client request the router is let through with.

- **closed**: requests flow. The circuit opens when, counting only attempts that ended after it
  last closed, either ``down_consecutive_failures`` failures came in a row, or the last
  ``window_seconds`` hold at least ``down_min_attempts`` judged attempts with a failure rate
  of at least ``down_failure_rate``. ``opened_at`` is the event time of the tripping attempt.
- **open**: :meth:`allow` says no until ``retry_at = opened_at + cooldown``.
- **half_open** (from ``retry_at`` on): :meth:`allow` says yes to ONE caller (the probe) and
  no to everyone else while it is in flight. The probe's outcome arrives as an event: a success
  closes the circuit; a failure opens it again with the cool-down multiplied by
  ``cooldown_multiplier`` (capped at ``max_cooldown_seconds``; back to ``cooldown_seconds``
  once closed); a rate limit or a client-side outcome proves nothing and frees the probe slot.
  A probe whose event never arrives frees the slot after ``probe_timeout_seconds``.

Any attempt that ended at or after ``retry_at`` counts as a probe outcome, whichever replica
made it; attempts that ended before it were in flight when the circuit opened and are ignored
(as are attempts that ended before the circuit last closed). That keeps replicas fed the same
events on the same transitions.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Literal

from gateway.health.config import HealthSettings
from gateway.health.rules import decide, down_reason
from gateway.health.window import RollingWindow, Sample

CircuitState = Literal["closed", "open", "half_open"]

#: the steady clock bounding a cool-down and a probe's slot in real time (patched by tests)
monotonic = time.monotonic
#: the failures of a run kept (their count is the run's length up to this)
RUN_KEPT = 1000


@dataclass(frozen=True, slots=True)
class CircuitChange:
    at: datetime
    previous: CircuitState
    current: CircuitState
    reason: str


class CircuitBreaker:
    def __init__(
        self,
        provider: str,
        config: HealthSettings,
        on_change: Callable[[CircuitChange], None],
        *,
        steady: bool = False,
    ) -> None:
        """``steady``: the clock given is the wall clock, which may step (see ``_retry_by``)."""
        self.provider = provider
        self._steady = steady
        self._config = config
        self._on_change = on_change
        self.state: CircuitState = "closed"
        #: the current run of failures: (event time, outcome), in arrival order. Events arrive out
        #: of their order (another replica's through the sync, a spool forwarded after a broker
        #: outage): a failure older than a success already counted is not in the run after it,
        #: and a success ends only the failures older than itself. The last RUN_KEPT.
        self._run: deque[tuple[datetime, str]] = deque(maxlen=RUN_KEPT)
        #: the newest success counted (event time), and the newest failure of the run
        self._success_t: datetime | None = None
        self._run_latest: datetime | None = None
        # with the latency limits it judges: a p95 over the whole window was computed on every
        # failure without them (a review: the start's read of a busy week's window took 67 s)
        self._trip = RollingWindow(
            config.window_seconds,
            latency_limit=config.degraded_p95_latency_ms,
            ttft_limit=config.degraded_p95_ttft_ms,
        )
        self.cooldown_seconds = config.cooldown_seconds
        self.opened_at: datetime | None = None
        self.retry_at: datetime | None = None
        self.closed_at: datetime | None = None
        self.probe_since: datetime | None = None
        #: ``retry_at`` and ``probe_since`` on the steady clock: the wall clock stepped back (an NTP
        #: correction, an operator) kept a recovered provider's circuit open, and its calls on a
        #: fallback at 2.9x the price, for the whole step (an hour: the clock review)
        self._retry_by: float | None = None
        self._probe_by: float | None = None

    # --- evidence ---------------------------------------------------------------------------------
    def observe(self, sample: Sample, now: datetime, cutoff: float) -> None:
        """Judge one attempt as of ``now``; ``cutoff``: ``(now - window).timestamp()``."""
        self.tick(now)
        self._clamp(now)
        if self.closed_at is not None and sample.t < self.closed_at:
            return  # ended before the circuit last closed: evidence already judged
        if sample.kind == "failure":
            if self._success_t is None or sample.t >= self._success_t:
                self._run.append((sample.t, sample.outcome))
                if self._run_latest is None or sample.t > self._run_latest:
                    self._run_latest = sample.t
        elif sample.kind == "success":
            if self._success_t is None or sample.t > self._success_t:
                self._success_t = sample.t
            if self._run:
                kept = [failure for failure in self._run if failure[0] > sample.t]
                if len(kept) != len(self._run):
                    self._run = deque(kept, maxlen=RUN_KEPT)
        if self.state == "closed":
            # evicted on every attempt, not only when a failure asks for the rate: a run of
            # successes kept every sample since the circuit last closed (25 bytes each, 4.5 MB
            # a minute at 3,000 events/s, for good), and the next failure evicted them all in
            # one call on the event loop
            self._trip.evict_before(cutoff)
            self._trip.add(sample)
            reason = self._trip_reason(now) if sample.kind == "failure" else None  # only a failure trips it
            if reason is not None:
                self._open(sample.t, self._config.cooldown_seconds, reason, now)
        elif self.retry_at is not None and sample.t >= self.retry_at:
            if sample.kind == "success":
                self._close(sample.t)
            elif sample.kind == "failure":
                cooldown = min(
                    self.cooldown_seconds * self._config.cooldown_multiplier, self._config.max_cooldown_seconds
                )
                self._open(sample.t, cooldown, f"probe failed ({sample.outcome}); cool-down now {cooldown:g}s", now)
            else:
                self.probe_since = None  # a rate limit or a client-side outcome proves nothing
        self.tick(now)

    @property
    def consecutive_failures(self) -> int:
        """The current run of failures (by event time, since the last success before them)."""
        return len(self._run)

    def _clamp(self, now: datetime) -> None:
        """Times past ``now`` are ``now``: the clock stepped back (an NTP correction), and the
        times taken before the step are ahead of it. Kept as they were, every attempt for the
        step's length was older than the last success or the last close, and judged nothing."""
        if self._success_t is not None and self._success_t > now:
            self._success_t = now
        if self.closed_at is not None and self.closed_at > now:
            self.closed_at = now
        if self._run and self._run_latest is not None and self._run_latest > now:
            # failures stamped before the step: a success now must end them (they kept the run
            # going for the step's length, and one more failure opened the circuit: a re-test)
            self._run = deque(((min(t, now), outcome) for t, outcome in self._run), maxlen=RUN_KEPT)
            self._run_latest = now

    def _trip_reason(self, now: datetime) -> str | None:
        c = self._config
        if self.consecutive_failures >= c.down_consecutive_failures:
            last = [outcome for _, outcome in list(self._run)[-c.down_consecutive_failures :]]
            return f"{self.consecutive_failures} consecutive failures: {', '.join(last)}"
        self._trip.evict(now)
        if decide(self._trip, 0, c)[0] != "down":  # the failure-rate rule, on the live counters
            return None
        return down_reason(self._trip.stats(now), 0, c)  # worded from a snapshot

    # --- the clock ----------------------------------------------------------------------------------
    def tick(self, now: datetime) -> None:
        """open -> half_open once the cool-down is over, by the wall clock or, when that stepped
        back, by the steady one (then the cool-down ends now: the probe's events count)."""
        if self.state != "open" or self.retry_at is None:
            return
        if now < self.retry_at and self._retry_by is not None and monotonic() >= self._retry_by:
            self.retry_at = now
        if now >= self.retry_at:
            self._change(
                self.retry_at,
                "half_open",
                f"cool-down of {self.cooldown_seconds:g}s elapsed; letting one probe through",
            )

    def reopens_in(self, now: datetime) -> float | None:
        """Seconds until the open circuit lets a probe through (None when it is not open): the
        sooner of the wall clock's and the steady clock's (a clock stepped back an hour said
        ``retry-after: 3623`` for a probe 24 s away: a re-test)."""
        if self.state != "open" or self.retry_at is None:
            return None
        left = (self.retry_at - now).total_seconds()
        if self._retry_by is not None:
            left = min(left, self._retry_by - monotonic())
        return max(left, 0.0)

    def allow(self, now: datetime) -> bool:
        """May a request be sent to this provider now? In half_open, yes to one probe at a time
        (this call takes the probe's place)."""
        if not self.would_allow(now):
            return False
        if self.state == "half_open":
            self.probe_since = now
            self._probe_by = monotonic() + self._config.probe_timeout_seconds if self._steady else None
        return True

    def would_allow(self, now: datetime) -> bool:
        """What :meth:`allow` would say now, without taking the half-open probe's place (a retry
        asks before its wait; it takes the place only when it is sent)."""
        self.tick(now)
        if self.state == "closed":
            return True
        if self.state == "open":
            return False
        timeout = timedelta(seconds=self._config.probe_timeout_seconds)
        if self.probe_since is None or now - self.probe_since >= timeout:
            return True
        return self._probe_by is not None and monotonic() >= self._probe_by

    # --- transitions ------------------------------------------------------------------------------
    def _open(self, at: datetime, cooldown: float, reason: str, now: datetime) -> None:
        self.cooldown_seconds = cooldown
        self.opened_at = at
        self.retry_at = at + timedelta(seconds=cooldown)
        left = min(max((self.retry_at - now).total_seconds(), 0.0), cooldown)
        self._retry_by = monotonic() + left if self._steady else None
        self.probe_since = self._probe_by = None
        self._change(at, "open", reason)

    def _close(self, at: datetime) -> None:
        opened = self.opened_at
        down_for = f" after {(at - opened).total_seconds():g}s" if opened is not None else ""
        self.closed_at = at
        self.opened_at = self.retry_at = self.probe_since = None
        self._retry_by = self._probe_by = None
        self.cooldown_seconds = self._config.cooldown_seconds
        self._run.clear()
        self._success_t, self._run_latest = at, None
        self._trip.clear()
        self._change(at, "closed", f"probe succeeded{down_for}")

    def _change(self, at: datetime, state: CircuitState, reason: str) -> None:
        previous, self.state = self.state, state
        self._on_change(CircuitChange(at, previous, state, reason))
