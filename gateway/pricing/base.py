"""The price-book port and the exact cost arithmetic."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from decimal import Context, Decimal, localcontext
from typing import Protocol

from gateway.types import Usage

#: one token of every kind a price can distinguish, the probe of what an attempt whose usage was
#: never seen may cost (``reprice.unseen_cost``): what costs nothing here is free
EVERY_KIND_OF_TOKEN = Usage(
    prompt_tokens=4,
    completion_tokens=2,
    cached_tokens=1,
    cache_creation_tokens=2,
    cache_creation_1h_tokens=1,
    reasoning_tokens=1,
)

THOUSAND = Decimal(1000)
#: wide enough for any cost exactly: a price file's rate has up to 46 digits (10**15 with 30
#: decimals) and a count 10; Decimal's default 28 digits rounded a long rate's products
EXACT = Context(prec=80)


@dataclass(frozen=True, slots=True)
class Rate:
    """USD per 1,000 tokens. Cache rates default to the input rate when a source has none; the
    1-hour cache write's rate to the cache write's."""

    input: Decimal
    output: Decimal
    cached_input: Decimal | None = None
    cache_write: Decimal | None = None
    cache_write_1h: Decimal | None = None

    def cost(self, usage: Usage) -> Decimal:
        cached = min(usage.cached_tokens, usage.prompt_tokens)
        written = min(usage.cache_creation_tokens, usage.prompt_tokens - cached)
        hour = min(usage.cache_creation_1h_tokens, written)
        plain = usage.prompt_tokens - cached - written
        write = self.cache_write if self.cache_write is not None else self.input
        with localcontext(EXACT):
            total = (
                plain * self.input
                + cached * (self.cached_input if self.cached_input is not None else self.input)
                + (written - hour) * write
                + hour * (self.cache_write_1h if self.cache_write_1h is not None else write)
                + usage.completion_tokens * self.output
            )
            return total / THOUSAND


@dataclass(frozen=True, slots=True)
class Quote:
    """The price of one call. ``cost`` None means unpriced: no price is known, not free."""

    cost: Decimal | None
    price_version: str
    source: str  # "file", "builtin", "genai-prices", "free", "unpriced"


class PriceBook(Protocol):
    version: str

    def quote(self, provider: str, model: str, usage: Usage, at: datetime) -> Quote: ...

    def quote_first(self, provider: str, models: Sequence[str], usage: Usage, at: datetime) -> Quote:
        """The quote of the most authoritative source that prices one of ``models`` (the first
        such model within it), else an unpriced quote."""
        ...


def money_text(value: Decimal) -> str:
    """Exact decimal text without exponent or trailing zeros: ``0.0000025``, ``12``."""
    text = format(value, "f")
    if "." in text:
        text = text.rstrip("0").rstrip(".")
    return "0" if text in ("", "-0") else text


def format_usd(value: Decimal | None) -> str:
    """Money as text for logs and headers: at least 6 decimals, more when needed to be exact."""
    if value is None:
        return "unpriced"
    text = format(value.normalize(), "f")
    whole, _, frac = text.partition(".")
    return f"{whole}.{frac.ljust(6, '0')}"
