"""Budget settings: a spending limit per tenant and calendar period (UTC day or month).

One nested model in :class:`gateway.settings.Settings` (``settings.budgets``); in the config
file under ``budgets:``, in the environment as JSON::

    LLM_GATEWAY_BUDGETS='{"tenants": {"acme": {"usd": "50", "period": "month"}},
                          "default": {"usd": "5", "period": "day"}}'

``default`` applies to every tenant not listed. ``metadata`` gives budgets below (or across) the
tenants: each to the calls whose metadata hold all of its ``match`` pairs (a team, a feature),
of one ``tenant``, or of every tenant together when it names none::

    budgets:
      metadata:
        - {tenant: acme, match: {team: search}, usd: "10", period: month}
        - {match: {feature: summarize}, usd: "100", period: day}

A call must fit every budget it falls under: its tenant's and each metadata budget it matches.
Amounts are exact decimals: strings of digits
with an optional fraction (``"49.99"``), or integers. A YAML or JSON number with a fraction is
refused: its parser made it a float, whose digits past the 17th are lost (``12345678.123456789``
read as ``12345678.12345679``), so it is asked for as a string.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, field_validator

from gateway.metadata_scopes import MetadataScoped, Scope
from gateway.tenant_ids import PerTenantAndScope

#: the largest limit (USD) a budget may give: more is a typo, not a budget
MAX_LIMIT = Decimal("1000000000")
#: an amount written as text: digits, an optional fraction (no sign, exponent, blank or "_")
_AMOUNT = re.compile(r"[0-9]+(\.[0-9]+)?")

Period = Literal["day", "month"]
__all__ = ["MAX_LIMIT", "Budget", "BudgetSettings", "MetadataBudget", "Period", "Scope"]


class Budget(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    #: the most a tenant may spend in one period, in USD (0: no call at all)
    usd: Decimal
    period: Period = "month"

    @field_validator("usd", mode="before")
    @classmethod
    def _exact(cls, value: Any) -> Decimal:
        if isinstance(value, float):
            raise ValueError(
                f'write an amount with a fraction as a string, e.g. usd: "{value}" (a number is read as a '
                "float, whose last digits may be lost)"
            )
        if isinstance(value, bool) or not isinstance(value, (str, int, Decimal)):
            raise ValueError('give the amount in USD as a string or an integer, e.g. "50.00"')
        if isinstance(value, str) and not _AMOUNT.fullmatch(value):
            raise ValueError(f'{value[:40]!r} is not an amount in USD (digits, an optional fraction: "49.99")')
        amount = Decimal(value)
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


class MetadataBudget(MetadataScoped, Budget):
    """A budget of the calls whose metadata hold every pair of ``match``: of ``tenant``'s calls,
    or of every tenant's together when it is None (a feature's spend across the platform)."""

    kind: ClassVar[str] = "budget"


class BudgetSettings(PerTenantAndScope[Budget, MetadataBudget]):
    """A budget per tenant id (``tenants``), ``default`` for every tenant not listed, and the
    budgets of calls with given metadata pairs (``metadata``)."""

    def every_budget(self) -> list[Budget]:
        """Every budget given: the tenants', the default, the metadata budgets."""
        default = [self.default] if self.default is not None else []
        return [*self.tenants.values(), *default, *self.metadata]
