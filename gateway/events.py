"""The usage event: the versioned contract between the gateway and every consumer.

One ``UsageEvent`` per provider attempt. It carries raw facts; everything else (the LLMUsage
table, DuckDB facts, provider health) is a projection of the stream and can be rebuilt from it.

Versioning: ``schema_version`` is bumped on any incompatible change; consumers accept every
version up to ``SCHEMA_VERSION`` and reject newer ones as poison (dead-lettered, not dropped).
Fields are only ever added with defaults within a version.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any, Literal

import orjson
from pydantic import BaseModel, ConfigDict, Field, field_serializer, field_validator

from gateway.types import MAX_TOKENS

SCHEMA_VERSION = 1
#: the latest ``created_at`` an event may carry
LATEST = datetime(9000, 1, 1, tzinfo=UTC)

Outcome = Literal[
    "success",
    "rate_limited",
    "overloaded",
    "quota_exhausted",
    "timeout",
    "connection_error",
    "auth_error",
    "model_not_found",
    "upstream_error",
    "malformed_response",
    "client_error",
    "content_filtered",
    "stream_cut",
    "cancelled",
]

#: outcomes that mean the provider itself misbehaved (health counts them as failures)
PROVIDER_FAILURES = frozenset(
    {"overloaded", "timeout", "connection_error", "upstream_error", "malformed_response", "stream_cut"}
)


class UsageEvent(BaseModel):
    """One provider attempt. JSON-encoded on the log; money as exact decimal text."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    schema_version: int = SCHEMA_VERSION
    event_id: str  # UUIDv7, the idempotency key of every projection
    request_id: str
    attempt: int = Field(ge=1)  # 1-based attempt number within the request
    #: timezone-aware, when the attempt ended; before the year 9000: a stamp near datetime's
    #: end (9999) overflowed the health history's arithmetic and halted projection for good
    created_at: datetime = Field(lt=LATEST)
    tenant_id: str
    api_key_id: str | None = None
    endpoint: Literal["chat.completions", "completions"] = "chat.completions"
    stream: bool = False
    provider: str
    requested_model: str  # what the client asked for
    provider_model: str  # what the gateway asked the provider for
    served_model: str | None = None  # what the provider says served it
    outcome: Outcome
    http_status: int | None = None
    error_code: str | None = None
    error_message: str | None = None
    latency_ms: float
    ttft_ms: float | None = None
    #: token counts: what the stores hold (BIGINT); an event outside that range is poison
    #: Negative counts are history: gateways before c1a6653 took an upstream's -5 as it came (and
    #: billed the call), and the log must stay readable by every later version; no gateway since
    #: writes one (an unreadable count is usage unknown).
    prompt_tokens: int = Field(default=0, ge=-MAX_TOKENS, le=MAX_TOKENS)
    completion_tokens: int = Field(default=0, ge=-MAX_TOKENS, le=MAX_TOKENS)
    cached_tokens: int = Field(default=0, ge=-MAX_TOKENS, le=MAX_TOKENS)
    cache_creation_tokens: int = Field(default=0, ge=-MAX_TOKENS, le=MAX_TOKENS)
    reasoning_tokens: int = Field(default=0, ge=-MAX_TOKENS, le=MAX_TOKENS)
    total_tokens: int = Field(default=0, ge=-MAX_TOKENS, le=MAX_TOKENS)
    #: exact USD; None means unpriced (no price known at call time), never "free"
    cost_usd: Decimal | None = None
    price_version: str | None = None
    #: whether the provider bills this attempt (it produced tokens)
    billable: bool = False
    #: the stream ended before the provider finished (client gone or upstream cut)
    incomplete: bool = False
    gateway_instance: str | None = None

    @field_validator("cost_usd", mode="before")
    @classmethod
    def _no_float_money(cls, value: Any) -> Any:
        if isinstance(value, float):
            raise ValueError("cost_usd must be decimal text, not a float")
        return value

    @field_serializer("cost_usd")
    def _cost_as_text(self, value: Decimal | None) -> str | None:
        return None if value is None else format(value, "f")

    @property
    def priced(self) -> bool:
        return self.cost_usd is not None

    def to_json(self) -> bytes:
        """The event as JSON: the same bytes as ``model_dump_json`` (field order, ``Z`` for UTC,
        money as decimal text), encoded by orjson from the field values (about 4x faster)."""
        fields = self.__dict__
        cost = fields["cost_usd"]
        if cost is not None:
            fields = {**fields, "cost_usd": format(cost, "f")}
        return orjson.dumps(fields, option=orjson.OPT_UTC_Z)

    @classmethod
    def from_json(cls, data: bytes | str) -> UsageEvent:
        """Decode one event; raises ``ValueError`` for unreadable or too-new events.

        Fast path: one pass in pydantic-core (``model_validate_json``), about half the CPU of
        ``json.loads`` + dict validation. Whatever it refuses or cannot vouch for goes through
        the checked path, which says exactly what is wrong."""
        try:
            event = cls.model_validate_json(data)
        except ValueError:  # pydantic's ValidationError is a ValueError
            return cls._from_json_checked(data)
        fields = event.model_fields_set
        if "schema_version" in fields and 1 <= event.schema_version <= SCHEMA_VERSION and event.created_at.tzinfo:
            return event
        return cls._from_json_checked(data)

    @classmethod
    def _from_json_checked(cls, data: bytes | str) -> UsageEvent:
        try:
            raw: Any = json.loads(data)
        except RecursionError:  # not a ValueError: the projector took it for a bug, restarting forever
            raise ValueError("usage event JSON nested too deep") from None
        if not isinstance(raw, dict):
            raise ValueError("usage event must be a JSON object")
        version = raw.get("schema_version")
        if not isinstance(version, int) or version < 1 or version > SCHEMA_VERSION:
            raise ValueError(f"unsupported usage event schema_version {version!r}")
        if "cost_usd" in raw and isinstance(raw["cost_usd"], float):
            raise ValueError("cost_usd must be decimal text, not a float")
        event = cls.model_validate(raw)
        if event.created_at.tzinfo is None:
            raise ValueError("created_at must carry a timezone")
        return event
