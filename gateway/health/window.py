"""Rolling time windows of provider attempts: counts, rates and exact percentiles.

Every attempt becomes a :class:`Sample` placed by its event time (``created_at``). A window
holds the samples with ``now - window_seconds <= t`` (both ends inclusive; samples stamped
after ``now`` stay in). Counts are kept incrementally, so adding and evicting cost O(1) even
with tens of thousands of attempts per window (see :class:`RollingWindow`).

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

from bisect import insort
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Literal, get_args

from gateway.events import PROVIDER_FAILURES, Outcome, UsageEvent

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


#: the class of every known outcome (``classify`` for the others)
_KINDS: dict[str, Kind] = {outcome: classify(outcome) for outcome in get_args(Outcome)}


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
        kind = _KINDS.get(event.outcome) or classify(event.outcome)
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

    def p95_latency_above(self, limit: float) -> bool:
        return self.p95_latency_ms is not None and self.p95_latency_ms > limit

    def p95_ttft_above(self, limit: float) -> bool:
        return self.p95_ttft_ms is not None and self.p95_ttft_ms > limit


def _t(sample: Sample) -> datetime:
    return sample.t


class RollingWindow:
    """The samples of the last ``seconds`` of event time, with running counts.

    Cost per event is O(1) amortized: samples are appended in time order (an out-of-order one
    is inserted in place), eviction moves a start index over the old ones (the list is compacted
    once half of it is dead), and every count, including the number of latencies above the
    configured p95 limits (``latency_limit``, ``ttft_limit``), is kept incrementally. The rules'
    "p95 above the limit" test reads those counts: with ``n`` values and nearest rank
    ``r = ceil(0.95 n)``, ``sorted[r - 1] > limit`` exactly when more than ``n - r`` values are
    above the limit. Percentile values themselves are computed when read (a snapshot, a
    transition, the health API): the window's values are sorted then, and the sorted lists are
    kept until the window changes.
    """

    def __init__(self, seconds: float, *, latency_limit: float | None = None, ttft_limit: float | None = None) -> None:
        self.seconds = seconds
        self.latency_limit = latency_limit
        self.ttft_limit = ttft_limit
        self._span = timedelta(seconds=seconds)
        self._samples: list[Sample] = []  # ascending t from self._start on
        self._start = 0
        # live counts, plain attributes: the rules read them on every event
        self.successes = self.failures = self.rate_limited = self.neutral = self.judged = 0
        self._timeouts = 0
        self._latencies = 0  # samples with a latency (successes)
        self._ttfts = 0
        self._latencies_over = 0  # ... above latency_limit
        self._ttfts_over = 0
        self._sorted: tuple[list[float], list[float]] | None = None  # (latencies, ttfts) cache

    def __len__(self) -> int:
        return len(self._samples) - self._start

    def add(self, sample: Sample) -> None:
        samples = self._samples
        if len(samples) == self._start or sample.t >= samples[-1].t:
            samples.append(sample)
        else:  # out of order (another partition, another replica): keep the list sorted
            insort(samples, sample, lo=self._start, key=_t)
        self._count(sample, 1)

    def _count(self, sample: Sample, step: int) -> None:
        kind = sample.kind
        if kind == "neutral":
            self.neutral += step
        else:
            self.judged += step
            if kind == "success":
                self.successes += step
            elif kind == "failure":
                self.failures += step
            else:
                self.rate_limited += step
        if sample.outcome in TIMEOUTS:
            self._timeouts += step
        latency = sample.latency_ms
        if latency is not None:
            self._latencies += step
            if self.latency_limit is not None and latency > self.latency_limit:
                self._latencies_over += step
        ttft = sample.ttft_ms
        if ttft is not None:
            self._ttfts += step
            if self.ttft_limit is not None and ttft > self.ttft_limit:
                self._ttfts_over += step
        self._sorted = None

    def evict(self, now: datetime) -> None:
        """Drop the samples older than ``now - seconds``."""
        cutoff = now - self._span
        samples, start = self._samples, self._start
        end = len(samples)
        while start < end and samples[start].t < cutoff:
            self._count(samples[start], -1)
            start += 1
        if start == self._start:
            return
        if start * 2 >= end:  # compact: the dead prefix is half of the list
            del samples[:start]
            start = 0
        self._start = start

    def clear(self) -> None:
        self._samples.clear()
        self._start = 0
        self.successes = self.failures = self.rate_limited = self.neutral = self.judged = 0
        self._timeouts = self._latencies = self._ttfts = self._latencies_over = self._ttfts_over = 0
        self._sorted = None

    # --- live evidence for the rules (gateway.health.rules.Evidence), as of the last evict ---------
    def p95_latency_above(self, limit: float) -> bool:
        if limit == self.latency_limit:
            return _p95_above(self._latencies, self._latencies_over)
        return _above(percentile(self._sorted_values()[0], 95), limit)

    def p95_ttft_above(self, limit: float) -> bool:
        if limit == self.ttft_limit:
            return _p95_above(self._ttfts, self._ttfts_over)
        return _above(percentile(self._sorted_values()[1], 95), limit)

    def _sorted_values(self) -> tuple[list[float], list[float]]:
        if self._sorted is None:
            live = self._samples[self._start :]
            self._sorted = (
                sorted([s.latency_ms for s in live if s.latency_ms is not None]),
                sorted([s.ttft_ms for s in live if s.ttft_ms is not None]),
            )
        return self._sorted

    def stats(self, now: datetime) -> WindowStats:
        self.evict(now)
        latencies, ttfts = self._sorted_values()
        return WindowStats(
            window_seconds=self.seconds,
            window_end=now,
            attempts=len(self),
            successes=self.successes,
            failures=self.failures,
            rate_limited=self.rate_limited,
            timeouts=self._timeouts,
            neutral=self.neutral,
            p50_latency_ms=percentile(latencies, 50),
            p95_latency_ms=percentile(latencies, 95),
            p50_ttft_ms=percentile(ttfts, 50),
            p95_ttft_ms=percentile(ttfts, 95),
        )


def _p95_above(n: int, over: int) -> bool:
    """Whether the nearest-rank p95 of ``n`` values, ``over`` of them above a limit, is above it."""
    return n > 0 and over > n - max(1, (95 * n + 99) // 100)


def _above(value: float | None, limit: float) -> bool:
    return value is not None and value > limit
