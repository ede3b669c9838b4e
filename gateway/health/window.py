"""Rolling time windows of provider attempts: counts, rates and exact percentiles.

Every attempt becomes a :class:`Sample` placed by its event time (``created_at``). A window
holds the samples with ``now - window_seconds <= t`` (both ends inclusive; samples stamped
after ``now`` stay in). Counts are kept incrementally and latencies in sorted lists, so adding,
evicting and reading stats are cheap even with tens of thousands of attempts per window.

Outcome classes (what health counts):

- ``success``.
- ``failure``: the provider misbehaved or is unusable for us: :data:`PROVIDER_FAILURES`
  (overloaded, timeout, connection error, upstream error, malformed response, stream cut) plus
  ``auth_error`` and ``quota_exhausted`` (our credentials or credit are refused: every call
  to it will fail until an operator acts).
- ``rate_limited``: counted separately (rate-limit rate), never a failure.
- ``neutral``: the request or the client, not the provider (``client_error``,
  ``content_filtered``, ``model_not_found``, ``cancelled``). Counted as attempts but left out
  of every rate: ``judged = attempts - neutral`` is the denominator.

Percentiles are nearest-rank over the window: ``p(q) = sorted[ceil(q/100 * n) - 1]``, always an
observed value. Latency percentiles are over successful attempts (a fast 500 says nothing about
how long a served call takes; timeouts show up in the timeout rate); time-to-first-token
percentiles over successful attempts that report one (non-streaming: the whole latency).
"""

from __future__ import annotations

from bisect import bisect_left, insort
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Literal

from gateway.events import PROVIDER_FAILURES, UsageEvent

Kind = Literal["success", "failure", "rate_limited", "neutral"]

#: outcomes counted as provider failures by health
HEALTH_FAILURES = PROVIDER_FAILURES | {"auth_error", "quota_exhausted"}
RATE_LIMITS = frozenset({"rate_limited"})
TIMEOUTS = frozenset({"timeout"})


def classify(outcome: str) -> Kind:
    if outcome == "success":
        return "success"
    if outcome in HEALTH_FAILURES:
        return "failure"
    if outcome in RATE_LIMITS:
        return "rate_limited"
    return "neutral"


def percentile(sorted_values: list[float], q: int) -> float | None:
    """Nearest-rank percentile (``0 < q <= 100``) of an ascending list; None when empty."""
    n = len(sorted_values)
    if n == 0:
        return None
    rank = max(1, (q * n + 99) // 100)  # ceil(q * n / 100) in integers: no float rounding
    return sorted_values[rank - 1]


@dataclass(frozen=True, slots=True)
class Sample:
    t: datetime
    kind: Kind
    outcome: str
    latency_ms: float | None = None  # successes only
    ttft_ms: float | None = None  # successes only

    @classmethod
    def of(cls, event: UsageEvent) -> Sample:
        kind = classify(event.outcome)
        if kind == "success":
            return cls(event.created_at, kind, event.outcome, event.latency_ms, event.ttft_ms)
        return cls(event.created_at, kind, event.outcome)


@dataclass(frozen=True, slots=True)
class WindowStats:
    window_seconds: float
    window_end: datetime
    attempts: int = 0
    successes: int = 0
    failures: int = 0
    rate_limited: int = 0
    timeouts: int = 0
    neutral: int = 0
    p50_latency_ms: float | None = None
    p95_latency_ms: float | None = None
    p50_ttft_ms: float | None = None
    p95_ttft_ms: float | None = None

    @property
    def judged(self) -> int:
        """Attempts that say something about the provider (all but neutral ones)."""
        return self.attempts - self.neutral

    def _rate(self, count: int) -> float:
        return count / self.judged if self.judged else 0.0

    @property
    def failure_rate(self) -> float:
        return self._rate(self.failures)

    @property
    def rate_limit_rate(self) -> float:
        return self._rate(self.rate_limited)

    @property
    def timeout_rate(self) -> float:
        return self._rate(self.timeouts)


def _t(sample: Sample) -> datetime:
    return sample.t


class RollingWindow:
    """The samples of the last ``seconds`` of event time, with running counts."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self._span = timedelta(seconds=seconds)
        self._samples: list[Sample] = []  # ascending t
        self._counts: dict[str, int] = {"success": 0, "failure": 0, "rate_limited": 0, "neutral": 0}
        self._timeouts = 0
        self._latencies: list[float] = []  # ascending
        self._ttfts: list[float] = []  # ascending

    def __len__(self) -> int:
        return len(self._samples)

    def add(self, sample: Sample) -> None:
        if not self._samples or sample.t >= self._samples[-1].t:
            self._samples.append(sample)
        else:  # out of order (another partition, another replica): keep the list sorted
            insort(self._samples, sample, key=_t)
        self._counts[sample.kind] += 1
        if sample.outcome in TIMEOUTS:
            self._timeouts += 1
        if sample.latency_ms is not None:
            insort(self._latencies, sample.latency_ms)
        if sample.ttft_ms is not None:
            insort(self._ttfts, sample.ttft_ms)

    def evict(self, now: datetime) -> None:
        """Drop the samples older than ``now - seconds``."""
        cutoff = now - self._span
        if not self._samples or self._samples[0].t >= cutoff:
            return  # nothing is old enough: skip the bisect (one Python key call per step)
        cut = bisect_left(self._samples, cutoff, key=_t)
        if not cut:
            return
        for sample in self._samples[:cut]:
            self._counts[sample.kind] -= 1
            if sample.outcome in TIMEOUTS:
                self._timeouts -= 1
            if sample.latency_ms is not None:
                del self._latencies[bisect_left(self._latencies, sample.latency_ms)]
            if sample.ttft_ms is not None:
                del self._ttfts[bisect_left(self._ttfts, sample.ttft_ms)]
        del self._samples[:cut]

    def clear(self) -> None:
        self._samples.clear()
        self._latencies.clear()
        self._ttfts.clear()
        self._counts = dict.fromkeys(self._counts, 0)
        self._timeouts = 0

    def stats(self, now: datetime) -> WindowStats:
        self.evict(now)
        counts = self._counts
        return WindowStats(
            window_seconds=self.seconds,
            window_end=now,
            attempts=len(self._samples),
            successes=counts["success"],
            failures=counts["failure"],
            rate_limited=counts["rate_limited"],
            timeouts=self._timeouts,
            neutral=counts["neutral"],
            p50_latency_ms=percentile(self._latencies, 50),
            p95_latency_ms=percentile(self._latencies, 95),
            p50_ttft_ms=percentile(self._ttfts, 50),
            p95_ttft_ms=percentile(self._ttfts, 95),
        )
