"""Provider health: exact windows and percentiles, thresholds, the circuit breaker, its log."""

from __future__ import annotations

import itertools
import logging
import tracemalloc
from datetime import UTC, datetime, timedelta

import pytest

from gateway.events import UsageEvent
from gateway.health.config import HealthSettings
from gateway.health.rules import decide
from gateway.health.transitions import ALL_MODELS, HealthTransition, transition_rows
from gateway.health.view import HealthView
from gateway.health.window import RollingWindow, Sample, classify, percentile
from tests.support.fakes import ManualClock

T0 = datetime(2026, 1, 1, tzinfo=UTC)
_ids = itertools.count(1)


def ev(
    outcome: str = "success",
    *,
    at: datetime,
    provider: str = "openai",
    model: str = "gpt-4",
    latency: float = 100.0,
    ttft: float | None = None,
    event_id: str | None = None,
) -> UsageEvent:
    n = next(_ids)
    return UsageEvent(
        event_id=event_id or f"ev-{n}",
        request_id=f"req-{n}",
        attempt=1,
        created_at=at,
        tenant_id="t",
        provider=provider,
        requested_model=model,
        provider_model=model,
        outcome=outcome,
        latency_ms=latency,
        ttft_ms=ttft,
    )


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock(T0)


def make_view(clock: ManualClock, **settings: object) -> tuple[HealthView, list[HealthTransition]]:
    seen: list[HealthTransition] = []
    view = HealthView(HealthSettings(**settings), clock=clock, listeners=[seen.append])
    return view, seen


def feed(view: HealthView, clock: ManualClock, *outcomes: str, step: float = 1.0, **kw: object) -> None:
    for outcome in outcomes:
        clock.advance(step)
        assert view.apply(ev(outcome, at=clock.now, **kw))


# --- windows and percentiles -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("values", "q", "expected"),
    [
        ([], 50, None),
        ([7.0], 50, 7.0),
        ([7.0], 95, 7.0),
        ([1.0, 2.0, 3.0], 50, 2.0),
        ([1.0, 2.0, 3.0], 95, 3.0),
        ([float(v) for v in range(1, 21)], 50, 10.0),
        ([float(v) for v in range(1, 21)], 95, 19.0),
        ([float(v) for v in range(1, 101)], 95, 95.0),
        ([float(v) for v in range(1, 101)], 100, 100.0),
    ],
)
def test_nearest_rank_percentile(values: list[float], q: int, expected: float | None) -> None:
    assert percentile(values, q) == expected


def test_outcome_classes() -> None:
    assert classify("success") == "success"
    for failure in (
        "timeout",
        "upstream_error",
        "overloaded",
        "connection_error",
        "malformed_response",
        "stream_cut",
        "auth_error",
        "quota_exhausted",
    ):
        assert classify(failure) == "failure"
    assert classify("rate_limited") == "rate_limited"
    for neutral in ("client_error", "content_filtered", "model_not_found", "cancelled"):
        assert classify(neutral) == "neutral"


def test_window_stats_are_exact(clock: ManualClock) -> None:
    view, _ = make_view(clock)
    for i, latency in enumerate([600.0, 100.0, 500.0, 200.0, 400.0, 300.0]):
        view.apply(ev(at=T0 + timedelta(seconds=i), latency=latency, ttft=latency / 10))
    view.apply(ev("timeout", at=T0 + timedelta(seconds=6), latency=2000.0))
    view.apply(ev("upstream_error", at=T0 + timedelta(seconds=7), latency=5.0))
    view.apply(ev("rate_limited", at=T0 + timedelta(seconds=8)))
    view.apply(ev("client_error", at=T0 + timedelta(seconds=9)))
    clock.advance(10)
    stats = view.health("openai").stats
    assert (stats.attempts, stats.successes, stats.failures, stats.rate_limited, stats.timeouts, stats.neutral) == (
        10,
        6,
        2,
        1,
        1,
        1,
    )
    assert stats.judged == 9
    assert stats.failure_rate == pytest.approx(2 / 9)
    assert stats.rate_limit_rate == pytest.approx(1 / 9)
    assert stats.timeout_rate == pytest.approx(1 / 9)
    # successes only: [100..600] -> p50 = 3rd value, p95 = 6th value; failures' latencies excluded
    assert (stats.p50_latency_ms, stats.p95_latency_ms) == (300.0, 600.0)
    assert (stats.p50_ttft_ms, stats.p95_ttft_ms) == (30.0, 60.0)
    assert stats.window_end == clock.now and stats.window_seconds == 60.0


def test_window_evicts_by_event_time_inclusive_boundary(clock: ManualClock) -> None:
    window = RollingWindow(60)
    window.add(Sample(T0, "failure", "timeout"))
    window.add(Sample(T0 + timedelta(seconds=30), "success", "success", 50.0, 5.0))
    window.add(Sample(T0 + timedelta(seconds=10), "success", "success", 10.0, None))  # out of order
    stats = window.stats(T0 + timedelta(seconds=60))  # T0 is exactly 60 s old: still in
    assert (stats.attempts, stats.failures, stats.timeouts, stats.p50_latency_ms) == (3, 1, 1, 10.0)
    stats = window.stats(T0 + timedelta(seconds=60, microseconds=1))
    assert (stats.attempts, stats.failures, stats.timeouts, stats.successes) == (2, 0, 0, 2)
    stats = window.stats(T0 + timedelta(seconds=70, microseconds=1))
    assert (stats.attempts, stats.p50_latency_ms, stats.p95_latency_ms, stats.p50_ttft_ms) == (1, 50.0, 50.0, 5.0)
    stats = window.stats(T0 + timedelta(seconds=91))
    assert (stats.attempts, stats.p50_latency_ms, stats.p50_ttft_ms, stats.failure_rate) == (0, None, None, 0.0)


@pytest.mark.parametrize("seed", range(8))
def test_window_percentiles_are_the_nearest_rank_of_the_live_values(seed: int) -> None:
    """The window finds its percentiles from value buckets without sorting itself: they must be
    exactly the nearest-rank percentiles of the live values, through ties, values on and beyond
    the bucket bounds (0, under 0.05 ms, over 20 minutes), late samples, evictions, compaction
    and a clear."""
    import random

    from gateway.health.window import _BOUNDS

    rng = random.Random(seed)
    window = RollingWindow(30)
    live: list[tuple[datetime, float | None, float | None]] = []
    specials = [0.0, 0.01, _BOUNDS[0], _BOUNDS[1], _BOUNDS[100], _BOUNDS[-1], 5e6, 250.0, 250.0]

    def value() -> float:
        return rng.choice(specials) if rng.random() < 0.3 else rng.lognormvariate(rng.choice([2, 6]), 1.5)

    now = T0
    for step in range(2500):
        now += timedelta(milliseconds=rng.choice([1, 20, 300, 1500]))
        at = now - timedelta(seconds=rng.choice([0, 0, 0, 3, 20]))
        if rng.random() < 0.8:
            latency, ttft = value(), rng.choice([None, value()])
            window.add(Sample(at, "success", "success", latency, ttft))
        else:
            latency = ttft = None
            window.add(Sample(at, "failure", "upstream_error"))
        live.append((at, latency, ttft))
        if step == 1200:
            window.clear()
            live.clear()
        if step % 7 == 0:
            stats = window.stats(now)
            cutoff = now - timedelta(seconds=30)
            live = [s for s in live if s[0] >= cutoff]
            latencies = sorted(s[1] for s in live if s[1] is not None)
            ttfts = sorted(s[2] for s in live if s[2] is not None)
            assert stats.attempts == len(live), step
            assert (stats.p50_latency_ms, stats.p95_latency_ms) == (
                percentile(latencies, 50),
                percentile(latencies, 95),
            ), step
            assert (stats.p50_ttft_ms, stats.p95_ttft_ms) == (percentile(ttfts, 50), percentile(ttfts, 95)), step


def test_a_window_snapshot_sorts_no_copy_of_the_window() -> None:
    """A snapshot of 100,000 latencies (half a minute at 3,000 events/s) used to sort every
    value of the window into two Python lists: 4.4 MB allocated (tracemalloc on the code
    before), and 22 to 50 ms of CPU per window on the event loop, at each minute's health
    history snapshot and each read of the health API. It now sorts only the rank's bucket."""
    import random

    rng = random.Random(5)
    window = RollingWindow(600)
    for n in range(100_000):
        window.add(Sample(T0 + timedelta(milliseconds=n), "success", "success", rng.lognormvariate(6, 1), None))
    tracemalloc.start()
    try:
        stats = window.stats(T0 + timedelta(seconds=100))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert stats.attempts == 100_000 and stats.p50_latency_ms is not None
    assert peak < 500_000, peak


@pytest.mark.parametrize("seed", range(6))
def test_live_window_judges_exactly_like_its_stats_snapshot(seed: int) -> None:
    """The view judges each event on the window's live counters (O(1): counts above the p95
    limits) and words reasons from a stats snapshot (sorted percentiles): both must always agree,
    through out-of-order samples, evictions and compaction."""
    import random

    rng = random.Random(seed)
    config = HealthSettings(degraded_p95_latency_ms=500.0, degraded_p95_ttft_ms=80.0)
    window = RollingWindow(60, latency_limit=500.0, ttft_limit=80.0)
    outcomes = ["success"] * 6 + ["timeout", "upstream_error", "rate_limited", "client_error"]
    now = T0
    for step in range(3000):
        now += timedelta(milliseconds=rng.choice([1, 50, 400, 2500]))
        at = now - timedelta(seconds=rng.choice([0, 0, 0, 5, 30]))  # some arrive late
        outcome = rng.choice(outcomes)
        if outcome == "success":
            window.add(Sample(at, "success", outcome, rng.uniform(10, 900), rng.choice([None, rng.uniform(5, 120)])))
        else:
            window.add(Sample(at, classify(outcome), outcome))
        window.evict(now)
        stats = window.stats(now)
        for limit in (500.0, 123.0):  # the configured limit (counters) and another (percentiles)
            assert window.p95_latency_above(limit) == stats.p95_latency_above(limit), step
        assert window.p95_ttft_above(80.0) == stats.p95_ttft_above(80.0), step
        assert (window.judged, window.failures, window.rate_limited) == (
            stats.judged,
            stats.failures,
            stats.rate_limited,
        )
        for previous in ("healthy", "degraded"):
            live = decide(window, step % 7, config, previous=previous)
            assert live == decide(stats, step % 7, config, previous=previous), step


def test_events_stamped_ahead_of_the_views_clock_count_as_now(clock: ManualClock) -> None:
    """Another replica's clock 50 min ahead: its 5 failures opened the circuit here until 50 min
    later (retry_at ahead by the skew), and its ids were kept for as long."""
    from datetime import timedelta

    view, _ = make_view(clock)
    ahead = clock.now + timedelta(minutes=50)
    for i in range(5):
        assert view.apply(ev("upstream_error", at=ahead + timedelta(seconds=i)))
    health = view.health("openai")
    assert health.circuit == "open" and health.retry_at is not None
    assert health.retry_at <= clock.now + timedelta(seconds=view.config.cooldown_seconds)
    clock.advance(view.config.cooldown_seconds + view.config.window_seconds + 1)
    view.apply(ev("success", at=clock.now))
    assert len(view._ahead) == 0  # the future ids were forgotten with their window


def test_apply_is_idempotent_and_ignores_events_older_than_the_window(clock: ManualClock) -> None:
    view, _ = make_view(clock)
    event = ev("timeout", at=T0)
    assert view.apply(event) is True
    assert view.apply(event) is False
    assert view.apply(ev("timeout", at=T0 - timedelta(seconds=61))) is False
    assert view.health("openai").stats.attempts == 1
    assert view.health("openai").consecutive_failures == 1


def test_per_model_breakdown(clock: ManualClock) -> None:
    view, _ = make_view(clock)
    feed(view, clock, *["upstream_error"] * 4, model="gpt-4")
    feed(view, clock, *["success"] * 6, model="gpt-4o", latency=80.0)
    health = view.health("openai")
    assert set(health.models) == {"gpt-4", "gpt-4o"}
    gpt4, gpt4o = health.models["gpt-4"], health.models["gpt-4o"]
    assert (gpt4.stats.attempts, gpt4.stats.failures, gpt4.consecutive_failures) == (4, 4, 4)
    assert (gpt4o.stats.attempts, gpt4o.stats.p50_latency_ms, gpt4o.state) == (6, 80.0, "healthy")
    assert health.stats.attempts == 10 and health.circuit == "closed"
    # 4 of 10 failed for the provider as a whole: degraded, not down
    assert health.state == "degraded" and "failure rate 40% >= 20%" in health.reason


def test_idle_models_are_forgotten_and_client_chosen_names_stay_bounded(clock: ManualClock) -> None:
    """Model names come from clients: a track per name ever seen grew without end, and the
    health API listed every one of them an hour later, with 0 attempts."""
    from gateway.health.view import MODEL_SWEEP_AT

    view, _ = make_view(clock)
    feed(view, clock, *["upstream_error"] * 5, model="gpt-4")  # down: kept while it says so
    most = 0
    for i in range(1000):  # a new made-up name every second, for 1,000 s
        feed(view, clock, "success", model=f"gpt-client-{i}")
        most = max(most, len(view._providers["openai"].models))
    assert most <= 2 * (60 + MODEL_SWEEP_AT)  # about what a 60 s window holds, not 1,000
    clock.advance(61)
    health = view.health("openai")
    assert set(health.models) == {"gpt-4"}  # down by its run of failures: still reported
    assert health.models["gpt-4"].state == "down"
    feed(view, clock, "success", model="gpt-4")  # its run ends: idle and healthy after a window
    clock.advance(61)
    assert view.health("openai").models == {}


@pytest.mark.parametrize("outcome", ["rate_limited", "upstream_error"])
def test_a_burst_of_made_up_model_names_takes_a_bounded_number_of_tracks(clock: ManualClock, outcome: str) -> None:
    """A review: 15,000 made-up names in 20 s took a track each (about 5 KB, in each of the
    embedded serve's two views: +210 MB), a history row each and an entry each in the health
    API (6.9 MB). A name the provider said it does not have takes none; past MAX_MODEL_TRACKS
    active ones, an attempt counts for the provider alone; the tracks come back as they idle."""
    from gateway.health.view import MAX_MODEL_TRACKS

    view, seen = make_view(clock)
    feed(view, clock, *["upstream_error"] * 10, model="gpt-real")  # a real model, down
    feed(view, clock, *["success"] * 5, model="gpt-4")  # the provider recovers meanwhile
    for i in range(1000):
        assert view.apply(ev("model_not_found", at=clock.now, model=f"gpt-404-{i}"))
    assert set(view.health("openai").models) == {"gpt-real", "gpt-4"}
    for i in range(3 * MAX_MODEL_TRACKS):  # within one window
        clock.advance(0.05)
        assert view.apply(ev(outcome, at=clock.now, model=f"gpt-made-up-{i}"))
    assert len(view._providers["openai"].models) == MAX_MODEL_TRACKS
    health = view.health("openai")
    assert len(health.models) == MAX_MODEL_TRACKS and health.stats.attempts == 1015 + 3 * MAX_MODEL_TRACKS
    clock.advance(61)  # the window passes: the made-up names idle (a run of one failure each)
    feed(view, clock, "success", model="gpt-4o")
    # the down model stays (forgotten, it would go from down to nothing without a transition)
    assert set(view._providers["openai"].models) == {"gpt-real", "gpt-4o"}
    assert view.health("openai").models["gpt-real"].state == "down"
    feed(view, clock, "success", model="gpt-real")
    assert [t.current for t in seen if t.model == "gpt-real"][-1] == "healthy"


# --- thresholds ------------------------------------------------------------------------------------


def test_client_errors_never_count_against_a_provider(clock: ManualClock) -> None:
    view, _ = make_view(clock)
    feed(view, clock, *["client_error"] * 20, *["content_filtered"] * 5, "success")
    health = view.health("openai")
    assert (health.state, health.circuit, health.stats.judged, health.stats.failure_rate) == ("healthy", "closed", 1, 0)
    assert view.gate("openai")


def test_degraded_by_failure_rate_needs_enough_attempts(clock: ManualClock) -> None:
    view, _ = make_view(clock)
    feed(view, clock, "upstream_error", "success", "success", "success")
    assert view.health("openai").state == "healthy"  # 4 judged < degraded_min_attempts (5)
    feed(view, clock, "success")
    health = view.health("openai")
    assert health.state == "degraded"
    assert health.reason == "failure rate 20% >= 20% over 5 attempts in the last 60s"


def test_degraded_by_rate_limits_which_are_not_failures(clock: ManualClock) -> None:
    view, _ = make_view(clock)
    feed(view, clock, *["rate_limited"] * 2, *["success"] * 8)
    assert view.health("openai").state == "healthy"
    feed(view, clock, "rate_limited")  # 3 of 11 = 27 %
    assert view.health("openai").state == "healthy"
    feed(view, clock, "rate_limited")  # 4 of 12 = 33 %
    health = view.health("openai")
    assert (health.state, health.stats.failures, health.consecutive_failures) == ("degraded", 0, 0)
    assert health.reason.startswith("rate-limit rate 33% >= 30%")
    feed(view, clock, *["rate_limited"] * 20)
    assert view.gate("openai") and view.health("openai").circuit == "closed"


def test_degraded_by_p95_latency(clock: ManualClock) -> None:
    view, _ = make_view(clock, degraded_p95_latency_ms=1000.0)
    feed(view, clock, *["success"] * 19, latency=200.0)
    feed(view, clock, "success", latency=5000.0)  # 1 of 20: the p95 is the 19th value
    assert view.health("openai").state == "healthy"
    feed(view, clock, "success", latency=5000.0)
    health = view.health("openai")
    assert (health.state, health.stats.p95_latency_ms) == ("degraded", 5000.0)
    assert health.reason == "p95 latency 5000 ms > 1000 ms"


def test_degraded_state_recovers_as_failures_leave_the_window(clock: ManualClock) -> None:
    view, seen = make_view(clock)
    feed(view, clock, "upstream_error", *["success"] * 4)
    assert view.health("openai").state == "degraded"
    clock.advance(57)  # the failure (at T0+1) is now 61 s old
    assert view.health("openai").state == "healthy"
    assert [(t.model, t.previous, t.current) for t in seen if t.model is None] == [
        (None, "healthy", "degraded"),
        (None, "degraded", "healthy"),
    ]


@pytest.mark.parametrize(("after", "recovered"), [(0, False), (1, True)])
def test_apply_judges_at_the_exact_edge_of_the_window(clock: ManualClock, after: int, recovered: bool) -> None:
    """The transitions ``apply`` emits use the same inclusive boundary as the stats: a failure
    exactly 60 s old still counts (1 of 6, 17%, keeps a degraded provider and model degraded
    while recovering), one microsecond later it is gone (0 of 5: healthy)."""
    view, seen = make_view(clock)
    feed(view, clock, "upstream_error", *["success"] * 4)  # the failure at T0+1: degraded
    clock.now = T0 + timedelta(seconds=61, microseconds=after)
    assert view.apply(ev("success", at=clock.now))
    back = [(t.model, t.current) for t in seen if t.previous == "degraded"]
    assert back == ([(None, "healthy"), ("gpt-4", "healthy")] if recovered else [])


def test_down_by_failure_rate(clock: ManualClock) -> None:
    view, seen = make_view(clock)
    feed(view, clock, *["upstream_error", "success"] * 4, "upstream_error")
    assert view.health("openai").circuit == "closed"  # 9 judged < down_min_attempts (10)
    feed(view, clock, "success")
    assert view.health("openai").circuit == "closed"  # 5 of 10 = 50 %: trips only on a failure
    feed(view, clock, "timeout")  # 6 of 11 = 55 %
    health = view.health("openai")
    assert (health.state, health.circuit) == ("down", "open")
    [opened] = [t for t in seen if t.kind == "circuit"]
    assert opened.reason == "failure rate 55% >= 50% over 11 attempts in the last 60s"


# --- the circuit breaker ------------------------------------------------------------------------


def test_breaker_opens_half_opens_lets_one_probe_and_closes(
    clock: ManualClock, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="gateway.health")
    view, seen = make_view(clock)
    feed(view, clock, "success", *["timeout"] * 4)
    assert view.gate("openai")
    feed(view, clock, "timeout")  # the 5th in a row, at T0+6
    opened_at = clock.now
    health = view.health("openai")
    assert (health.state, health.circuit, health.consecutive_failures) == ("down", "open", 5)
    assert health.opened_at == opened_at and health.retry_at == opened_at + timedelta(seconds=30)
    assert not view.gate("openai")
    clock.advance(29.999)
    assert not view.gate("openai")
    clock.advance(0.001)
    assert view.gate("openai") is True  # the probe
    assert view.health("openai").circuit == "half_open" and view.health("openai").probe_in_flight
    assert [view.gate("openai") for _ in range(3)] == [False, False, False]  # one probe at a time
    clock.advance(0.5)
    view.apply(ev("success", at=clock.now))
    health = view.health("openai")
    # closed; the failures still in the window keep it "degraded" until they age out
    assert (health.state, health.circuit, health.consecutive_failures) == ("degraded", "closed", 0)
    assert view.gate("openai") and view.gate("openai")

    assert [(t.previous, t.current) for t in seen if t.kind == "circuit"] == [
        ("closed", "open"),
        ("open", "half_open"),
        ("half_open", "closed"),
    ]
    records = [(r.levelno, r.getMessage()) for r in caplog.records if r.name == "gateway.health"]
    circuit = [r for r in records if r[1].startswith("circuit openai")]
    assert circuit == [
        (
            logging.WARNING,
            "circuit openai: closed -> open (5 consecutive failures: timeout, timeout, timeout, timeout, timeout)",
        ),
        (logging.INFO, "circuit openai: open -> half_open (cool-down of 30s elapsed; letting one probe through)"),
        (logging.INFO, "circuit openai: half_open -> closed (probe succeeded after 30.5s)"),
    ]
    health_lines = [r for r in records if r[1].startswith("health openai:")]
    assert health_lines == [
        (
            logging.WARNING,
            "health openai: healthy -> degraded (failure rate 80% >= 20% over 5 attempts in the last 60s)",
        ),
        (
            logging.WARNING,
            "health openai: degraded -> down (circuit open: 5 consecutive failures: timeout, timeout, "
            "timeout, timeout, timeout)",
        ),
        (logging.WARNING, "health openai: down -> degraded (failure rate 71% >= 20% over 7 attempts in the last 60s)"),
    ]
    clock.advance(60)
    assert view.health("openai").state == "healthy"


def test_failed_probe_reopens_with_a_growing_capped_cooldown(clock: ManualClock) -> None:
    view, seen = make_view(clock, cooldown_seconds=30, cooldown_multiplier=2, max_cooldown_seconds=100)
    feed(view, clock, *["upstream_error"] * 5)
    waits = []
    for _ in range(4):
        health = view.health("openai")
        wait = (health.retry_at - clock.now).total_seconds()  # type: ignore[operator]
        waits.append(wait)
        clock.advance(wait - 1)
        assert not view.gate("openai")
        clock.advance(1)
        assert view.gate("openai")
        view.apply(ev("connection_error", at=clock.now))
        assert view.health("openai").circuit == "open"
    assert waits == [30, 60, 100, 100]
    assert [t.reason for t in seen if t.kind == "circuit" and t.previous == "half_open"] == [
        "probe failed (connection_error); cool-down now 60s",
        "probe failed (connection_error); cool-down now 100s",
        "probe failed (connection_error); cool-down now 100s",
        "probe failed (connection_error); cool-down now 100s",
    ]
    clock.advance(100)
    assert view.gate("openai")
    view.apply(ev("success", at=clock.now))
    health = view.health("openai")
    assert health.circuit == "closed" and health.cooldown_seconds == 30  # reset once closed


def test_half_open_probe_slot_is_freed_by_a_neutral_outcome_or_a_timeout(clock: ManualClock) -> None:
    view, _ = make_view(clock, probe_timeout_seconds=20)
    feed(view, clock, *["timeout"] * 5)
    clock.advance(30)
    assert view.gate("openai") and not view.gate("openai")
    view.apply(ev("rate_limited", at=clock.now))  # alive but throttled: proves nothing
    assert view.health("openai").circuit == "half_open"
    assert view.gate("openai") and not view.gate("openai")
    clock.advance(19)
    assert not view.gate("openai")
    clock.advance(1)  # the probe's outcome never came: another request may probe
    assert view.gate("openai") and not view.gate("openai")


def test_attempts_in_flight_when_the_circuit_opened_do_not_close_it(clock: ManualClock) -> None:
    view, _ = make_view(clock)
    feed(view, clock, *["timeout"] * 5)
    opened = clock.now
    clock.advance(31)
    view.apply(ev("success", at=opened + timedelta(seconds=10)))  # ended during the cool-down
    assert view.health("openai").circuit == "half_open"
    view.apply(ev("success", at=opened + timedelta(seconds=30)))  # ended after it: a probe outcome
    assert view.health("openai").circuit == "closed"


def test_after_closing_only_new_attempts_can_reopen(clock: ManualClock) -> None:
    view, _ = make_view(clock)
    feed(view, clock, *["timeout"] * 5, step=0.1)
    clock.advance(30)
    assert view.gate("openai")
    view.apply(ev("success", at=clock.now))
    # the window still holds 5 failures of 6 attempts, but they were judged already
    feed(view, clock, "timeout", "timeout", "success", "timeout")
    assert view.health("openai").circuit == "closed"
    view.apply(ev("timeout", at=clock.now - timedelta(seconds=40)))  # older than the close
    assert view.health("openai").consecutive_failures == 1
    feed(view, clock, *["timeout"] * 4)
    assert view.health("openai").circuit == "open"


def test_breaker_off_reports_down_but_never_skips(clock: ManualClock) -> None:
    view, _ = make_view(clock, circuit_breaker=False)
    feed(view, clock, *["timeout"] * 5)
    assert view.health("openai").state == "down"
    assert all(view.gate("openai") for _ in range(3))
    feed(view, clock, "success", step=31)
    assert view.health("openai").circuit == "closed"


def test_unknown_providers_are_open_and_healthy(clock: ManualClock) -> None:
    view, _ = make_view(clock)
    assert view.gate("anthropic")
    health = view.health("anthropic")
    assert (health.state, health.circuit, health.stats.attempts, health.models) == ("healthy", "closed", 0, {})
    assert view.providers() == []


def test_observer_never_raises(clock: ManualClock, caplog: pytest.LogCaptureFixture) -> None:
    view, _ = make_view(clock)

    def broken(_: HealthTransition) -> None:
        raise RuntimeError("listener bug")

    view.listeners.append(broken)
    caplog.set_level(logging.ERROR, logger="gateway.health")
    feed(view, clock, *["timeout"] * 4)
    view.observe(ev("timeout", at=clock.now))
    assert any("could not apply" in r.getMessage() for r in caplog.records)


# --- history rows ---------------------------------------------------------------------------------


def test_transitions_become_history_rows_one_per_key_and_instant(clock: ManualClock) -> None:
    view, seen = make_view(clock)
    feed(view, clock, *["timeout"] * 5, latency=1500.0)
    rows = transition_rows(seen)
    by_model = {row.model: row for row in rows}
    assert set(by_model) == {ALL_MODELS, "gpt-4"}
    provider = by_model[ALL_MODELS]
    assert (provider.provider, provider.window_end, provider.state, provider.circuit) == (
        "openai",
        clock.now,
        "down",
        "open",
    )
    assert (provider.attempts, provider.failures, provider.timeouts, provider.rate_limited) == (5, 5, 5, 0)
    assert (provider.p50_ms, provider.p95_ms) == (None, None)  # no success in the window
    assert provider.reason is not None
    assert provider.reason.startswith("circuit openai: closed -> open (5 consecutive failures")
    assert "; health openai: healthy -> down" in provider.reason
    model = by_model["gpt-4"]
    assert (model.state, model.circuit) == ("down", None)


def test_a_rate_hovering_at_the_threshold_does_not_flap(clock: ManualClock) -> None:
    view, seen = make_view(clock, circuit_breaker=False, down_consecutive_failures=100, down_min_attempts=1000)
    # about 1 timeout in 5 attempts: the failure rate crosses 20% (the degraded threshold) up
    # and down on almost every event, but never falls below 15% (the recovery bar)
    for _ in range(30):
        feed(view, clock, "timeout", "success", "success", "success", "success", "success", step=0.1)
        feed(view, clock, "timeout", "success", "success", "success", step=0.1)
    provider_changes = [t for t in seen if t.model is None and t.kind == "state"]
    assert [(t.previous, t.current) for t in provider_changes] == [("healthy", "degraded")]
    # well below the bar (here 0% over the window): healthy again
    clock.advance(61)
    feed(view, clock, *["success"] * 10, step=0.1)
    assert view.health("openai").state == "healthy"


# --- the replica sync's records ----------------------------------------------------------------
def test_sync_skips_its_own_events_undecoded_and_applies_the_others(
    clock: ManualClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    from gateway.health.kafka_sync import KafkaHealthSync

    view, _ = make_view(clock)
    sync = KafkaHealthSync(view, "unused:9092", "llm.usage")
    own = ev("success", at=clock.now, event_id="0193a6c2-7d1e-7000-8000-000000000001")
    view.observe(own)  # the recorder's observer counted it when it happened
    other = ev("upstream_error", at=clock.now, event_id="0193a6c2-7d1e-7000-8000-000000000002")

    decoded: list[bytes | str] = []
    import gateway.health.kafka_sync as sync_module

    real = sync_module.decode_event
    monkeypatch.setattr(sync_module, "decode_event", lambda data: decoded.append(data) or real(data))
    sync.apply(own.to_json())
    assert (decoded, sync.known) == ([], 1)  # known by its id: never decoded
    sync.apply(other.to_json())
    assert (
        decoded == [other.to_json()]
        and view.has_counted("openai", clock.now.timestamp(), other.event_id)
        and sync.known == 1
    )
    assert view.health("openai").stats.attempts == 2
    # an id quoted inside another field is not taken for the record's own
    tricky = ev("success", at=clock.now, event_id="0193a6c2-7d1e-7000-8000-000000000003")
    raw = tricky.to_json().replace(
        b'"schema_version":1,', b'"schema_version":1,"x":"\\"event_id\\":\\"' + own.event_id.encode() + b'\\"",', 1
    )
    sync.apply(raw)
    assert view.has_counted("openai", clock.now.timestamp(), tricky.event_id) and sync.known == 1
    # an event the view cannot apply is skipped: raised, it stopped the sync for good
    monkeypatch.setattr(view, "apply", lambda event: 1 / 0)
    sync.apply(ev("success", at=clock.now).to_json())


# --- memory under load ---------------------------------------------------------------------------


def test_the_view_keeps_no_object_per_event_for_the_collector_to_walk(clock: ManualClock) -> None:
    """A minute of attempts at a few thousand per second is a hundred thousand samples or more
    in every window. The garbage collector's full collections walk every tracked object, and a
    Sample per event (the old window) paused the gateway for tens of ms each time."""
    import gc

    view, _ = make_view(clock)
    events = [
        ev(("success", "timeout", "rate_limited")[n % 3], at=T0 + timedelta(microseconds=n)) for n in range(20_000)
    ]
    view.apply(events[0])
    gc.collect()
    tracked = len(gc.get_objects())
    for event in events[1:]:
        assert view.apply(event)
    gc.collect()
    assert len(gc.get_objects()) - tracked < 1000  # was 20,000: one Sample per event
    assert view.health("openai").stats.attempts == len(events)


def test_a_window_holds_a_sample_in_27_bytes() -> None:
    """Time, kind and timeout code, latency and time to first token in array columns, and the
    two latencies' value buckets: 27 bytes a sample plus the columns' spare room (a Sample
    object with its time and latency floats was about 170)."""
    import tracemalloc

    window = RollingWindow(60, latency_limit=500.0)
    times = [T0 + timedelta(microseconds=n) for n in range(20_000)]  # an event's, made before
    tracemalloc.start()
    try:
        before = tracemalloc.take_snapshot()
        for n, at in enumerate(times):  # the samples, like the events' latencies, do not outlive the call
            window.add(Sample(at, "success", "success", n + 0.5, 2.0))
        grown = sum(s.size_diff for s in tracemalloc.take_snapshot().compare_to(before, "filename"))
    finally:
        tracemalloc.stop()
    assert grown / len(times) < 32, grown / len(times)
    assert window.stats(T0).p50_latency_ms == 9_999.5


def test_forgotten_ids_free_their_memory(clock: ManualClock) -> None:
    view, _ = make_view(clock, window_seconds=10)
    times = []
    for n in range(3000):
        clock.now = T0 + timedelta(milliseconds=10 * n)  # 30 s of events, 10 s kept
        times.append(clock.now.timestamp())
        assert view.apply(ev("success", at=clock.now, event_id=f"id-{n}"))
    assert view.health("openai").stats.attempts == 1001  # the last 10 s, both ends inclusive
    assert not view.has_counted("openai", times[0], "id-0")
    assert view.has_counted("openai", times[2999], "id-2999") and view.has_counted("openai", times[1999], "id-1999")
    assert not view.apply(ev("success", at=T0 + timedelta(milliseconds=19_990), event_id="id-1999"))
    window = view._providers["openai"].track.window
    assert len(window._t) < 2 * 1001  # the forgotten front is compacted away


def test_a_duplicate_is_known_by_its_id_time_and_provider(clock: ManualClock) -> None:
    """The view knows the events it counts by their provider's window (time and id hash), with
    no set of ids beside it: duplicates are refused in or out of order, other events at the
    same instant are not, and an event stamped ahead is still known once the clock passes
    its stamp."""
    view, _ = make_view(clock, window_seconds=60)
    at = clock.now - timedelta(seconds=1)
    first = ev("success", at=at, event_id="a")
    assert view.apply(first)
    for n in range(1, 50):  # later events, then the duplicate out of order
        assert view.apply(ev("success", at=at + timedelta(milliseconds=n)))
    assert not view.apply(first) and not view.apply(first.model_copy())
    assert view.apply(ev("upstream_error", at=at, event_id="b"))  # same instant, another event
    assert view.apply(ev("success", at=at, provider="anthropic", event_id="c"))
    assert not view.apply(ev("upstream_error", at=at, event_id="b"))
    assert view.health("openai").stats.attempts == 51
    ahead = ev("success", at=clock.now + timedelta(seconds=5), event_id="d")
    assert view.apply(ahead)  # counted as now
    clock.advance(10)  # its own stamp is now in the window's past
    assert not view.apply(ahead) and view.health("openai").stats.attempts == 52
    assert len(view._ahead) == 1
    clock.advance(61)  # all gone with the window
    assert not view.has_counted("openai", at.timestamp(), "a")
    assert view.apply(ev("success", at=clock.now)) and len(view._ahead) == 0


def test_the_view_holds_an_event_in_less_than_100_bytes() -> None:
    """A counted event costs its samples in the provider's and the model's windows (the
    provider's with its id hash), not its id string: at a sustained 3,000 events/s the 60 s
    window holds 180,000 events, in each of the two views of an embedded ``serve``. With a
    set of the ids' hashes beside the windows an event cost about 177 bytes (measured on the
    code before); now about 87."""
    count = 100_000
    clock = ManualClock(T0 + timedelta(seconds=count / 1000))
    view = HealthView(HealthSettings(window_seconds=count / 1000), clock=clock)
    events = [
        ev("success", at=T0 + timedelta(milliseconds=n), event_id=f"0193d2c4-{n:04x}-7000-8000-{n:012x}")
        for n in range(count)
    ]
    tracemalloc.start()
    try:
        before = tracemalloc.take_snapshot()
        for event in events:
            assert view.apply(event)
        grown = sum(s.size_diff for s in tracemalloc.take_snapshot().compare_to(before, "filename"))
    finally:
        tracemalloc.stop()
    assert grown / count < 100, grown / count
    assert view.health("openai").stats.attempts == count


def test_a_run_of_successes_keeps_one_window_of_samples_in_the_breaker(clock: ManualClock) -> None:
    """The breaker's trip window was evicted only when a failure asked for the failure rate: a
    run of successes kept every sample since the circuit last closed, for good (25 bytes each,
    4.5 MB a minute at 3,000 events/s in each view), and the first failure then evicted them
    all in one call on the event loop."""
    view, _ = make_view(clock, window_seconds=10)
    for n in range(5000):  # 50 s of successes, 10 s kept
        clock.now = T0 + timedelta(milliseconds=10 * n)
        assert view.apply(ev("success", at=clock.now))
    trip = view._providers["openai"].breaker._trip
    assert len(trip) == 1001 and len(trip._t) < 2 * 1001
    feed(view, clock, *["upstream_error"] * 4, step=0.001)  # the rate is judged on the last 10 s only
    health = view.health("openai")
    assert health.circuit == "closed" and len(trip) == health.stats.attempts == 1004


def test_a_windows_columns_hold_at_most_a_quarter_more_than_the_window() -> None:
    """Evicted samples are compacted away once they are a fifth of the columns: compacted at
    half, the columns held up to twice the window (11 MB more a view at 3,000 events/s)."""
    window = RollingWindow(10)
    most = 0.0
    for n in range(5000):  # 50 s at 100 samples/s, 10 s kept
        at = T0 + timedelta(milliseconds=10 * n)
        window.add(Sample(at, "success", "success", 1.0))
        window.evict(at)
        most = max(most, len(window._t) / len(window))
    assert len(window) == 1001 and most <= 1.25, most


def test_the_half_open_transition_counts_what_came_before_it_not_the_event_that_found_it(
    clock: ManualClock,
) -> None:
    """With event time as the clock (the health history), nobody asks the gate between the
    cool-down's end and the next event: that event finds the circuit due for half-open. The
    transition is stamped at the cool-down's end, and its counts were taken with that event in
    them (review: attempts 6 and a p50 of the probe's 1,002 ms in the history's half_open row,
    where the window held 5 failures and no latency)."""
    view, seen = make_view(clock)
    feed(view, clock, *["upstream_error"] * 5)
    clock.advance(31)
    view.apply(ev("success", at=clock.now, latency=1002.0))
    [half_open] = [t for t in seen if (t.kind, t.current) == ("circuit", "half_open")]
    assert (half_open.stats.attempts, half_open.stats.failures, half_open.stats.p50_latency_ms) == (5, 5, None)


def test_failures_older_than_a_success_counted_do_not_make_a_run(clock: ManualClock) -> None:
    """A replica's spool forwarded after a broker outage: its 5 failures, older than successes
    the other replicas had already counted, arrived last and opened the circuit everywhere
    (the health-sync review), though the provider had worked since."""
    view, _ = make_view(clock, down_min_attempts=1000)  # the failure-rate rule out of the way
    clock.advance(10)
    failures_at = [clock.now - timedelta(seconds=9 - i) for i in range(5)]  # t-9 .. t-5
    assert view.apply(ev("success", at=clock.now - timedelta(seconds=2)))  # counted first
    for at in failures_at:  # then the late ones, older than it
        assert view.apply(ev("upstream_error", at=at))
    health = view.health("openai")
    assert (health.circuit, health.consecutive_failures) == ("closed", 0)
    # a success older than a run does not end it: 5 new failures open the circuit
    for _ in range(4):
        clock.advance(1)
        view.apply(ev("upstream_error", at=clock.now))
    assert view.apply(ev("success", at=clock.now - timedelta(seconds=30)))  # late, older than the run
    clock.advance(1)
    view.apply(ev("upstream_error", at=clock.now))
    assert view.health("openai").circuit == "open"


def test_a_wall_clock_stepped_back_does_not_hold_a_circuit_open_for_the_step(
    clock: ManualClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The clock review stepped the gateway's wall clock back an hour while a circuit was open:
    it stayed open for that hour (its calls on a fallback at 2.9x the price). The live view's
    cool-down and probe slot are also bounded on the steady clock."""
    from gateway.health import breaker as breaker_module

    steady = [1000.0]
    monkeypatch.setattr(breaker_module, "monotonic", lambda: steady[0])
    seen: list[HealthTransition] = []
    view = HealthView(HealthSettings(cooldown_seconds=30), clock=clock, listeners=[seen.append], steady=True)
    feed(view, clock, *["upstream_error"] * 5)
    assert view.health("openai").circuit == "open" and not view.gate("openai")
    clock.advance(-3600)  # the step back
    steady[0] += 31  # real time: the cool-down is over
    assert view.gate("openai")  # the probe goes
    assert not view.gate("openai")  # one at a time
    clock.advance(1)
    assert view.apply(ev("success", at=clock.now))  # the probe's answer, stamped by the stepped clock
    assert view.health("openai").circuit == "closed"

    # a probe whose answer never comes frees its slot after its timeout, in real time too
    feed(view, clock, *["upstream_error"] * 5)
    steady[0] += 31
    assert view.gate("openai")
    clock.advance(-600)
    steady[0] += HealthSettings().probe_timeout_seconds
    assert view.gate("openai")


def test_the_history_view_keeps_to_the_events_time(clock: ManualClock, monkeypatch: pytest.MonkeyPatch) -> None:
    """The history's clock is the events' time: real time passing does not end its cool-downs."""
    from gateway.health import breaker as breaker_module

    steady = [1000.0]
    monkeypatch.setattr(breaker_module, "monotonic", lambda: steady[0])
    view, _ = make_view(clock, cooldown_seconds=30)
    feed(view, clock, *["upstream_error"] * 5)
    steady[0] += 3600
    assert view.health("openai").circuit == "open" and not view.gate("openai")


def test_another_replicas_auth_and_connection_errors_are_its_own(clock: ManualClock) -> None:
    """One replica's bad key opened the provider's circuit on every replica (the health-sync
    review): the sync does not count another replica's auth or connection errors; its other
    failures it does."""
    from gateway.health.kafka_sync import KafkaHealthSync

    view, _ = make_view(clock)
    sync = KafkaHealthSync(view, "127.0.0.1:1", "llm.usage")
    for outcome in ("auth_error", "connection_error"):
        for _ in range(6):
            clock.advance(1)
            sync.apply(ev(outcome, at=clock.now).to_json())
    assert view.health("openai").circuit == "closed"
    for _ in range(5):
        clock.advance(1)
        sync.apply(ev("upstream_error", at=clock.now).to_json())
    assert view.health("openai").circuit == "open"


def test_a_success_that_arrives_late_ends_only_the_failures_before_it(clock: ManualClock) -> None:
    """Another replica's success comes through the sync a moment late, inside a local run: it
    ends the failures before it, not the run after it (a diff review: 5 counted where 2
    followed the last success, and the circuit opened)."""
    view, _ = make_view(clock, down_min_attempts=1000)
    start = clock.now
    for second in (1, 2, 3, 4):
        clock.advance(1)
        view.apply(ev("upstream_error", at=start + timedelta(seconds=second)))
    clock.advance(1)
    view.apply(ev("success", at=start + timedelta(seconds=3.5)))  # between the 3rd and the 4th
    view.apply(ev("upstream_error", at=clock.now))
    health = view.health("openai")
    assert (health.circuit, health.consecutive_failures) == ("closed", 2)


def test_a_clock_stepped_back_still_counts_a_run_of_failures(clock: ManualClock) -> None:
    """After an NTP step back every new attempt is older than the last success counted before
    it: the run of failures never grew, and a provider gone down kept its traffic (a diff
    review). Times ahead of the clock are taken as now."""
    view, _ = make_view(clock, down_min_attempts=1000)
    feed(view, clock, "success")
    clock.advance(-3600)
    feed(view, clock, *["upstream_error"] * 5)
    assert view.health("openai").circuit == "open"


def test_after_a_step_back_the_probe_closes_the_circuit_and_retry_after_is_real_time(
    clock: ManualClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A re-test: a circuit closed once before, opened again, then the clock stepped back an
    hour. The probe's success was older than the last close and was dropped: half-open for the
    hour; and the 503's retry-after said 3623 s for a probe 24 s away."""
    from gateway.health import breaker as breaker_module

    steady = [1000.0]
    monkeypatch.setattr(breaker_module, "monotonic", lambda: steady[0])
    view = HealthView(HealthSettings(cooldown_seconds=30), clock=clock, steady=True)
    feed(view, clock, *["upstream_error"] * 5)
    steady[0] += 31
    clock.advance(31)
    assert view.gate("openai")
    feed(view, clock, "success")  # closed once
    assert view.health("openai").circuit == "closed"
    feed(view, clock, *["upstream_error"] * 5)  # open again
    clock.advance(-3600)
    steady[0] += 6
    assert view.reopens_in("openai") == pytest.approx(24, abs=1)
    steady[0] += 25
    assert view.gate("openai")
    feed(view, clock, "success")  # the probe's answer, stamped by the stepped clock
    assert view.health("openai").circuit == "closed"


def test_a_success_after_a_step_back_ends_the_failures_before_the_step(clock: ManualClock) -> None:
    """A re-test: 4 failures, the clock stepped back, successes (stamped before those failures)
    did not end the run, and one more failure opened the circuit."""
    view, _ = make_view(clock, down_min_attempts=1000)
    feed(view, clock, *["upstream_error"] * 4)
    clock.advance(-5)
    feed(view, clock, "success")
    assert view.health("openai").consecutive_failures == 0
    feed(view, clock, "upstream_error")
    health = view.health("openai")
    assert (health.circuit, health.consecutive_failures) == ("closed", 1)


def test_a_provider_full_of_down_names_forgets_the_idle_ones_saying_so(clock: ManualClock) -> None:
    """A diff review: 256 names down by five failures each kept every place for good once the
    full sweep kept degraded and down tracks, and a real model then had no track until a restart.
    Idle ones that are not healthy are forgotten when the provider is still full, each with a
    transition that says why."""
    from gateway.health.view import MAX_MODEL_TRACKS

    view, seen = make_view(clock, circuit_breaker=False)
    for i in range(MAX_MODEL_TRACKS):
        feed(view, clock, *["timeout"] * 5, step=0.01, model=f"gpt-broken-{i}")
    assert len(view._providers["openai"].models) == MAX_MODEL_TRACKS
    assert view.health("openai").models["gpt-broken-0"].state == "down"
    clock.advance(3600)
    feed(view, clock, "success", "success", model="gpt-4o")
    assert set(view._providers["openai"].models) == {"gpt-4o"}
    forgotten = [t for t in seen if t.model == "gpt-broken-0" and t.current == "healthy"]
    assert len(forgotten) == 1 and forgotten[0].reason.startswith("forgotten: no attempt in the window")


@pytest.mark.parametrize("scenario", ["closed", "degraded", "open", "half_open"])
def test_the_providers_states_for_the_metrics_are_healths(clock: ManualClock, scenario: str) -> None:
    """The metrics' scrape reads the providers' states without the models' statistics (health()
    made them all: 50 ms a scrape at 5 x 256 models); the states are health()'s."""
    view, _ = make_view(clock)
    feed(view, clock, *["success"] * 8, model="gpt-4o")
    if scenario == "degraded":
        feed(view, clock, "upstream_error", "success", "upstream_error")
    if scenario in ("open", "half_open"):
        feed(view, clock, *["upstream_error"] * 5)
    if scenario == "half_open":
        clock.advance(31)
    states = view.provider_states()
    health = view.health("openai")
    assert states == {"openai": (health.state, health.circuit)}
    assert health.circuit == {"open": "open", "half_open": "half_open"}.get(scenario, "closed")
