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
observed value, found without sorting the window (see :class:`RollingWindow`). Latency
percentiles are over successful attempts (a fast 500 says nothing about how long a served call
takes; timeouts show up in the timeout rate); time-to-first-token percentiles over successful
attempts that report one (non-streaming: the whole latency).
"""

from __future__ import annotations

from array import array
from bisect import bisect_left, bisect_right
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from itertools import compress
from typing import Literal, NamedTuple, get_args

from gateway.events import DAILY_QUOTA, PROVIDER_FAILURES, Outcome, UsageEvent

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


def nearest_rank(n: int, q: int) -> int:
    """The 1-based rank of the nearest-rank ``q`` percentile (``0 < q <= 100``) of ``n`` values:
    ``ceil(q * n / 100)`` in integers (no float rounding), at least 1."""
    return max(1, (q * n + 99) // 100)


def percentile(sorted_values: list[float], q: int) -> float | None:
    """Nearest-rank percentile (``0 < q <= 100``) of an ascending list; None when empty (the
    definition the windows keep without sorting: the tests and benches compare them with it)."""
    n = len(sorted_values)
    return sorted_values[nearest_rank(n, q) - 1] if n else None


@dataclass(slots=True)
class Sample:
    """One attempt as the windows count it. Not frozen: a frozen dataclass sets each field through
    ``object.__setattr__`` (0.5 µs a sample, one per event on the request path and in the
    history sink); nothing changes a sample once made."""

    t: datetime
    kind: Kind
    outcome: str
    latency_ms: float | None = None  # successes only
    ttft_ms: float | None = None  # successes only
    #: ``t`` as POSIX seconds, the windows' time column (an aware ``timestamp()`` costs about
    #: 0.6 µs, and a sample goes into 3 windows): computed once, here or by the caller
    ts: float = field(default=float("nan"), compare=False, repr=False)
    #: the windows' code column (the kind's code, TIMEOUT_BIT for a timeout): computed once
    code: int = field(default=-1, compare=False, repr=False)
    #: the value buckets of the latency and the time to first token (:func:`bucket`): computed once
    latency_bucket: int = field(default=-1, compare=False, repr=False)
    ttft_bucket: int = field(default=-1, compare=False, repr=False)

    def __post_init__(self) -> None:
        if self.ts != self.ts:  # NaN: not given
            self.ts = self.t.timestamp()
        if self.code < 0:
            self.code = _code(self.kind, self.outcome)
        if self.latency_bucket < 0:
            self.latency_bucket = bucket(self.latency_ms)
        if self.ttft_bucket < 0:
            self.ttft_bucket = bucket(self.ttft_ms)

    @classmethod
    def of(cls, event: UsageEvent, ts: float | None = None) -> Sample:
        """The sample of an event; ``ts``: its ``created_at.timestamp()`` if the caller has it."""
        at = event.created_at.timestamp() if ts is None else ts
        outcome = event.outcome
        kind, code = _CODED.get(outcome) or _coded(outcome)
        if kind == "rate_limited" and event.error_code == DAILY_QUOTA:
            # one model out of its day's quota: Google degraded until midnight by its rate-limit
            # rate while its other models served (a re-test)
            kind, code = _NEUTRAL
        if code == 0:  # a success
            return cls(event.created_at, kind, outcome, event.latency_ms, event.ttft_ms, at, code)
        return cls(event.created_at, kind, outcome, None, None, at, code)


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


#: a sample's class in the window's code column; TIMEOUT_BIT marks a ``timeout`` outcome
_KIND_CODES: dict[Kind, int] = {"success": 0, "failure": 1, "rate_limited": 2, "neutral": 3}
TIMEOUT_BIT = 4
_NONE = float("nan")  # "no latency" in the float columns


def _code(kind: Kind, outcome: str) -> int:
    """A sample's window code: its kind's, with TIMEOUT_BIT for a timeout."""
    return _KIND_CODES[kind] | (TIMEOUT_BIT if outcome in TIMEOUTS else 0)


def _coded(outcome: str) -> tuple[Kind, int]:
    kind = classify(outcome)
    return kind, _code(kind, outcome)


#: the class and window code of every known outcome (``_coded`` for the others)
_CODED: dict[str, tuple[Kind, int]] = {outcome: _coded(outcome) for outcome in get_args(Outcome)}

_NEUTRAL: tuple[Kind, int] = ("neutral", _code("neutral", "client_error"))

#: upper bounds of the value buckets, log-spaced from 0.05 ms to 20 minutes (each about 7% wider
#: than the one before); a value's bucket is 1 + the number of bounds at or below it, so 1 to 255,
#: and the bucket order is the value order by construction (a bisection, no rounding of a log)
_BOUNDS = [0.05 * 24_000_000 ** (i / 253) for i in range(254)]
NO_VALUE = 0  # the bucket of "no latency"


def bucket(value: float | None) -> int:
    """The value bucket of a latency in ms (:data:`NO_VALUE` for None)."""
    return NO_VALUE if value is None else bisect_right(_BOUNDS, value) + 1


class RollingWindow:
    """The samples of the last ``seconds`` of event time, with running counts.

    Cost per event is O(1) amortized: samples are appended in time order (an out-of-order one
    is inserted in place), eviction moves a start index over the old ones (the columns are
    compacted once a fifth of them is dead), and every count, including the number of latencies
    above the configured p95 limits (``latency_limit``, ``ttft_limit``), is kept incrementally.
    The rules' "p95 above the limit" test reads those counts: with ``n`` values and nearest rank
    ``r = ceil(0.95 n)``, ``sorted[r - 1] > limit`` exactly when more than ``n - r`` values are
    above the limit. Percentile values themselves are computed when read (a snapshot, a
    transition, the health API), without sorting the window: each latency and time to first
    token also has its value bucket (:func:`bucket`, one byte in a ``bytearray`` column) and each
    bucket a running count, so the rank's bucket is found from 255 counts, its values are
    picked out with ``bytearray.find`` (memchr) and only they are sorted. With 180,000 samples
    (a minute at 3,000 events/s) a snapshot took 50 ms of CPU and 11.5 MB of Python lists when
    the whole window was sorted, once a minute on the embedded gateway's event loop and at every
    read of the health API. The four values are kept until the window changes.

    Memory: a window holds every attempt of the last ``seconds`` (tens of thousands a minute
    under load), so it keeps no object per sample. Four ``array`` columns hold the event time
    (POSIX seconds: ``datetime.timestamp()`` keeps the microsecond order and equality of
    aware datetimes), the kind and timeout code, the latency and the time to first token (NaN
    for none), and two ``bytearray`` columns their value buckets: 27 bytes a sample, nothing for
    the garbage collector to walk. A ``keyed`` window
    adds a fifth, a 64-bit key per sample (the view's event-id hash), and answers
    :meth:`holds`: which events it counts, with no set of ids beside it.
    """

    def __init__(
        self,
        seconds: float,
        *,
        latency_limit: float | None = None,
        ttft_limit: float | None = None,
        keyed: bool = False,
    ) -> None:
        self.seconds = seconds
        self.latency_limit = latency_limit
        self.ttft_limit = ttft_limit
        self._span = timedelta(seconds=seconds)
        # the samples, ascending time from self._start on
        self._t = array("d")
        self._code = array("B")
        self._latency = array("d")
        self._ttft = array("d")
        self._latency_bucket = bytearray()
        self._ttft_bucket = bytearray()
        self._key = array("q") if keyed else None
        self._columns: tuple[array[float] | array[int] | bytearray, ...] = (
            self._t,
            self._code,
            self._latency,
            self._ttft,
            self._latency_bucket,
            self._ttft_bucket,
        )
        if self._key is not None:
            self._columns += (self._key,)
        self._start = 0
        # live counts, plain attributes: the rules read them on every event
        self.successes = self.failures = self.rate_limited = self.neutral = self.judged = 0
        self._timeouts = 0
        self._latencies = 0  # samples with a latency (successes)
        self._ttfts = 0
        self._latencies_over = 0  # ... above latency_limit
        self._ttfts_over = 0
        # samples per value bucket (NO_VALUE's too), for the percentiles
        self._latency_counts = [0] * 256
        self._ttft_counts = [0] * 256
        self._percentiles: _Percentiles | None = None  # cached until the window changes

    def __len__(self) -> int:
        return len(self._t) - self._start

    def add(self, sample: Sample, key: int = 0) -> None:
        """Count ``sample``; ``key``: its key in a keyed window (see :meth:`holds`)."""
        t = sample.ts
        code = sample.code
        latency = _NONE if sample.latency_ms is None else sample.latency_ms
        ttft = _NONE if sample.ttft_ms is None else sample.ttft_ms
        latency_bucket, ttft_bucket = sample.latency_bucket, sample.ttft_bucket
        times, keys = self._t, self._key
        if len(times) == self._start or t >= times[-1]:
            times.append(t)
            self._code.append(code)
            self._latency.append(latency)
            self._ttft.append(ttft)
            self._latency_bucket.append(latency_bucket)
            self._ttft_bucket.append(ttft_bucket)
            if keys is not None:
                keys.append(key)
        else:  # out of order (another partition, another replica): keep the columns sorted
            at = bisect_right(times, t, lo=self._start)
            times.insert(at, t)
            self._code.insert(at, code)
            self._latency.insert(at, latency)
            self._ttft.insert(at, ttft)
            self._latency_bucket.insert(at, latency_bucket)
            self._ttft_bucket.insert(at, ttft_bucket)
            if keys is not None:
                keys.insert(at, key)
        self._count(code, latency, ttft, latency_bucket, ttft_bucket, 1)

    def holds(self, ts: float, key: int) -> bool:
        """Whether a sample at ``ts`` (POSIX seconds) with ``key`` is in this keyed window
        (until evicted). A new event, later than every sample, costs one comparison; an
        older one a binary search and a look at the samples of its exact time."""
        times, keys = self._t, self._key
        if keys is None or len(times) == self._start or ts > times[-1]:
            return False
        at, end = bisect_left(times, ts, lo=self._start), len(times)
        while at < end and times[at] == ts:
            if keys[at] == key:
                return True
            at += 1
        return False

    def _count(self, code: int, latency: float, ttft: float, latency_bucket: int, ttft_bucket: int, step: int) -> None:
        self._latency_counts[latency_bucket] += step
        self._ttft_counts[ttft_bucket] += step
        kind = code & 3
        if kind == 3:
            self.neutral += step
        else:
            self.judged += step
            if kind == 0:
                self.successes += step
            elif kind == 1:
                self.failures += step
            else:
                self.rate_limited += step
        if code & TIMEOUT_BIT:
            self._timeouts += step
        if latency == latency:  # not NaN
            self._latencies += step
            if self.latency_limit is not None and latency > self.latency_limit:
                self._latencies_over += step
        if ttft == ttft:
            self._ttfts += step
            if self.ttft_limit is not None and ttft > self.ttft_limit:
                self._ttfts_over += step
        self._percentiles = None

    def evict(self, now: datetime) -> None:
        """Drop the samples older than ``now - seconds``."""
        self.evict_before((now - self._span).timestamp())

    def evict_before(self, cutoff: float) -> None:
        """Drop the samples older than ``cutoff``: ``(now - seconds).timestamp()``."""
        times, start = self._t, self._start
        end = len(times)
        if start == end or times[start] >= cutoff:
            return
        codes, latencies, ttfts, count = self._code, self._latency, self._ttft, self._count
        latency_buckets, ttft_buckets = self._latency_bucket, self._ttft_bucket
        while start < end and times[start] < cutoff:
            count(codes[start], latencies[start], ttfts[start], latency_buckets[start], ttft_buckets[start], -1)
            start += 1
        # compact once the dead prefix is a fifth of the columns: they hold at most 1.25 times the
        # window (twice it, compacted at half: 11 MB more a view at 3,000 events/s); moving the
        # live samples is a memmove of about 160 bytes per evicted sample, amortized
        if start * 5 >= end:
            for column in self._columns:
                del column[:start]
            start = 0
        self._start = start

    def clear(self) -> None:
        for column in self._columns:
            del column[:]
        self._start = 0
        self.successes = self.failures = self.rate_limited = self.neutral = self.judged = 0
        self._timeouts = self._latencies = self._ttfts = self._latencies_over = self._ttfts_over = 0
        self._latency_counts = [0] * 256
        self._ttft_counts = [0] * 256
        self._percentiles = None

    # --- live evidence for the rules (gateway.health.rules.Evidence), as of the last evict ---------
    def p95_latency_above(self, limit: float) -> bool:
        if limit == self.latency_limit:
            return _p95_above(self._latencies, self._latencies_over)
        return _above(self._quantiles().p95_latency_ms, limit)

    def p95_ttft_above(self, limit: float) -> bool:
        if limit == self.ttft_limit:
            return _p95_above(self._ttfts, self._ttfts_over)
        return _above(self._quantiles().p95_ttft_ms, limit)

    def _quantiles(self) -> _Percentiles:
        if self._percentiles is None:
            self._percentiles = _Percentiles(
                *self._pick(self._latency, self._latency_bucket, self._latency_counts, self._latencies),
                *self._pick(self._ttft, self._ttft_bucket, self._ttft_counts, self._ttfts),
            )
        return self._percentiles

    def _pick(
        self, values: array[float], buckets: bytearray, counts: list[int], n: int
    ) -> tuple[float | None, float | None]:
        """The nearest-rank p50 and p95 of the ``n`` live values of a column: each rank's bucket
        from the running counts, then that bucket's values alone sorted (once when both ranks
        fall in it)."""
        if n == 0:
            return None, None
        found: list[float] = []
        at, below, picked, picked_at = NO_VALUE + 1, 0, [0.0], -1
        for q in (50, 95):
            rank = nearest_rank(n, q)
            while below + counts[at] < rank:
                below += counts[at]
                at += 1
            if at != picked_at:
                picked, picked_at = self._bucket_values(values, buckets, at, counts[at]), at
            found.append(picked[rank - below - 1])
        return found[0], found[1]

    def _bucket_values(self, values: array[float], buckets: bytearray, at: int, count: int) -> list[float]:
        """The live values of bucket ``at`` (``count`` of them), ascending: picked one by one with
        ``bytearray.find`` (memchr) when the bucket is a small part of the window, in one pass
        with ``itertools.compress`` when it is a large one (latencies in a narrow range)."""
        start = self._start
        if count * 16 > len(values) - start:
            return sorted(compress(values[start:], map(at.__eq__, buckets[start:])))
        find, picked = buckets.find, []
        i = find(at, start)
        while i >= 0:
            picked.append(values[i])
            i = find(at, i + 1)
        picked.sort()
        return picked

    def stats(self, now: datetime) -> WindowStats:
        self.evict(now)
        p = self._quantiles()
        return WindowStats(
            window_seconds=self.seconds,
            window_end=now,
            attempts=len(self),
            successes=self.successes,
            failures=self.failures,
            rate_limited=self.rate_limited,
            timeouts=self._timeouts,
            neutral=self.neutral,
            p50_latency_ms=p.p50_latency_ms,
            p95_latency_ms=p.p95_latency_ms,
            p50_ttft_ms=p.p50_ttft_ms,
            p95_ttft_ms=p.p95_ttft_ms,
        )


class _Percentiles(NamedTuple):
    p50_latency_ms: float | None
    p95_latency_ms: float | None
    p50_ttft_ms: float | None
    p95_ttft_ms: float | None


def _p95_above(n: int, over: int) -> bool:
    """Whether the nearest-rank p95 of ``n`` values, ``over`` of them above a limit, is above it."""
    return n > 0 and over > n - nearest_rank(n, 95)


def _above(value: float | None, limit: float) -> bool:
    return value is not None and value > limit
