"""Turn provider attempts into priced usage events, the cost log line, and the event log hand-off."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from contextvars import ContextVar
from dataclasses import dataclass, field, replace
from datetime import datetime
from decimal import Decimal

from gateway import json_log
from gateway.eventlog.base import EventLog
from gateway.events import Outcome, UsageEvent, version_for
from gateway.ids import Clock, uuid7_str
from gateway.json_log import FIELDS
from gateway.pricing.base import PriceBook, Quote, format_usd
from gateway.pricing.reprice import ZERO, quote_models, unseen_cost
from gateway.safe_text import log_value
from gateway.types import Usage

cost_log = logging.getLogger("gateway.cost")


@dataclass(slots=True)
class CancelledCall:
    """What a call cut off by a cancellation (a stop's timeout) had cost, written by the router
    for the HTTP layer's answer (``CANCELLED_CALL``): ``cost`` None is unknown; ``billed``: an
    attempt its provider may bill was made (a retry would be billed again); ``stream_open``: a
    stream had started (its answer's head may be on the wire: no other answer can follow)."""

    cost: Decimal | None = Decimal(0)
    attempts: int = 0
    billed: bool = False
    stream_open: bool = False


#: the call's :class:`CancelledCall`, set by whoever serves it (``gateway.api.calls.serve_call``)
CANCELLED_CALL: ContextVar[CancelledCall | None] = ContextVar("cancelled_call", default=None)
#: the longest model name a cost line holds (a client's is at most as long)
LOGGED_MODEL = 256
#: the most of a call's metadata a JSON cost line holds: characters of its keys and values, and
#: of one value. A call's 32 pairs of 512 emoji made a 67 KB line, split by log shippers at 16 KB
LOGGED_METADATA = 2048
LOGGED_METADATA_VALUE = 256
log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class CallContext:
    """What one client request is, for every event it produces."""

    request_id: str
    tenant_id: str
    api_key_id: str | None
    endpoint: str  # "chat.completions" | "completions" | "embeddings"
    stream: bool
    requested_model: str
    #: the providers the call's API key may use (None: any); the router tries no other
    providers: frozenset[str] | None = None
    #: the call's metadata, on each of its events (``gateway/api/metadata.py``); never changed
    #: (each event gets its own copy: pydantic's dict validation makes one)
    metadata: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class AttemptFacts:
    number: int
    provider: str
    provider_model: str
    outcome: Outcome
    latency_ms: float
    ttft_ms: float | None = None
    http_status: int | None = None
    error_code: str | None = None
    error_message: str | None = None
    served_model: str | None = None
    usage: Usage | None = None
    incomplete: bool = False
    #: the provider bills the attempt though its usage was not seen (``ProviderError.billed_unseen``)
    billed: bool = False


def _billed_unseen(facts: AttemptFacts) -> bool:
    """Whether an attempt without token counts may still be billed by its provider: it served
    the call without a usage report (a stream whose api-version ignores ``stream_options``), or
    it had started answering when the stream was cut or the client went away."""
    if facts.billed:
        return True
    if facts.outcome == "cancelled":
        return facts.incomplete
    return facts.outcome in ("success", "stream_cut") and (facts.usage is None or facts.incomplete)


class UsageRecorder:
    def __init__(
        self,
        event_log: EventLog,
        price_book: PriceBook,
        *,
        clock: Clock,
        id_factory: Callable[[], object] = uuid7_str,
        instance: str | None = None,
        observers: list[Callable[[UsageEvent], None]] | None = None,
        defer_observers: bool = False,
        group_commit: bool = False,
    ) -> None:
        self._log = event_log
        #: ``stage`` (durable by the end of the loop turn; the caller awaits ``settled`` before
        #: it answers) or ``publish`` (durable on return)
        self._publish = event_log.stage if group_commit else event_log.publish
        self._prices = price_book
        self._clock = clock
        self._ids = id_factory
        self._instance = instance
        self.observers = observers if observers is not None else []
        #: run the observers (health, metrics) on the next loop turn, after the caller's answer
        #: is written, in one callback for every event of the turn: they are in-memory views,
        #: not the record (the event is handed to the log first)
        self.defer_observers = defer_observers
        self._deferred: list[UsageEvent] = []

    @property
    def price_version(self) -> str:
        """The version of the prices new calls are priced with (it changes when the price file
        is reloaded)."""
        return self._prices.version

    def quote(self, provider: str, models: list[str | None], usage: Usage, at: datetime | None = None) -> Quote:
        """Price by the served model (authoritative), else by the model we asked for."""
        return quote_models(self._prices, provider, models, usage, self._clock() if at is None else at)

    def record(self, ctx: CallContext, facts: AttemptFacts) -> UsageEvent:
        now = self._clock()  # one instant: the event's time is the time it is priced at (as replay does)
        if facts.usage is not None and not facts.usage.plausible():
            log.warning(
                "%s reported an impossible usage for request %s (%s): recorded as usage unknown",
                facts.provider,
                ctx.request_id,
                facts.usage,
            )
            facts = replace(facts, usage=None)
        usage = facts.usage
        billable = usage is not None and (usage.prompt_tokens > 0 or usage.completion_tokens > 0)
        models = [facts.served_model, facts.provider_model]
        if usage is not None and billable:
            quote = self.quote(facts.provider, models, usage, now)
            cost, version = quote.cost, quote.price_version
        elif _billed_unseen(facts):
            # the provider may bill it but told us nothing: cost unknown, not free (unless the
            # model costs nothing whatever it used)
            cost, version = self._unseen_cost(facts.provider, models, now)
            billable = True
        else:
            cost, version = ZERO, self._prices.version
        usage = usage or Usage()
        event = UsageEvent(
            schema_version=version_for(usage.cache_creation_1h_tokens, ctx.endpoint, ctx.metadata),
            event_id=str(self._ids()),
            request_id=ctx.request_id,
            attempt=facts.number,
            created_at=now,
            tenant_id=ctx.tenant_id,
            api_key_id=ctx.api_key_id,
            endpoint=ctx.endpoint,  # type: ignore[arg-type]
            stream=ctx.stream,
            provider=facts.provider,
            requested_model=ctx.requested_model,
            provider_model=facts.provider_model,
            served_model=facts.served_model,
            outcome=facts.outcome,
            http_status=facts.http_status,
            error_code=facts.error_code,
            error_message=facts.error_message[:500] if facts.error_message else None,
            latency_ms=round(facts.latency_ms, 3),
            ttft_ms=None if facts.ttft_ms is None else round(facts.ttft_ms, 3),
            prompt_tokens=usage.prompt_tokens,
            completion_tokens=usage.completion_tokens,
            cached_tokens=usage.cached_tokens,
            cache_creation_tokens=usage.cache_creation_tokens,
            cache_creation_1h_tokens=usage.cache_creation_1h_tokens,
            reasoning_tokens=usage.reasoning_tokens,
            total_tokens=usage.total_tokens,
            cost_usd=cost,
            price_version=version,
            billable=billable,
            incomplete=facts.incomplete,
            gateway_instance=self._instance,
            metadata=ctx.metadata,
        )
        self._publish(event)
        if self.defer_observers:
            if self._deferred:  # the next turn's callback is scheduled already
                self._deferred.append(event)
                return event
            try:
                asyncio.get_running_loop().call_soon(self._notify_deferred)
                self._deferred.append(event)
                return event
            except RuntimeError:  # no running loop (a synchronous caller): now
                pass
        self.notify(event)
        return event

    def _unseen_cost(self, provider: str, models: list[str | None], at: datetime) -> tuple[Decimal | None, str]:
        """The cost of an attempt whose usage we never saw (``pricing.reprice.unseen_cost``)."""
        cost, version, _priced = unseen_cost(self._prices, provider, models, at)
        return cost, version

    def _notify_deferred(self) -> None:
        events, self._deferred = self._deferred, []
        for event in events:
            self.notify(event)

    def flush_observers(self) -> None:
        """Hand the events deferred to the next loop turn to the observers now: a decision that
        needs them (may this request retry the provider that just failed it?) cannot wait."""
        if self._deferred:
            self._notify_deferred()

    def notify(self, event: UsageEvent) -> None:
        """Hand ``event`` to every observer; one failing observer neither stops the others nor
        reaches the caller."""
        for observer in self.observers:
            try:
                observer(event)
            except Exception:
                log.exception("usage observer %r failed on event %s", observer, event.event_id)

    @staticmethod
    def log_cost(ctx: CallContext, provider: str, model: str, cost: Decimal | None) -> None:
        """The one cost line per call: ``Cost | tenant=t provider=p model=m cost=$0.000150``. The
        model is the one the provider says served the call: a name past :data:`LOGGED_MODEL`
        characters is cut there (an upstream's 200,000-character ``model`` made a line that log
        shippers split at 16 KB, the ``cost=`` field lost: a review). The same values, with the
        request id, the endpoint and the call's metadata (when it has any), are the line's fields
        in JSON logs (``gateway/json_log.py``); the text line stays as it is."""
        if not cost_log.isEnabledFor(logging.INFO):
            return
        text = format_usd(cost) if cost is not None else None
        if len(model) > LOGGED_MODEL:
            model = model[:LOGGED_MODEL] + "..."
        fields = None
        if json_log.structured:
            values: dict[str, object] = {
                "tenantId": ctx.tenant_id,
                "provider": provider,
                "model": model,
                "costUsd": text,
                "requestId": ctx.request_id,
                "endpoint": ctx.endpoint,
            }
            if ctx.metadata:  # a log pipeline attributes the cost as the stores do
                values["metadata"], cut = _logged_metadata(ctx.metadata)
                if cut:
                    values["metadataCut"] = True
            fields = {FIELDS: values}
        cost_log.info(
            "Cost | tenant=%s provider=%s model=%s cost=%s",
            log_value(ctx.tenant_id),
            provider,
            log_value(model),
            f"${text}" if text is not None else "unpriced",
            extra=fields,
        )


def _logged_metadata(metadata: dict[str, str]) -> tuple[dict[str, str], bool]:
    """The metadata a JSON cost line holds (:data:`LOGGED_METADATA`): values past
    :data:`LOGGED_METADATA_VALUE` characters cut with ``...``, pairs past the total left out; and
    whether anything was (the events and the stores keep it whole)."""
    logged: dict[str, str] = {}
    room, cut = LOGGED_METADATA, False
    for key, value in metadata.items():
        if len(value) > LOGGED_METADATA_VALUE:
            value, cut = value[:LOGGED_METADATA_VALUE] + "...", True
        if len(key) + len(value) > room:
            return logged, True
        logged[key] = value
        room -= len(key) + len(value)
    return logged, cut
