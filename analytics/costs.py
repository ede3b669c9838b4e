"""Per-tenant costs from the DuckDB usage facts, exact to the last decimal.

Definitions (one row of ``usage_facts`` = one provider attempt):

- **usage** = the attempts the provider bills (``billable``): successful calls, plus streams
  that ended early (cut, or the client left) after the provider produced tokens; those are
  flagged ``incomplete``. Attempts that failed without producing tokens (rate limited,
  timeouts, upstream errors, ...) are not usage: they cost nothing and are not listed.
- ``usageCount`` = the number of usage rows; ``totalTokens`` = their tokens, priced or not.
- ``totalCost`` = the exact sum of ``costUsd`` over priced usage. Unpriced usage (no price was
  known; ``costUsd`` null) is never counted as free: it is reported apart, as
  ``unpricedCount`` / ``unpricedTokens``, until a replay with a price table costs it.
- Time window: ``start`` inclusive, ``end`` exclusive, on the attempt's ``createdAt``; both
  optional, both timezone-aware.
- ``metadata``: only the calls whose metadata holds each of these pairs (cost attribution:
  ``gateway/api/metadata.py``). The totals are then summed from the facts, not the daily rollup.
- ``group_by``: the totals split by ``provider``, ``model``, ``day`` (UTC) or a metadata key
  (``metadata.team``; calls without the key are the group whose value is null); the groups add
  up to the totals, unless truncated. The largest first (by cost; days in order, the newest kept), at most
  :data:`MAX_GROUPS` (``groupsTruncated`` when there were more: a key with a value per call).

JSON (``to_json``): camelCase keys; money as exact decimal text (``"0.0000025"``), never a
float; times in ISO 8601 UTC.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from decimal import Decimal
from typing import Any

import orjson

from analytics.store import AnalyticsStore
from gateway.api.metadata import METADATA_PARAM
from gateway.pricing.base import money_text

ZERO = Decimal(0)
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def _iso(value: datetime | None) -> str | None:
    if value is None:
        return None
    return value.astimezone(UTC).isoformat().replace("+00:00", "Z")


@dataclass(frozen=True, slots=True)
class UsageRow:
    id: str
    request_id: str
    attempt: int
    provider: str
    model: str
    requested_model: str
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    cached_tokens: int
    reasoning_tokens: int
    cost_usd: Decimal | None
    price_version: str | None
    outcome: str
    incomplete: bool
    stream: bool
    created_at: datetime
    #: of prompt_tokens, those written to the prompt cache (Anthropic), and of those the ones
    #: written to the hour-long cache: each priced apart (a review missed them in the rows)
    cache_creation_tokens: int = 0
    cache_creation_1h_tokens: int = 0
    #: the call's metadata (``{}``: none)
    metadata: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "requestId": self.request_id,
            "attempt": self.attempt,
            "provider": self.provider,
            "model": self.model,
            "requestedModel": self.requested_model,
            "promptTokens": self.prompt_tokens,
            "completionTokens": self.completion_tokens,
            "totalTokens": self.total_tokens,
            "cachedTokens": self.cached_tokens,
            "cacheCreationTokens": self.cache_creation_tokens,
            "cacheCreation1hTokens": self.cache_creation_1h_tokens,
            "reasoningTokens": self.reasoning_tokens,
            "costUsd": None if self.cost_usd is None else money_text(self.cost_usd),
            "priceVersion": self.price_version,
            "outcome": self.outcome,
            "incomplete": self.incomplete,
            "stream": self.stream,
            "createdAt": _iso(self.created_at),
            "metadata": self.metadata,
        }


@dataclass(frozen=True, slots=True)
class TenantCosts:
    tenant_id: str
    start: datetime | None
    end: datetime | None
    total_cost: Decimal
    total_tokens: int
    usage_count: int
    unpriced_count: int
    unpriced_tokens: int
    usage: list[UsageRow]

    #: the filter's pairs, and the split of the totals (``group_by`` and its groups), if asked
    metadata: dict[str, str] | None = None
    group_by: str | None = None
    groups: list[CostGroup] | None = None
    groups_truncated: bool = False

    def to_dict(self) -> dict[str, Any]:
        extra: dict[str, Any] = {}
        if self.metadata:
            extra["metadata"] = self.metadata
        if self.group_by is not None:
            extra["groupBy"] = self.group_by
            extra["groups"] = [g.to_dict() for g in self.groups or ()]
            extra["groupsTruncated"] = self.groups_truncated
        return {
            "tenantId": self.tenant_id,
            "start": _iso(self.start),
            "end": _iso(self.end),
            "totalCost": money_text(self.total_cost),
            "totalTokens": self.total_tokens,
            "usageCount": self.usage_count,
            "unpricedCount": self.unpriced_count,
            "unpricedTokens": self.unpriced_tokens,
            **extra,
            "usage": [row.to_dict() for row in self.usage],
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict())


@dataclass(frozen=True, slots=True)
class CostGroup:
    """The totals of one group of a split (``group_by``): its value (None: the calls without it)."""

    value: str | None
    total_cost: Decimal
    total_tokens: int
    usage_count: int
    unpriced_count: int
    unpriced_tokens: int

    def to_dict(self) -> dict[str, Any]:
        return {
            "value": self.value,
            "totalCost": money_text(self.total_cost),
            "totalTokens": self.total_tokens,
            "usageCount": self.usage_count,
            "unpricedCount": self.unpriced_count,
            "unpricedTokens": self.unpriced_tokens,
        }


#: what a split groups by: the facts' columns, as SQL (a metadata key: :func:`metadata_path`)
GROUPS = {
    "provider": "provider",
    "model": "coalesce(served_model, provider_model)",
    "day": "CAST(CAST(timezone('UTC', created_at) AS DATE) AS VARCHAR)",
}
#: the most groups a split lists
MAX_GROUPS = 1_000
_GROUPED = """
SELECT {value} AS value,
       coalesce(sum(cost_usd), 0) AS cost,
       coalesce(sum(total_tokens), 0),
       count(*),
       count(*) FILTER (WHERE cost_usd IS NULL),
       coalesce(sum(total_tokens) FILTER (WHERE cost_usd IS NULL), 0)
FROM usage_facts
WHERE {where}
GROUP BY 1
ORDER BY {order}
LIMIT {limit}
"""


def metadata_path(key: str) -> str:
    """The JSONPath of a metadata key, whatever its characters (``$x``, ``/p`` and ``a.b`` are
    keys, not paths, quoted so)."""
    return '$."' + key.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _grouping(group_by: str) -> tuple[str, list[Any]]:
    """The SQL value of a split, and its parameters."""
    if group_by.startswith(METADATA_PARAM):
        return "json_extract_string(metadata, ?)", [metadata_path(group_by.removeprefix(METADATA_PARAM))]
    if group_by not in GROUPS:
        raise ValueError(f"cannot group by {group_by!r}: {', '.join(GROUPS)} or metadata.<key>")
    return GROUPS[group_by], []


#: the totals over the facts of a window (what the rollup path below must always equal)
_TOTALS = """
SELECT count(*),
       coalesce(sum(total_tokens), 0),
       coalesce(sum(cost_usd), 0),
       count(*) FILTER (WHERE cost_usd IS NULL),
       coalesce(sum(total_tokens) FILTER (WHERE cost_usd IS NULL), 0)
FROM usage_facts
WHERE {where}
"""
#: the same totals from parts: whole UTC days from the usage_daily rollup, the partial days at
#: the window's edges from the facts (each part: ``calls, tokens, cost, unpriced, unpriced tokens``)
_TOTALS_OF_PARTS = """
SELECT coalesce(sum(calls), 0),
       coalesce(sum(tokens), 0),
       coalesce(sum(cost_usd), 0),
       coalesce(sum(unpriced_calls), 0),
       coalesce(sum(unpriced_tokens), 0)
FROM ({parts})
"""
_DAYS_PART = """
SELECT calls, tokens, cost_usd, unpriced_calls, unpriced_tokens
FROM usage_daily
WHERE {where}
"""
_FACTS_PART = """
SELECT count(*), sum(total_tokens), sum(cost_usd), count(*) FILTER (WHERE cost_usd IS NULL),
       sum(total_tokens) FILTER (WHERE cost_usd IS NULL)
FROM usage_facts
WHERE {where}
"""
_ROWS = """
SELECT event_id, request_id, attempt, provider, coalesce(served_model, provider_model),
       requested_model, prompt_tokens, completion_tokens, total_tokens, cached_tokens,
       reasoning_tokens, cost_usd, price_version, outcome, incomplete, stream, created_at,
       cache_creation_tokens, coalesce(cache_creation_1h_tokens, 0), metadata
FROM usage_facts
WHERE {where}
ORDER BY created_at, event_id
"""
#: ``_ROWS`` as the service fetches it: the money as its exact decimal text and the instant as
#: microseconds since the epoch, turned into ``Decimal`` / UTC ``datetime`` in Python (same
#: values, same exponents). DuckDB's own conversion of TIMESTAMPTZ (through the session time
#: zone) and DECIMAL values to Python objects cost ~15% of the listing over 10M facts.
_ROWS_FETCHED = (
    _ROWS.replace("cost_usd, price_version", "CAST(cost_usd AS VARCHAR), price_version")
    .replace("stream, created_at,\n", "stream, epoch_us(created_at),\n")
    .replace(", metadata\n", ", CAST(metadata AS VARCHAR)\n")
)


def _require_aware(name: str, value: datetime | None) -> None:
    if value is not None and value.tzinfo is None:
        raise ValueError(f"{name} must be a timezone-aware datetime")


class CostTrackingService:
    """Costs per tenant over the analytics store (reads go through the store's connection)."""

    def __init__(self, store: AnalyticsStore) -> None:
        self._store = store

    async def get_costs_for_tenant(
        self,
        tenant_id: str,
        start: datetime | None = None,
        end: datetime | None = None,
        *,
        limit: int | None = None,
        metadata: Mapping[str, str] | None = None,
        group_by: str | None = None,
    ) -> TenantCosts:
        """``limit`` caps the listed usage rows (the oldest first); totals cover the window.
        ``metadata``: only the calls with each of these pairs; ``group_by``: split the totals
        (see the module docstring)."""
        _require_aware("start", start)
        _require_aware("end", end)
        condition, params = _facts_window(tenant_id, start, end, metadata)
        rows_sql = _ROWS_FETCHED.format(where=condition)
        if limit is not None:
            rows_sql += f" LIMIT {int(limit)}"
        if metadata:  # the rollup knows no metadata: the facts
            totals_sql, totals_params = _TOTALS.format(where=condition), params
        else:
            totals_sql, totals_params = totals_query(tenant_id, start, end)
        grouped: tuple[str, list[Any]] | None = None
        if group_by is not None:
            value, value_params = _grouping(group_by)
            # days: the newest (listed oldest first, below), others the largest
            order = "value DESC" if group_by == "day" else "cost DESC, value NULLS LAST"
            grouped = (
                _GROUPED.format(value=value, where=condition, order=order, limit=MAX_GROUPS + 1),
                value_params + params,
            )

        def query(conn: Any) -> tuple[Sequence[Any], list[tuple[Any, ...]], list[tuple[Any, ...]]]:
            totals = conn.execute(totals_sql, totals_params).fetchone()
            rows = conn.execute(rows_sql, params).fetchall()
            groups = conn.execute(*grouped).fetchall() if grouped is not None else []
            return totals, rows, groups

        totals, rows, groups = await self._store.run(query)
        count, tokens, cost, unpriced, unpriced_tokens = totals
        return TenantCosts(
            tenant_id=tenant_id,
            start=start,
            end=end,
            total_cost=Decimal(cost) if cost is not None else ZERO,
            total_tokens=int(tokens),
            usage_count=int(count),
            unpriced_count=int(unpriced),
            unpriced_tokens=int(unpriced_tokens),
            usage=[_usage_row(r) for r in rows],
            metadata=dict(metadata) if metadata else None,
            group_by=group_by,
            groups=None if group_by is None else _listed([_group(g) for g in groups[:MAX_GROUPS]], group_by),
            groups_truncated=len(groups) > MAX_GROUPS,
        )


def _listed(groups: list[CostGroup], group_by: str) -> list[CostGroup]:
    """Days oldest first (the query kept the newest); other splits as the query ordered them."""
    return groups[::-1] if group_by == "day" else groups


def _group(r: tuple[Any, ...]) -> CostGroup:
    return CostGroup(
        value=r[0],
        total_cost=Decimal(r[1]),
        total_tokens=int(r[2]),
        usage_count=int(r[3]),
        unpriced_count=int(r[4]),
        unpriced_tokens=int(r[5]),
    )


def _window(tenant_id: str, column: str, low: Any, high: Any, *conditions: str) -> tuple[str, list[Any]]:
    """The WHERE clause (and its parameters) of a tenant's rows with ``low <= column < high``
    (``None``: unbounded on that side), and ``conditions``."""
    where = ["tenant_id = ?", *conditions]
    params: list[Any] = [tenant_id]
    if low is not None:
        where.append(f"{column} >= ?")
        params.append(low)
    if high is not None:
        where.append(f"{column} < ?")
        params.append(high)
    return " AND ".join(where), params


def _facts_window(
    tenant_id: str, start: datetime | None, end: datetime | None, metadata: Mapping[str, str] | None = None
) -> tuple[str, list[Any]]:
    """The WHERE clause (and its parameters) of a tenant's billable usage in ``[start, end)``,
    with each of the ``metadata`` pairs."""
    condition, params = _window(tenant_id, "created_at", start, end, "billable")
    for key, value in (metadata or {}).items():
        condition += " AND json_extract_string(metadata, ?) = ?"
        params += [metadata_path(key), value]
    return condition, params


def _midnight(day: date) -> datetime:
    return datetime.combine(day, time(0), UTC)


def totals_query(tenant_id: str, start: datetime | None, end: datetime | None) -> tuple[str, list[Any]]:
    """The totals of a tenant's usage in ``[start, end)``, as one statement: the whole UTC days of
    the window from usage_daily, the partial days at its edges from usage_facts. The result row
    (types included) is the one ``_TOTALS`` gives over the facts alone."""
    # whole days: [first, last) as UTC dates; None: unbounded on that side
    first = last = None
    if start is not None:
        at = start.astimezone(UTC)
        if at != _midnight(at.date()) and at.date() == date.max:  # no next day: facts only
            condition, params = _facts_window(tenant_id, start, end)
            return _TOTALS.format(where=condition), params
        first = at.date() if at == _midnight(at.date()) else at.date() + timedelta(days=1)
    if end is not None:
        last = end.astimezone(UTC).date()
    if first is not None and last is not None and first >= last:  # no whole day inside
        condition, params = _facts_window(tenant_id, start, end)
        return _TOTALS.format(where=condition), params
    days, params = _window(tenant_id, "day", first, last)
    parts = [_DAYS_PART.format(where=days)]
    if start is not None and first is not None and start < _midnight(first):
        condition, edge = _facts_window(tenant_id, start, _midnight(first))
        parts.append(_FACTS_PART.format(where=condition))
        params += edge
    if end is not None and last is not None and _midnight(last) < end:
        condition, edge = _facts_window(tenant_id, _midnight(last), end)
        parts.append(_FACTS_PART.format(where=condition))
        params += edge
    return _TOTALS_OF_PARTS.format(parts=" UNION ALL ".join(parts)), params


def _usage_row(r: tuple[Any, ...]) -> UsageRow:
    return UsageRow(
        id=r[0],
        request_id=r[1],
        attempt=r[2],
        provider=r[3],
        model=r[4],
        requested_model=r[5],
        prompt_tokens=r[6],
        completion_tokens=r[7],
        total_tokens=r[8],
        cached_tokens=r[9],
        reasoning_tokens=r[10],
        cost_usd=None if r[11] is None else Decimal(r[11]),
        price_version=r[12],
        outcome=r[13],
        incomplete=r[14],
        stream=r[15],
        created_at=_EPOCH + timedelta(microseconds=r[16]),
        cache_creation_tokens=r[17],
        cache_creation_1h_tokens=r[18],
        metadata={} if r[19] is None or r[19] == "{}" else orjson.loads(r[19]),
    )
