"""Prices from the ``genai-prices`` database (bundled with the package, offline).

Usage mapping, checked against genai-prices' unit registry (``data_units.py``, ``decompose.py``):
``input_tokens`` is the TOTAL input and ``cache_read_tokens``/``cache_write_tokens`` are subsets
of it; the library bills ``input_tokens - cache_read - cache_write`` at the input rate and each
subset at its own rate (or at the input rate when the model has none). ``cache_write_1h_tokens``
is a subset of ``cache_write_tokens``, at the model's 1-hour write rate (or its write rate). ``output_tokens`` is the
total output and ``output_reasoning_tokens`` a subset of it. Those are exactly our :class:`Usage`
semantics, so the counts pass through unchanged (subsets clamped to their totals, as
:meth:`Rate.cost` does), and every token is billed once.

Historic prices: the request time goes to ``genai_request_timestamp``. Which model a name resolves
to does not depend on time, so that lookup is cached per (provider, model); the price itself is
computed for each call, because some entries change with the date or even the time of day.
"""

from __future__ import annotations

import importlib.metadata
import logging
from collections.abc import Mapping
from datetime import datetime
from decimal import Decimal
from functools import lru_cache
from types import MappingProxyType
from typing import TYPE_CHECKING

from gateway.pricing.base import EVERY_KIND_OF_TOKEN
from gateway.types import Usage

if TYPE_CHECKING:
    # imported on the first lookup: the database is a fallback behind the built-in rates, and
    # loading it costs ~6 MB and ~70 ms that a gateway pricing only built-in models never needs
    from genai_prices import Usage as GenaiUsage
    from genai_prices.types import PriceCalculation

log = logging.getLogger(__name__)

#: our provider name -> genai-prices provider id. Names not listed are passed through as they are.
PROVIDER_IDS: Mapping[str, str] = MappingProxyType(
    {
        "openai": "openai",
        "azure": "azure",  # falls back to OpenAI's models inside genai-prices
        "anthropic": "anthropic",
        "google": "google",
        "gemini": "google",
        "vertex": "google",
    }
)

#: an instant for lookups that only ask "does the database know this model?"
_PROBE_TIME = datetime.fromisoformat("2025-01-01T00:00:00+00:00")


def calc_price(
    usage: GenaiUsage, model: str, *, provider_id: str, genai_request_timestamp: datetime
) -> PriceCalculation:
    """``genai_prices.calc_price``, imported on first use."""
    from genai_prices import calc_price as calc

    return calc(usage, model, provider_id=provider_id, genai_request_timestamp=genai_request_timestamp)


def genai_prices_version() -> str:
    return f"genai-prices-{importlib.metadata.version('genai-prices')}"


def to_genai_usage(usage: Usage) -> GenaiUsage:
    """Our usage in genai-prices' fields (see the module docstring for why this is 1:1)."""
    prompt = max(usage.prompt_tokens, 0)
    completion = max(usage.completion_tokens, 0)
    cached = min(max(usage.cached_tokens, 0), prompt)
    written = min(max(usage.cache_creation_tokens, 0), prompt - cached)
    hour = min(max(usage.cache_creation_1h_tokens, 0), written)
    reasoning = min(max(usage.reasoning_tokens, 0), completion)
    fields: dict[str, int] = {"input_tokens": prompt, "output_tokens": completion}
    if cached:
        fields["cache_read_tokens"] = cached
    if written:
        fields["cache_write_tokens"] = written
    if hour:
        fields["cache_write_1h_tokens"] = hour
    if reasoning:
        fields["output_reasoning_tokens"] = reasoning
    from genai_prices import Usage as GenaiUsage

    return GenaiUsage(**fields)


#: the (provider, model, token class) whose missing rate was logged
_SAID_MISSING: set[tuple[str, str, str]] = set()


@lru_cache(maxsize=4096)
def _known(provider_id: str, model: str) -> bool:
    """Whether genai-prices has a price for the model at this provider (misses are cached too)."""
    from genai_prices import Usage as GenaiUsage

    try:
        calc_price(GenaiUsage(), model, provider_id=provider_id, genai_request_timestamp=_PROBE_TIME)
    except LookupError:
        return False
    return True


def genai_cost(provider: str, model: str, usage: Usage, at: datetime) -> Decimal | None:
    """The cost of one call in genai-prices' database, or None when it has no price."""
    provider_id = PROVIDER_IDS.get(provider, provider)
    if not _known(provider_id, model):
        return None
    try:
        result = calc_price(to_genai_usage(usage), model, provider_id=provider_id, genai_request_timestamp=at)
    except LookupError:
        return None
    except ValueError as e:
        # a price structure our usage cannot fill: record unpriced (replay can cost it later)
        log.warning("genai-prices cannot price %r/%r: %s", provider, model, e)
        return None
    if missing := _missing_rates(result.model_price, usage):
        # e.g. Azure's davinci-002 entry has an input price only: the library bills the output
        # at 0, which would record a partly free call; unpriced instead (replay can cost it).
        # Said once per model: it was two lines for every call of such a model (a review)
        # not for the probe of an unseen attempt's cost: an embedding model (no output rate) was
        # said to have "calls that use such tokens" on its first such attempt (a review)
        if usage is not EVERY_KIND_OF_TOKEN and (provider, model, missing) not in _SAID_MISSING:
            _SAID_MISSING.add((provider, model, missing))
            log.warning(
                "genai-prices has no %s price for %r/%r: its calls that use such tokens are recorded unpriced",
                missing,
                provider,
                model,
            )
        return None
    return result.total_price


def _missing_rates(price: object, usage: Usage) -> str | None:
    """The token class the call used that the database entry has no rate for (cached and
    reasoning tokens fall back to the input and output rates), else None."""
    if usage.prompt_tokens > 0 and getattr(price, "input_mtok", None) is None:
        return "input"
    if usage.completion_tokens > 0 and getattr(price, "output_mtok", None) is None:
        return "output"
    return None
