"""The request path's metric series render exactly what prometheus_client's Counter and
Histogram render for the same updates (only the ``_created`` timestamps differ)."""

from __future__ import annotations

import math
import random
import re

import pytest
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest

from gateway.metric_series import CounterSeries, HistogramSeries, SeriesCollector
from gateway.metrics import LATENCY_BUCKETS, GatewayMetrics

_CREATED = re.compile(rb"^(\w+_created\{[^}]*\}) \S+$", re.M)


def _without_created_values(text: bytes) -> bytes:
    return _CREATED.sub(rb"\1 <t>", text)


def test_series_render_like_prometheus_client_for_random_updates() -> None:
    rng = random.Random(7)
    reference = CollectorRegistry(auto_describe=True)
    counter = Counter("t_calls", "calls by provider and kind", ["provider", "kind"], registry=reference)
    histogram = Histogram("t_seconds", "latency", ["provider"], buckets=LATENCY_BUCKETS, registry=reference)
    mine = CollectorRegistry(auto_describe=True)
    calls = CounterSeries("t_calls", "calls by provider and kind", ["provider", "kind"])
    seconds = HistogramSeries("t_seconds", "latency", ["provider"], LATENCY_BUCKETS)
    mine.register(SeriesCollector([calls, seconds]))
    # values on and around every bucket bound, tiny, huge, integer and fractional amounts
    edges = [b for bound in LATENCY_BUCKETS for b in (bound, math.nextafter(bound, 0), math.nextafter(bound, 9e9))]
    for _ in range(3000):
        provider = rng.choice(["openai", "azure", "anthropic", 'we"ird\\name'])
        kind = rng.choice(["prompt", "completion"])
        amount = rng.choice([1, 7, 0.25, 1e-9, 12345.678])
        counter.labels(provider, kind).inc(amount)
        calls.inc((provider, kind), amount)
        value = rng.choice([*edges, 0.0, 1e-7, 500.0, rng.uniform(0, 130)])
        histogram.labels(provider).observe(value)
        seconds.observe((provider,), value)
    expected, got = generate_latest(reference), generate_latest(mine)
    assert b"t_seconds_created" in got and b"t_calls_created" in got
    assert _without_created_values(got) == _without_created_values(expected)


def test_gateway_metrics_count_an_event_and_a_request() -> None:
    from decimal import Decimal

    from tests.unit.test_hot_path import _event

    metrics = GatewayMetrics()
    for _ in range(3):
        metrics.observe_event(_event(cost_usd=Decimal("0.000150")))
    metrics.observe_request("/v1/chat/completions", 200, 0.012)
    text = metrics.render().decode()
    labels = 'model="gpt-4o-2024-08-06",outcome="success",provider="openai"'
    assert f"llm_gateway_attempts_total{{{labels}}} 3.0" in text
    assert 'llm_gateway_cost_usd_total{model="gpt-4o-2024-08-06",provider="openai"} 0.00045' in text
    assert 'llm_gateway_request_seconds_bucket{le="0.025",route="/v1/chat/completions"} 1.0' in text
    assert 'llm_gateway_request_seconds_bucket{le="0.01",route="/v1/chat/completions"} 0.0' in text
    assert 'llm_gateway_requests_total{route="/v1/chat/completions",status="200"} 1.0' in text
    assert "llm_gateway_spool_depth 0.0" in text


def test_client_chosen_model_names_make_a_bounded_number_of_series() -> None:
    """Any gpt-... name goes upstream as is: 1,000 made-up names must not become 1,000 series
    (each kept by the gateway and stored by Prometheus for good)."""
    from gateway.metrics import MAX_MODEL_LABELS, OTHER_MODELS
    from tests.unit.test_hot_path import _event

    metrics = GatewayMetrics()
    for i in range(1000):
        metrics.observe_event(_event(served_model=f"gpt-client-chosen-{i}", provider_model=f"gpt-client-chosen-{i}"))
    text = metrics.render().decode()
    attempts = [line for line in text.splitlines() if line.startswith("llm_gateway_attempts_total{")]
    assert len(attempts) == MAX_MODEL_LABELS + 1
    other = f'llm_gateway_attempts_total{{model="{OTHER_MODELS}",outcome="success",provider="openai"}}'
    assert f"{other} {1000 - MAX_MODEL_LABELS}.0" in text
    assert 'model="gpt-client-chosen-0"' in text and 'model="gpt-client-chosen-999"' not in text
    metrics.observe_event(_event(served_model="gpt-client-chosen-5", provider_model="gpt-client-chosen-5"))
    assert 'llm_gateway_attempts_total{model="gpt-client-chosen-5",outcome="success",provider="openai"} 2.0' in (
        metrics.render().decode()
    )


def test_a_model_its_provider_does_not_have_takes_no_label_of_its_own() -> None:
    """Made-up names the provider answers 404 for used up the labels, and every real model
    after them counted as ``other`` until a restart (review: 205 junk names, then a real call)."""
    from gateway.metrics import MAX_MODEL_LABELS, OTHER_MODELS
    from tests.unit.test_hot_path import _event

    metrics = GatewayMetrics()
    for i in range(MAX_MODEL_LABELS + 5):
        junk = f"gpt-4-junk-{i}"
        metrics.observe_event(_event(outcome="model_not_found", served_model=None, provider_model=junk))
    metrics.observe_event(_event(provider="anthropic", served_model="claude-3-haiku", provider_model="claude-3-haiku"))
    text = metrics.render().decode()
    assert 'llm_gateway_attempts_total{model="claude-3-haiku",outcome="success",provider="anthropic"} 1.0' in text
    other = f'llm_gateway_attempts_total{{model="{OTHER_MODELS}",outcome="model_not_found",provider="openai"}}'
    assert f"{other} {MAX_MODEL_LABELS + 5}.0" in text


@pytest.mark.parametrize("outcome", ["rate_limited", "upstream_error", "timeout", "connection_error"])
def test_made_up_names_that_only_fail_take_no_label_of_their_own(outcome: str) -> None:
    """A review: 220 made-up names, all rate limited, took the 200 labels, and gpt-4o's
    successes after them were counted as ``other`` until a restart. Failing names take at most
    half of the labels."""
    from gateway.metrics import MAX_MODEL_LABELS, OTHER_MODELS
    from tests.unit.test_hot_path import _event

    metrics = GatewayMetrics()
    for i in range(MAX_MODEL_LABELS + 20):
        junk = f"gpt-junk-{i}"
        metrics.observe_event(_event(outcome=outcome, served_model=None, provider_model=junk, billable=False))
    metrics.observe_event(_event(served_model="gpt-4o", provider_model="gpt-4o"))
    text = metrics.render().decode()
    assert 'llm_gateway_attempts_total{model="gpt-4o",outcome="success",provider="openai"} 1.0' in text
    assert f'llm_gateway_attempts_total{{model="gpt-junk-0",outcome="{outcome}",provider="openai"}} 1.0' in text
    other = f'llm_gateway_attempts_total{{model="{OTHER_MODELS}",outcome="{outcome}",provider="openai"}}'
    assert f"{other} {MAX_MODEL_LABELS // 2 + 20}.0" in text
    for i in range(MAX_MODEL_LABELS):  # successes take what is left, and no more
        metrics.observe_event(_event(served_model=f"gpt-real-{i}", provider_model=f"gpt-real-{i}"))
    text = metrics.render().decode()
    assert 'model="gpt-real-98"' in text and 'model="gpt-real-99"' not in text


def test_time_to_first_token_is_observed_for_streams_only() -> None:
    """A non-streaming answer's event carries its whole latency as its time to first token (what
    health wants); in the histogram it mixed complete calls into the first-token times."""
    from tests.unit.test_hot_path import _event

    metrics = GatewayMetrics()
    metrics.observe_event(_event(stream=False, latency_ms=1500.0, ttft_ms=1500.0))
    metrics.observe_event(_event(stream=True, latency_ms=900.0, ttft_ms=120.0))
    text = metrics.render().decode()
    assert 'llm_gateway_time_to_first_token_seconds_count{provider="openai"} 1.0' in text
    assert 'llm_gateway_time_to_first_token_seconds_sum{provider="openai"} 0.12' in text
    assert 'llm_gateway_attempt_seconds_count{provider="openai"} 2.0' in text
