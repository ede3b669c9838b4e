"""The health windows: the cost of counting an attempt and of a window's snapshot.

A provider's rolling window holds every attempt of the last minute (180,000 at 3,000 events/s).
Counting one (``add`` then ``evict_before``) runs on every event, on the gateway's request path
and in the health history sink; a snapshot (``stats``: counts and the p50/p95 latency and time
to first token) runs at each transition, each read of ``GET /v1/providers/health`` and once a
minute in the history sink, on the event loop of the embedded ``serve``.

The baseline, in the same run and over the same live values: sorting the window's values, what
a snapshot did before the value buckets (the old ``stats``), and the nearest rank read from the
sorted lists. The snapshot must agree with it exactly (checked here too)::

    python -m tests.bench.health_window [--samples 180000] [--rounds 5] [--smoke]
"""

from __future__ import annotations

import argparse
import random
import time
import tracemalloc
from datetime import UTC, datetime, timedelta

from gateway.health.window import RollingWindow, Sample, percentile
from tests.bench.common import fmt, say, table

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def samples(count: int, seconds: float, sigma: float, seed: int = 1) -> list[Sample]:
    """``count`` successes over ``seconds``: log-normal latencies (median 150 ms, ``sigma`` the
    spread of their log), a time to first token on every other one (a streaming call)."""
    rng = random.Random(seed)
    step = seconds / count
    return [
        Sample(
            T0 + timedelta(seconds=n * step),
            "success",
            "success",
            rng.lognormvariate(5, sigma),
            rng.lognormvariate(4, sigma) if n % 2 else None,
        )
        for n in range(count)
    ]


def sorted_baseline(window: RollingWindow) -> tuple[float | None, ...]:
    """The four percentiles the way a snapshot found them before: sort the live values."""
    start = window._start
    latencies = sorted([x for x in window._latency[start:] if x == x])
    ttfts = sorted([x for x in window._ttft[start:] if x == x])
    return (percentile(latencies, 50), percentile(latencies, 95), percentile(ttfts, 50), percentile(ttfts, 95))


def timed(call: object, rounds: int) -> tuple[float, float]:
    """Best-of-``rounds`` milliseconds of ``call()`` and its peak traced allocation in MB."""
    best = float("inf")
    for _ in range(rounds):
        began = time.perf_counter()
        call()  # type: ignore[operator]
        best = min(best, time.perf_counter() - began)
    tracemalloc.start()
    try:
        call()  # type: ignore[operator]
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    return best * 1000, peak / 1e6


#: the latencies' spread: real traffic's, and a narrow one (a fixed-delay upstream) whose values
#: crowd into a few buckets, the worst case of the bucket search
SPREADS = {"spread (sigma 1)": 1.0, "narrow (sigma 0.02)": 0.02}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--samples", type=int, default=180_000, help="live samples in the window")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--smoke", action="store_true", help="a seconds-long run (CI)")
    args = parser.parse_args()
    count = 20_000 if args.smoke else args.samples
    rows = []
    for name, sigma in SPREADS.items():
        rows += measure(name, count, sigma, args.rounds)
    print(
        table(
            ["latencies", "snapshot", "live samples", "add + evict µs", "ms (best)", "peak MB allocated", "x sorted"],
            rows,
        )
    )


def measure(name: str, count: int, sigma: float, rounds: int) -> list[list[str]]:
    window_seconds = 60.0
    feed = samples(2 * count, 2 * window_seconds, sigma)  # a window's worth, then as much again evicting
    window = RollingWindow(window_seconds, latency_limit=5000.0, ttft_limit=2000.0, keyed=True)
    began = time.perf_counter()
    for n, sample in enumerate(feed):
        window.add(sample, n)
        window.evict_before(sample.ts - window_seconds)
    add_us = fmt((time.perf_counter() - began) / len(feed) * 1e6)
    now = feed[-1].t

    def snapshot() -> tuple[float | None, ...]:
        window._percentiles = None  # as after a new event: the cache is gone
        stats = window.stats(now)
        return (stats.p50_latency_ms, stats.p95_latency_ms, stats.p50_ttft_ms, stats.p95_ttft_ms)

    expected = sorted_baseline(window)
    got = snapshot()
    if got != expected:
        raise SystemExit(f"{name}: the snapshot's percentiles {got} differ from the sorted window's {expected}")
    say(f"{name}: {len(window):,} live samples, percentiles equal to the sorted window's {expected}")
    base_ms, base_mb = timed(lambda: sorted_baseline(window), rounds)
    ms, mb = timed(snapshot, rounds)
    live = f"{len(window):,}"
    return [
        [name, "sorted window (baseline)", live, add_us, fmt(base_ms), fmt(base_mb), "1.00"],
        [name, "stats() (value buckets)", live, add_us, fmt(ms), fmt(mb), fmt(ms / base_ms)],
    ]


if __name__ == "__main__":
    main()
