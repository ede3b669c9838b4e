"""Rate-limit settings: requests and tokens a minute per tenant.

One nested model in :class:`gateway.settings.Settings` (``settings.rate_limits``); in the config
file under ``rate_limits:``, in the environment as JSON::

    LLM_GATEWAY_RATE_LIMITS='{"tenants": {"acme": {"requests_per_minute": 600,
                              "tokens_per_minute": 200000}}, "default": {"requests_per_minute": 60}}'

``default`` applies to every tenant not listed. A limit left out (or null) is no limit;
``max_concurrent_requests`` caps the calls of a tenant at once. ``metadata`` gives limits below
(or across) the tenants: each to the calls whose metadata hold all of its ``match`` pairs, of
one ``tenant`` or of every tenant together (a team's share of its tenant's traffic)::

    rate_limits:
      metadata:
        - {tenant: acme, match: {team: search}, requests_per_minute: 100}
        - {match: {feature: batch}, tokens_per_minute: 1000000}

A call must pass every limit it falls under: its tenant's and each metadata limit it matches.
"""

from __future__ import annotations

from typing import ClassVar

from pydantic import BaseModel, ConfigDict, Field, model_validator

from gateway.metadata_scopes import MetadataScoped
from gateway.tenant_ids import PerTenantAndScope

#: the largest limit a minute: more is a typo, not a limit
MAX_PER_MINUTE = 10**9


class RateLimit(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    #: calls a minute (chat, legacy completions, embeddings; a stream is one call)
    requests_per_minute: int | None = Field(default=None, ge=1, le=MAX_PER_MINUTE, strict=True)
    #: tokens a minute (every attempt's prompt and completion tokens, as the providers report them)
    tokens_per_minute: int | None = Field(default=None, ge=1, le=MAX_PER_MINUTE, strict=True)
    #: calls at once (a stream until its end)
    max_concurrent_requests: int | None = Field(default=None, ge=1, le=MAX_PER_MINUTE, strict=True)

    @model_validator(mode="after")
    def _something(self) -> RateLimit:
        if self.requests_per_minute is None and self.tokens_per_minute is None and self.max_concurrent_requests is None:
            raise ValueError(
                "give requests_per_minute, tokens_per_minute or max_concurrent_requests (an empty limit limits nothing)"
            )
        return self


class MetadataRateLimit(MetadataScoped, RateLimit):
    """A limit of the calls whose metadata hold every pair of ``match``: of ``tenant``'s calls,
    or of every tenant's together when it is None; one bucket they all share."""

    kind: ClassVar[str] = "rate limit"


class RateLimitSettings(PerTenantAndScope[RateLimit, MetadataRateLimit]):
    """A limit per tenant id (``tenants``), ``default`` for every tenant not listed, and the
    limits of calls with given metadata pairs (``metadata``)."""
