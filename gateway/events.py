"""The usage event: the versioned contract between the gateway and every consumer.

One ``UsageEvent`` per provider attempt. It carries raw facts; everything else (the LLMUsage
table, DuckDB facts, provider health) is a projection of the stream and can be rebuilt from it.

Versioning: ``schema_version`` is bumped on any incompatible change; consumers accept every
version up to ``SCHEMA_VERSION`` and reject newer ones as poison (dead-lettered, not dropped).
Fields are only ever added with defaults within a version.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from datetime import UTC, datetime
from decimal import Decimal
from typing import Annotated, Any, Literal, get_args

import orjson
from pydantic import BaseModel, ConfigDict, Field, StringConstraints, field_serializer, field_validator

from gateway.types import PLAUSIBLE_TOKENS

#: the newest version this gateway reads. An event is written at the lowest version whose readers
#: read it whole (:func:`version_for`): 2 adds the 1-hour cache writes, which change the cost, so
#: a consumer that knows only 1 dead-letters such an event (kept, replayable once upgraded)
#: instead of storing it, and re-pricing it, without them (a rolling-upgrade review: an old
#: consumer's `replay --reprice` priced them at the 5-minute rate, 15% under). 3 adds the
#: ``embeddings`` endpoint, which a reader of 2 would take for poison anyway (an unknown value).
#: 4 adds the call's ``metadata`` (cost attribution), which a reader of 3 would drop unseen (it
#: ignores fields it does not know): an event with metadata is dead-lettered there instead.
#: Every other event is still written at 1, which older consumers read.
SCHEMA_VERSION = 4
#: the latest ``created_at`` an event may carry
LATEST = datetime(9000, 1, 1, tzinfo=UTC)
#: the largest integer every store holds in every integer column (Postgres INTEGER): token
#: counts (the gateway writes at most PLAUSIBLE_TOKENS), the attempt number and the HTTP status.
#: A record beyond it is poison: DuckDB's INTEGER refused an http_status of 2**31 as "invalid
#: input", which the projector took for an unavailable store, paused for good; a total of 2**63 - 1
#: was stored and then overflowed its day's rollup, so DuckDB refused every later event of the day
STORED_INT = 2**31 - 1
#: money every store holds: NUMERIC(20, 10) / DECIMAL(20, 10), under 10**10 USD either way,
#: after both round it half up to 10 decimals (9999999999.99999999995 became 10**10 and was
#: refused by each store, after the health history had counted it)
STORED_MONEY = Decimal(10**10)
MONEY_BOUND = STORED_MONEY - Decimal("0.00000000005")
#: the longest text of a column Postgres indexes (ids, tenant): a b-tree row holds 2,704 bytes,
#: 4 per character at most. A longer id was refused as "index row size exceeds", which the
#: projector took for an unavailable store, paused for good (the gateway writes ids of 36 to 40
#: characters and tenants of at most 128)
INDEXED_TEXT = 512
assert PLAUSIBLE_TOKENS < STORED_INT
#: a call's metadata (``gateway/api/metadata.py``): OpenAI's limits on a request's ``metadata`` (16
#: pairs, keys of 64 characters, values of 512), and room for an API key's own pairs
MAX_METADATA_PAIRS = 32
MAX_METADATA_KEY = 64
MAX_METADATA_VALUE = 512
MetadataKey = Annotated[str, StringConstraints(min_length=1, max_length=MAX_METADATA_KEY)]
MetadataValue = Annotated[str, StringConstraints(max_length=MAX_METADATA_VALUE)]

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

#: the ``error_code`` of a ``rate_limited`` attempt refused for the day (a Gemini model out of its
#: daily quota, until midnight Pacific): the model's, not the provider's, so health leaves it out
DAILY_QUOTA = "daily_quota_exceeded"

#: fields added after version 1's first release (with a default): a record written before one
#: lacks it, and reads as its default
ADDED_IN_VERSION = frozenset({"cache_creation_1h_tokens", "metadata"})


def version_for(
    cache_creation_1h_tokens: int, endpoint: str = "chat.completions", metadata: Mapping[str, str] | None = None
) -> int:
    """The schema version an event is written at: see :data:`SCHEMA_VERSION`."""
    if metadata:
        return 4
    if endpoint == "embeddings":
        return 3
    return 2 if cache_creation_1h_tokens else 1


#: outcomes that mean the provider itself misbehaved (health counts them as failures)
PROVIDER_FAILURES = frozenset(
    {"overloaded", "timeout", "connection_error", "upstream_error", "malformed_response", "stream_cut"}
)


class UsageEvent(BaseModel):
    """One provider attempt. JSON-encoded on the log; money as exact decimal text."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    schema_version: int = 1  # the recorder writes version_for(...)
    event_id: str = Field(max_length=INDEXED_TEXT)  # UUIDv7, the idempotency key of every projection
    request_id: str = Field(max_length=INDEXED_TEXT)
    attempt: int = Field(ge=1, le=STORED_INT)  # 1-based attempt number within the request
    #: timezone-aware, when the attempt ended; before the year 9000: a stamp near datetime's
    #: end (9999) overflowed the health history's arithmetic and halted projection for good
    created_at: datetime = Field(lt=LATEST)
    tenant_id: str = Field(max_length=INDEXED_TEXT)
    api_key_id: str | None = None
    endpoint: Literal["chat.completions", "completions", "embeddings"] = "chat.completions"
    stream: bool = False
    provider: str
    requested_model: str  # what the client asked for
    provider_model: str  # what the gateway asked the provider for
    served_model: str | None = None  # what the provider says served it
    outcome: Outcome
    http_status: int | None = Field(default=None, ge=-STORED_INT, le=STORED_INT)
    error_code: str | None = None
    error_message: str | None = None
    #: finite: NaN was stored as NULL in DuckDB and as NaN in Postgres, or refused by one store only
    latency_ms: float = Field(allow_inf_nan=False)
    ttft_ms: float | None = Field(default=None, allow_inf_nan=False)
    #: token counts: what every store holds (STORED_INT); an event outside that range is poison
    #: Negative counts are history: gateways before c1a6653 took an upstream's -5 as it came (and
    #: billed the call), and the log must stay readable by every later version; no gateway since
    #: writes one (an unreadable count is usage unknown).
    prompt_tokens: int = Field(default=0, ge=-STORED_INT, le=STORED_INT)
    completion_tokens: int = Field(default=0, ge=-STORED_INT, le=STORED_INT)
    cached_tokens: int = Field(default=0, ge=-STORED_INT, le=STORED_INT)
    cache_creation_tokens: int = Field(default=0, ge=-STORED_INT, le=STORED_INT)
    #: of cache_creation_tokens, those written to a cache that lives an hour (priced apart).
    #: Version 2: an event with any is written at 2; older events read as 0
    cache_creation_1h_tokens: int = Field(default=0, ge=-STORED_INT, le=STORED_INT)
    reasoning_tokens: int = Field(default=0, ge=-STORED_INT, le=STORED_INT)
    total_tokens: int = Field(default=0, ge=-STORED_INT, le=STORED_INT)
    #: exact USD; None means unpriced (no price known at call time), never "free"; under
    #: STORED_MONEY (a larger one stopped the replay, whose diff rounds it to the stores' scale)
    cost_usd: Decimal | None = Field(default=None, gt=-MONEY_BOUND, lt=MONEY_BOUND)
    price_version: str | None = None
    #: whether the provider bills this attempt (it produced tokens)
    billable: bool = False
    #: the stream ended before the provider finished (client gone or upstream cut)
    incomplete: bool = False
    gateway_instance: str | None = None
    #: the call's metadata (cost attribution: team, feature, environment, ...), the request's
    #: pairs and its API key's. Version 4: an event with any is written at 4; older events read
    #: as none. Never a provider's: the gateway sends it to none
    metadata: dict[MetadataKey, MetadataValue] = Field(default_factory=dict, max_length=MAX_METADATA_PAIRS)

    @field_validator("cost_usd", mode="before")
    @classmethod
    def _no_float_money(cls, value: Any) -> Any:
        if isinstance(value, float):
            raise ValueError("cost_usd must be decimal text, not a float")
        return value

    def __hash__(self) -> int:
        """By the event id, its identity (equal events have equal ids): a frozen model hashes
        every field, and the metadata is a dict."""
        return hash(self.event_id)

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
            return _storable(event)
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
        return _storable(event)


#: the event's text fields (every one a store keeps)
_TEXT_FIELDS = tuple(
    name for name, field in UsageEvent.model_fields.items() if str in (field.annotation, *get_args(field.annotation))
)


#: the fields Postgres keys and indexes: a NUL in one cannot be dropped as in the other texts
_KEYS = ("event_id", "request_id", "tenant_id")


def _storable(event: UsageEvent) -> UsageEvent:
    """``event`` if every store can hold it, else ``ValueError``: what the field types let
    through and no store takes. Text with a lone surrogate (a ``\\ud800`` escape) is no UTF-8:
    the DuckDB batch raised TypeError and the projector restarted on it forever; a time whose
    UTC is before the year 1 (``0001-01-01T00:30:00+01:00``) overflowed the health history and
    the day compaction, the same way; a key with a NUL was in DuckDB and refused by Postgres."""
    fields = event.__dict__
    for name in _TEXT_FIELDS:
        text = fields[name]
        if text is not None and not text.isascii():
            try:
                text.encode()
            except UnicodeEncodeError:
                raise ValueError(f"{name} is not Unicode text (a lone surrogate): no store holds it") from None
    for name in _KEYS:
        if "\x00" in fields[name]:
            raise ValueError(f"{name} holds a NUL character: Postgres holds none, and it is a key")
    if metadata := fields["metadata"]:
        _storable_metadata(metadata)
    try:
        event.created_at.astimezone(UTC)
    except OverflowError:
        raise ValueError("created_at is before the year 1 in UTC: no store holds it") from None
    return event


def _storable_metadata(metadata: dict[str, str]) -> None:
    """ValueError unless Postgres holds the metadata: no NUL (``jsonb`` refuses ``\\u0000``).
    Its lone surrogates pydantic refuses itself, in a dict's keys and values."""
    for key, value in metadata.items():
        if "\x00" in key or "\x00" in value:
            raise ValueError(f"metadata {key!r} holds a NUL character: Postgres holds none")
