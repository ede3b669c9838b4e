"""The built-in price table: the seed's rates (USD per 1K tokens), on any provider.

These rates win over the price database for their families, on every provider that serves the
family (``gpt-4`` on Azure costs what it costs on OpenAI). Dated snapshots resolve to their
family through :func:`gateway.pricing.models.model_candidates`. Change a rate only together with
:data:`BUILTIN_VERSION`, so recorded events keep naming the table that priced them.
"""

from __future__ import annotations

from collections.abc import Mapping
from decimal import Decimal
from types import MappingProxyType

from gateway.pricing.base import Rate
from gateway.pricing.models import model_candidates

#: builtin-2: the vendors' prompt-cache rates (builtin-1 billed cached tokens at the input rate);
#: builtin-3: Anthropic's 1-hour cache writes at their own rate (builtin-2 billed them at the
#: 5-minute write's), and the gpt-4o snapshots of 2024-08-06 and 2024-11-20 at theirs (builtin-2
#: billed them at the family's launch rate); builtin-4: davinci-002 and babbage-002, which the
#: database prices on OpenAI only (their Azure calls were unpriced: a review).
BUILTIN_VERSION = "builtin-4"

#: OpenAI bills prompt tokens read from its automatic cache at half the input rate (GPT-4o)
_OPENAI_CACHED = Decimal("0.5")
#: Anthropic bills cache reads at 0.1x the input rate, cache writes at 1.25x, and writes to a
#: cache that lives an hour (``ttl: "1h"``) at 2x
_ANTHROPIC_READ, _ANTHROPIC_WRITE, _ANTHROPIC_WRITE_1H = Decimal("0.1"), Decimal("1.25"), Decimal("2")


def _rate(
    prompt: str,
    completion: str,
    *,
    cached: Decimal | None = None,
    written: Decimal | None = None,
    written_1h: Decimal | None = None,
) -> Rate:
    """A rate per 1K tokens; ``cached`` / ``written`` / ``written_1h``: the cache rates as
    multiples of the input rate (None: the family has no such cache, its counts stay 0)."""
    base = Decimal(prompt)
    return Rate(
        input=base,
        output=Decimal(completion),
        cached_input=None if cached is None else base * cached,
        cache_write=None if written is None else base * written,
        cache_write_1h=None if written_1h is None else base * written_1h,
    )


def _claude(prompt: str, completion: str) -> Rate:
    return _rate(prompt, completion, cached=_ANTHROPIC_READ, written=_ANTHROPIC_WRITE, written_1h=_ANTHROPIC_WRITE_1H)


#: family -> rate per 1K tokens (prompt, completion, and the cache rates where the vendor has them)
BUILTIN_RATES: Mapping[str, Rate] = MappingProxyType(
    {
        "gpt-4": _rate("0.03", "0.06"),
        "gpt-4-turbo": _rate("0.01", "0.03"),
        "gpt-4o": _rate("0.005", "0.015", cached=_OPENAI_CACHED),
        # the snapshots OpenAI and Azure name as the served model since August 2024 (the "gpt-4o"
        # alias points at them) cost half the launch snapshot's input rate: at the family's rate
        # a review's call was billed 67% over what the vendor bills
        "gpt-4o-2024-08-06": _rate("0.0025", "0.01", cached=_OPENAI_CACHED),
        "gpt-4o-2024-11-20": _rate("0.0025", "0.01", cached=_OPENAI_CACHED),
        "claude-3-opus": _claude("0.015", "0.075"),
        "claude-3-sonnet": _claude("0.003", "0.015"),
        "claude-3-haiku": _claude("0.00025", "0.00125"),
        "gemini-pro": _rate("0.0005", "0.0015"),
        # the legacy completion models, on OpenAI and Azure alike ($2.00 and $0.40 per 1M tokens
        # in and out); their fine-tunes (``ft:davinci-002:...``) cost more and stay unpriced
        "davinci-002": _rate("0.002", "0.002"),
        "babbage-002": _rate("0.0004", "0.0004"),
    }
)


def builtin_rate(model: str) -> Rate | None:
    """The built-in rate of a model or of its family; None when the table has neither."""
    for name in model_candidates(model):
        rate = BUILTIN_RATES.get(name)
        if rate is not None:
            return rate
    return None
