"""Re-costing recorded usage events: the pure function behind ``llm-gateway replay --reprice``.

Cost is a pure function of (raw usage, price table at a version). :func:`price_event` applies
the gateway's call-time rules (:meth:`gateway.usage.UsageRecorder.record`) to the facts an event
recorded, at the event's own ``created_at``:

- a **billable attempt with token counts** is priced by the served model (authoritative), else
  by the model the gateway asked the provider for (:func:`quote_models`, the gateway's lookup),
  and stamped with the book's ``version``;
- if the book prices neither model but the event **already had a cost**, the recorded cost and
  version are kept: a price known at call time is not thrown away because today's table no
  longer lists the model (repricing never turns a priced attempt into an unpriced one);
- an **unpriced** billable attempt the book still cannot price stays unpriced (cost None), now
  stamped with the version that was consulted;
- a billable attempt **without token counts** (a stream cut before the provider reported usage)
  costs what the recorder would say now (:func:`unseen_cost`): $0 on a model the book prices at
  nothing, else unknown (and as recorded when the book no longer prices the model);
- a cost has at most :data:`COST_DECIMALS` decimals, rounded half up once, here: what the stores
  keep (DuckDB ``DECIMAL(20,10)``, Postgres ``NUMERIC(20,10)``) is then exactly what the call's
  header, cost line and event say, and sums over the stores are exact;
- **failed / non-billable** attempts keep cost 0 and their recorded version.

Events are immutable: a changed event is a copy (``model_copy``), the input is never touched.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from dataclasses import replace
from datetime import datetime
from decimal import ROUND_HALF_UP, Decimal

from gateway.events import STORED_MONEY, UsageEvent
from gateway.pricing.base import EVERY_KIND_OF_TOKEN, EXACT, PriceBook, Quote
from gateway.types import Usage

log = logging.getLogger(__name__)

#: decimals of a stored cost (USD): the scale of the stores' cost columns
COST_DECIMALS = 10
_QUANTUM = Decimal(1).scaleb(-COST_DECIMALS)


def stored_cost(cost: Decimal) -> Decimal:
    """``cost`` with at most :data:`COST_DECIMALS` decimals (rounded half up), as the stores hold it."""
    exponent = cost.as_tuple().exponent
    if isinstance(exponent, int) and exponent >= -COST_DECIMALS:
        return cost
    return cost.quantize(_QUANTUM, rounding=ROUND_HALF_UP, context=EXACT)  # any size (the caller bounds it)


def quote_models(book: PriceBook, provider: str, models: Sequence[str | None], usage: Usage, at: datetime) -> Quote:
    """The quote of the most authoritative price source for any of ``models`` (skipping empty
    names; within a source, the first model it prices: the gateway's order is the served model,
    then the provider model), else an unpriced one. The cost has at most :data:`COST_DECIMALS`
    decimals (:func:`stored_cost`)."""
    names = [model for model in models if model]
    if not names:
        return Quote(None, book.version, "unpriced")
    quote = book.quote_first(provider, names, usage, at)
    if quote.cost is None:
        return quote
    cost = stored_cost(quote.cost)
    if not -STORED_MONEY < cost < STORED_MONEY:
        # no store holds it (10**10 USD and more: a price file's slip): unknown, not a usage
        # event the schema refuses, which failed the call after it happened
        log.warning("%s/%s priced at %s USD, more than any store holds: recorded as unpriced", provider, names, cost)
        return Quote(None, book.version, "unpriced")
    return quote if cost is quote.cost else replace(quote, cost=cost)


ZERO = Decimal(0)


def unseen_cost(
    book: PriceBook, provider: str, models: Sequence[str | None], at: datetime
) -> tuple[Decimal | None, str, bool]:
    """The cost of a billed attempt whose usage was never seen: $0 when ``book`` prices the model
    at nothing whatever it used (a local Ollama model), else unknown (None); with the version
    stamped, and whether ``book`` prices the model at all. The recorder's rule at call time and
    the reprice's."""
    quote = quote_models(book, provider, models, EVERY_KIND_OF_TOKEN, at)
    if quote.cost is None:
        return None, book.version, False
    if quote.cost == 0:
        return ZERO, quote.price_version, True
    return None, book.version, True


def event_usage(event: UsageEvent) -> Usage:
    return Usage(
        prompt_tokens=event.prompt_tokens,
        completion_tokens=event.completion_tokens,
        cached_tokens=event.cached_tokens,
        cache_creation_tokens=event.cache_creation_tokens,
        cache_creation_1h_tokens=event.cache_creation_1h_tokens,
        reasoning_tokens=event.reasoning_tokens,
    )


def price_event(event: UsageEvent, book: PriceBook) -> UsageEvent:
    """``event`` re-costed with ``book`` (the same object when nothing changes)."""
    if not event.billable:
        return event  # not billed: cost 0
    if event.prompt_tokens == 0 and event.completion_tokens == 0:
        # billed without counts (the recorder makes no other billable event without tokens):
        # $0 or unknown, by the model's price, as at call time. Left as recorded, a call made
        # while its model was free stayed $0 once a price file priced it (review)
        cost, version, priced = unseen_cost(
            book, event.provider, (event.served_model, event.provider_model), event.created_at
        )
        if not priced and event.cost_usd is not None:
            return event  # a price gone from the table does not unprice a recorded cost
        if cost == event.cost_usd and version == event.price_version:
            return event
        return event.model_copy(update={"cost_usd": cost, "price_version": version})
    usage = event_usage(event)
    if not usage.plausible():
        # counts no call can have (an older gateway recorded an upstream's -5 as it came): a
        # reprice priced them into negative money; such an event is unpriced, whatever it
        # recorded (the gateway's recorder makes these usage unknown before it quotes)
        quote = Quote(None, book.version, "unpriced")
    else:
        quote = quote_models(book, event.provider, (event.served_model, event.provider_model), usage, event.created_at)
        if quote.cost is None and event.cost_usd is not None:
            return event  # a price gone from the table does not unprice a recorded cost
    if quote.cost == event.cost_usd and quote.price_version == event.price_version:
        return event
    return event.model_copy(update={"cost_usd": quote.cost, "price_version": quote.price_version})


def price_events(events: Iterable[UsageEvent], book: PriceBook) -> list[UsageEvent]:
    """:func:`price_event` over a batch."""
    return [price_event(event, book) for event in events]
