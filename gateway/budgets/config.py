"""Budget settings: a spending limit per tenant and calendar period (UTC day or month).

One nested model in :class:`gateway.settings.Settings` (``settings.budgets``); in the config
file under ``budgets:``, in the environment as JSON::

    LLM_GATEWAY_BUDGETS='{"tenants": {"acme": {"usd": "50", "period": "month"}},
                          "default": {"usd": "5", "period": "day"}}'

``default`` applies to every tenant not listed. Amounts are exact decimals: give them as
strings or integers (a YAML or JSON number with a fraction is read by its written digits,
never through binary floating point arithmetic).
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from decimal import Decimal, InvalidOperation
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

#: the largest limit (USD) a budget may give: more is a typo, not a budget
MAX_LIMIT = Decimal("1000000000")
#: tenant ids are the events' (the stores index at most 255 characters)
_TENANT = re.compile(r"\S(.*\S)?", re.DOTALL)

Period = Literal["day", "month"]


class Budget(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    #: the most a tenant may spend in one period, in USD (0: no call at all)
    usd: Decimal
    period: Period = "month"

    @field_validator("usd", mode="before")
    @classmethod
    def _exact(cls, value: Any) -> Decimal:
        if isinstance(value, bool) or not isinstance(value, (str, int, float, Decimal)):
            raise ValueError('give the amount in USD as a string or a number, e.g. "50.00"')
        try:
            # a float (YAML or JSON) by its shortest text, the digits written in the file
            amount = Decimal(repr(value) if isinstance(value, float) else value)
        except InvalidOperation:
            raise ValueError(f"{value!r} is not an amount in USD") from None
        if not amount.is_finite() or amount < 0 or amount > MAX_LIMIT:
            raise ValueError(f"an amount from 0 to {MAX_LIMIT} USD, got {value!r}")
        return amount

    def period_start(self, at: datetime) -> datetime:
        """The start (UTC) of the period ``at`` falls in."""
        at = at.astimezone(UTC)
        if self.period == "day":
            return datetime(at.year, at.month, at.day, tzinfo=UTC)
        return datetime(at.year, at.month, 1, tzinfo=UTC)

    def period_end(self, start: datetime) -> datetime:
        """The start of the period after the one starting at ``start``."""
        if self.period == "day":
            return start + timedelta(days=1)
        if start.month == 12:
            return start.replace(year=start.year + 1, month=1)
        return start.replace(month=start.month + 1)


class BudgetSettings(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    #: a budget per tenant id
    tenants: dict[str, Budget] = Field(default_factory=dict)
    #: the budget of every tenant not in ``tenants`` (None: unlimited)
    default: Budget | None = None

    @field_validator("tenants")
    @classmethod
    def _tenant_ids(cls, tenants: dict[str, Budget]) -> dict[str, Budget]:
        for tenant in tenants:
            if not _TENANT.fullmatch(tenant) or len(tenant) > 255:
                raise ValueError(f"{tenant[:80]!r} is not a tenant id (1 to 255 characters, no space at either end)")
        return tenants

    @property
    def enabled(self) -> bool:
        return bool(self.tenants) or self.default is not None

    def for_tenant(self, tenant: str) -> Budget | None:
        budget = self.tenants.get(tenant)
        return budget if budget is not None else self.default
