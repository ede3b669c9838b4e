"""The gateway's price book: operator file, built-in table, genai-prices database, free, unpriced.

Lookup order for one call (the price file tries the served model, then the model asked for;
then each model in that order goes through 2 to 4):

1. the operator's price file (:mod:`gateway.pricing.pricefile`), when it prices the model;
2. local providers (Ollama) are free: cost 0, source ``free``;
3. the built-in table (:mod:`gateway.pricing.builtin`), on any provider serving the family;
4. the genai-prices database (:mod:`gateway.pricing.genai`), at the call's time;
5. otherwise unpriced: cost None, never silently free. Replay costs it once a price exists.

Local providers skip the built-in table and the database on purpose: Ollama serves models on the
operator's own hardware, and users name local models after OpenAI ones (``ollama cp llama3 gpt-4``)
so OpenAI tooling works; billing those at OpenAI's rates would be wrong. Only the price file prices
a local model.

``version`` names the effective table (``builtin-4+genai-prices-0.2.3+file-<label>-<sha12>``) and is
recorded with every quote, so a replay knows which prices were used.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from decimal import Decimal
from pathlib import Path

from gateway.pricing.base import Quote
from gateway.pricing.builtin import BUILTIN_VERSION, builtin_rate
from gateway.pricing.genai import genai_cost, genai_prices_version
from gateway.pricing.models import normalize_model
from gateway.pricing.pricefile import PriceFile, load_price_file, parse_price_file
from gateway.types import Usage

#: providers whose calls cost nothing unless the price file prices them
FREE_PROVIDERS = frozenset({"ollama"})

_ZERO = Decimal(0)


class CompositePriceBook:
    """A :class:`gateway.pricing.base.PriceBook` over the price file, built-ins and genai-prices."""

    def __init__(self, file_prices: PriceFile | None = None) -> None:
        self.use_file(file_prices)

    def use_file(self, file_prices: PriceFile | None) -> None:
        """Price with ``file_prices`` from now on (the running gateway's price file reloaded)."""
        parts = [BUILTIN_VERSION, genai_prices_version()]
        if file_prices is not None:
            parts.append(file_prices.version)
        self.file_prices = file_prices
        self.version: str = "+".join(parts)

    def quote(self, provider: str, model: str, usage: Usage, at: datetime) -> Quote:
        """The exact cost of one call of ``model`` on ``provider`` at ``at`` (timezone-aware)."""
        return self.quote_first(provider, (model,), usage, at)

    def quote_first(self, provider: str, models: Sequence[str], usage: Usage, at: datetime) -> Quote:
        """The cost of one call of the first of ``models`` (the served model, then the one
        asked for) that the price file prices (by its very name first: ``PriceFile.rate_first``),
        else of the first the other sources price (each
        model through the built-in table, then the database). So the operator's entry for the
        model the gateway asked for (an Azure deployment, an Ollama tag) beats the built-in rate
        of the model the vendor says served it (a review: ``prod-gpt4o`` priced in the file was
        billed at the built-in gpt-4o rate, because Azure answered ``gpt-4o-2024-08-06``), and
        the served model's price in the database beats the built-in rate of a deployment's
        name (``gpt-4`` serving ``gpt-4o-mini``: 120x over, a diff review)."""
        if at.tzinfo is None or at.utcoffset() is None:
            raise ValueError(f"quote needs a timezone-aware time, got {at.isoformat()}")
        if self.file_prices is not None:
            rate = self.file_prices.rate_first(provider, models, at)
            if rate is not None:
                return Quote(cost=rate.cost(usage), price_version=self.version, source="file")
        if provider in FREE_PROVIDERS:
            return Quote(cost=_ZERO, price_version=self.version, source="free")
        for model in models:  # then the served model first: the built-in table, the database
            rate = builtin_rate(model)
            if rate is not None:
                return Quote(cost=rate.cost(usage), price_version=self.version, source="builtin")
            cost = genai_cost(provider, normalize_model(model), usage, at)
            if cost is not None:
                return Quote(cost=cost, price_version=self.version, source="genai-prices")
        return Quote(cost=None, price_version=self.version, source="unpriced")


def book_from_document(doc: object, *, source: str = "the request's price file") -> CompositePriceBook:
    """The price book of a price file sent as a document (``price_document``'s), or None for the
    built-in tables alone. Raises ``PriceFileError`` naming ``source``."""
    return CompositePriceBook(None if doc is None else parse_price_file(doc, source=source))


def load_price_book(price_file: Path | None = None) -> CompositePriceBook:
    """The price book for the gateway: with the operator's price file when one is configured.

    Raises :class:`gateway.pricing.pricefile.PriceFileError` (naming the file and the entry) when
    the file cannot be read or is invalid: a gateway must not start with prices it cannot apply.
    """
    return CompositePriceBook(load_price_file(price_file) if price_file is not None else None)
