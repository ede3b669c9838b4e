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

BUILTIN_VERSION = "builtin-1"


def _rate(prompt: str, completion: str) -> Rate:
    return Rate(input=Decimal(prompt), output=Decimal(completion))


#: family -> rate per 1K tokens (prompt, completion)
BUILTIN_RATES: Mapping[str, Rate] = MappingProxyType(
    {
        "gpt-4": _rate("0.03", "0.06"),
        "gpt-4-turbo": _rate("0.01", "0.03"),
        "gpt-4o": _rate("0.005", "0.015"),
        "claude-3-opus": _rate("0.015", "0.075"),
        "claude-3-sonnet": _rate("0.003", "0.015"),
        "claude-3-haiku": _rate("0.00025", "0.00125"),
        "gemini-pro": _rate("0.0005", "0.0015"),
    }
)


def builtin_rate(model: str) -> Rate | None:
    """The built-in rate of a model or of its family; None when the table has neither."""
    for name in model_candidates(model):
        rate = BUILTIN_RATES.get(name)
        if rate is not None:
            return rate
    return None
