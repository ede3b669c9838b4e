"""Prometheus metrics, per app (no global registry), fed by usage events and the request path.

Cost counters are floats by Prometheus' nature: they are for dashboards and alerts; the exact
figures live in the cost stores (DuckDB, Postgres), which are Decimal end to end.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable
from typing import Any, Protocol

from aiohttp import web
from aiohttp.typedefs import Handler, Middleware
from prometheus_client import CollectorRegistry, Gauge, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from gateway.events import UsageEvent
from gateway.health.view import HealthView
from gateway.metric_series import CounterSeries, HistogramSeries, SeriesCollector

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)
#: distinct ``model`` label values a process reports; later ones are counted under OTHER_MODELS.
#: Model names come from clients (any ``gpt-...`` name goes upstream as is), and every distinct
#: label value is a series the gateway keeps and Prometheus stores for good
MAX_MODEL_LABELS = 200
OTHER_MODELS = "other"


class GatewayMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        # the request path's series (see gateway/metric_series.py): plain numbers until scraped
        self.requests = CounterSeries("llm_gateway_requests", "HTTP requests by route and status", ["route", "status"])
        self.request_latency = HistogramSeries(
            "llm_gateway_request_seconds", "HTTP request latency", ["route"], LATENCY_BUCKETS
        )
        self.attempts = CounterSeries(
            "llm_gateway_attempts", "Provider attempts by outcome", ["provider", "model", "outcome"]
        )
        self.attempt_latency = HistogramSeries(
            "llm_gateway_attempt_seconds", "Provider attempt latency", ["provider"], LATENCY_BUCKETS
        )
        self.ttft = HistogramSeries(
            "llm_gateway_time_to_first_token_seconds",
            "Time to first token of successful streaming attempts",
            ["provider"],
            LATENCY_BUCKETS,
        )
        self.tokens = CounterSeries(
            "llm_gateway_tokens", "Tokens by provider, model and kind", ["provider", "model", "kind"]
        )
        self.cost = CounterSeries(
            "llm_gateway_cost_usd", "Cost in USD (approximate float; exact in the stores)", ["provider", "model"]
        )
        self.unpriced = CounterSeries(
            "llm_gateway_unpriced_attempts", "Billable attempts without a known price", ["provider", "model"]
        )
        self.errors = CounterSeries(
            "llm_gateway_error_answers",
            "Error answers by their OpenAI error code; circuits_open: every provider skipped, none tried; "
            "tenant_rate_limited: a tenant over its rate limit",
            ["code"],
        )
        r.register(
            SeriesCollector(
                [
                    self.requests,
                    self.request_latency,
                    self.attempts,
                    self.attempt_latency,
                    self.ttft,
                    self.tokens,
                    self.cost,
                    self.unpriced,
                    self.errors,
                ]
            )
        )
        # an open circuit sends no attempt, so the attempts' error rate goes quiet while a
        # provider is still down (a review): these say what the circuits and health say
        self.provider_circuit = Gauge(
            "llm_gateway_provider_circuit",
            "Circuit per provider: 0 closed, 1 half-open, 2 open",
            ["provider"],
            registry=r,
        )
        self.provider_health = Gauge(
            "llm_gateway_provider_health",
            "Health per provider: 0 healthy, 1 degraded, 2 down",
            ["provider"],
            registry=r,
        )
        self.spool_depth = Gauge("llm_gateway_spool_depth", "Usage events not yet on the durable log", registry=r)
        self.event_log_up = Gauge(
            "llm_gateway_event_log_up",
            "1 while usage events reach the durable log, 0 while they wait (/healthz eventLog says why)",
            registry=r,
        )
        self.consumer_lag = Gauge(
            "llm_gateway_consumer_lag", "Events on the log not yet projected", ["group"], registry=r
        )
        self.consumer_dead_lettered = Gauge(
            "llm_gateway_consumer_dead_lettered",
            "Records this process's projector dead-lettered since it started (undecodable, or refused by a store)",
            ["group"],
            registry=r,
        )
        self._gauges: list[Callable[[], None]] = []
        self._model_labels: set[str] = set()
        #: labels taken by a name's failure, before any success of it (see _model_label)
        self._failed_labels = 0

    def observe_event(self, event: UsageEvent) -> None:
        """Count one attempt (on the event loop's thread: the series take no lock)."""
        outcome = event.outcome
        model = self._model_label(event.served_model or event.provider_model, outcome)
        provider = event.provider
        self.attempts.inc((provider, model, outcome))
        self.attempt_latency.observe((provider,), event.latency_ms / 1000.0)
        # streams only: a non-streaming answer's event carries its whole latency as its first token
        if outcome == "success" and event.stream and event.ttft_ms is not None:
            self.ttft.observe((provider,), event.ttft_ms / 1000.0)
        if event.prompt_tokens:
            self.tokens.inc((provider, model, "prompt"), event.prompt_tokens)
        if event.completion_tokens:
            self.tokens.inc((provider, model, "completion"), event.completion_tokens)
        if event.billable:
            if event.cost_usd is None:
                self.unpriced.inc((provider, model))
            elif event.cost_usd:
                self.cost.inc((provider, model), float(event.cost_usd))

    def _model_label(self, model: str, outcome: str) -> str:
        """``model`` while it may take one of the MAX_MODEL_LABELS labels, else OTHER_MODELS.
        Model names are the clients': made-up names would use up the labels, and every real
        model after them would count as OTHER_MODELS until a restart. So a name its provider said
        it does not have (``model_not_found``) takes no label of its own, and names that have
        only failed (rate limited, timed out, ...) take at most half of them: a burst of made-up
        names all rate limited took the 200 labels just the same (a review); a success (a model
        its provider served) takes any label left."""
        labels = self._model_labels
        if model in labels:
            return model
        if len(labels) < MAX_MODEL_LABELS and outcome != "model_not_found":
            if outcome == "success":
                labels.add(model)
                return model
            if self._failed_labels < MAX_MODEL_LABELS // 2:
                self._failed_labels += 1
                labels.add(model)
                return model
        return OTHER_MODELS

    def observe_error(self, code: str) -> None:
        """Count an error answer by its code (one of the gateway's own: a bounded set)."""
        self.errors.inc((code,))

    def observe_request(self, route: str, status: int, seconds: float) -> None:
        self.requests.inc((route, str(status)))
        self.request_latency.observe((route,), seconds)

    def on_scrape(self, refresh: Callable[[], None]) -> None:
        """Register a callback that refreshes gauges (spool depth, lag) at scrape time."""
        self._gauges.append(refresh)

    def render(self) -> bytes:
        for refresh in self._gauges:
            refresh()
        return generate_latest(self.registry)


#: an attribute true on a prepared answer (a stream) whose client left before its end: counted
#: as 499, as nginx counts it
CLIENT_LEFT = "client_left"

METRICS: web.AppKey[GatewayMetrics] = web.AppKey("metrics", GatewayMetrics)
#: the authenticator ``GET /metrics`` asks for an admin key (``metrics_auth``); absent: open
METRICS_AUTH: web.AppKey[Any] = web.AppKey("metrics_auth", object)


def metrics_middleware(metrics: GatewayMetrics, inner: Middleware | None = None) -> Middleware:
    """Count and time every request. ``inner``, if given, runs inside this one as a plain call
    (one aiohttp middleware layer instead of two on every request)."""

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        started = time.monotonic()
        resource = request.match_info.route.resource
        route = resource.canonical if resource else "unmatched"
        status = 500
        try:
            response = await (handler(request) if inner is None else inner(request, handler))
            status = response.status
            if (
                getattr(response, CLIENT_LEFT, False)
                if response.prepared
                else (transport := request.transport) is None or transport.is_closing()
            ):
                # its client left before the answer (an SDK's timeout, then its retry): the call
                # ran and is billed, nobody read it. 499 as nginx counts it, not a 200 (a review
                # read three billed calls behind one SDK call, all "200", none delivered)
                status = 499
            return response
        finally:
            metrics.observe_request(route, status, time.monotonic() - started)

    return middleware


async def metrics_handler(request: web.Request) -> web.Response:
    auth = request.app.get(METRICS_AUTH)
    if auth is not None and not auth.authenticate(request).admin:
        # the metrics name every model called, fine-tunes included (``ft:...:acme::x``): whose
        from gateway.errors import PermissionDenied

        raise PermissionDenied(
            "the metrics take an admin API key (metrics_auth): they name every tenant's models and budgets"
        )
    body = request.app[METRICS].render()
    return web.Response(body=body, headers={"content-type": CONTENT_TYPE_LATEST})


class _HasProjectorStats(Protocol):
    @property
    def projector(self) -> Any: ...


_CIRCUIT = {"closed": 0, "half_open": 1, "open": 2}
_HEALTH = {"healthy": 0, "degraded": 1, "down": 2}


def watch_health(metrics: GatewayMetrics, view: HealthView, configured: Callable[[], Iterable[str]] = tuple) -> None:
    """Report each provider's circuit and health state (``HealthView``) at every scrape: the
    ``configured`` ones from the start (healthy and closed until their first attempt, as
    ``/v1/providers/health`` says; a review found no series for them, so an ``absent()`` alert
    could not tell "no traffic yet" from "not configured"), and any other the view has seen."""

    def refresh() -> None:
        # the providers' states alone: health() made every model's statistics and percentiles
        # (50 ms of the event loop a scrape with 5 providers of 256 models: a diff review)
        states = dict.fromkeys(configured(), ("healthy", "closed")) | view.provider_states()
        for name, (state, circuit) in states.items():
            metrics.provider_circuit.labels(name).set(_CIRCUIT.get(circuit, 2))
            metrics.provider_health.labels(name).set(_HEALTH.get(state, 2))

    metrics.on_scrape(refresh)


def watch_projector(metrics: GatewayMetrics, pipeline: _HasProjectorStats, group: str) -> None:
    """Report a projector's lag (events on the log not yet applied) at every scrape."""

    def refresh() -> None:
        lag, _ = pipeline.projector.stats.current_lag()
        # NaN while unknown (the log cannot say): 0 read as "caught up" during a broker outage
        metrics.consumer_lag.labels(group).set(lag if lag is not None else math.nan)
        metrics.consumer_dead_lettered.labels(group).set(pipeline.projector.stats.events_dead_lettered)

    metrics.on_scrape(refresh)
