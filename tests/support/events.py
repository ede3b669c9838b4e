"""Usage events for tests: a priced, billable gpt-4o call unless told otherwise."""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Any

from gateway.events import UsageEvent
from gateway.ids import uuid7


def usage_event(
    tenant: str,
    cost: Decimal | None,
    at: datetime,
    *,
    outcome: str | None = None,
    billable: bool = True,
    tokens: tuple[int, int] = (100, 20),
    **changes: Any,
) -> UsageEvent:
    """``outcome`` defaults to a success when billable, a rate limit when not; ``changes``
    override any field."""
    fields: dict[str, Any] = {
        "event_id": str(uuid7()),
        "request_id": "req_1",
        "attempt": 1,
        "created_at": at,
        "tenant_id": tenant,
        "provider": "openai",
        "requested_model": "gpt-4o",
        "provider_model": "gpt-4o",
        "served_model": "gpt-4o-2024-08-06",
        "outcome": outcome if outcome is not None else "success" if billable else "rate_limited",
        "latency_ms": 10.0,
        "prompt_tokens": tokens[0],
        "completion_tokens": tokens[1],
        "total_tokens": sum(tokens),
        "cost_usd": cost,
        "price_version": "v1" if cost is not None else None,
        "billable": billable,
    }
    fields.update(changes)
    return UsageEvent(**fields)
