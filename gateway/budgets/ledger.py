"""What each tenant has spent in its budget's current period, derived from the usage events.

The ledger is a projection of the event stream like the cost stores and the health view: it
adds each event's ``cost_usd`` to its tenant's period (by the event's time), and the gateway
refuses a tenant's next call once that sum reaches its budget
(:class:`~gateway.errors.BudgetExceeded`, before any provider is asked). Nothing of it is stored:
a gateway that starts reads the current period's events from the log again
(:mod:`gateway.budgets.seed`; with Kafka, :mod:`gateway.budgets.kafka_sync`, which also brings
every other replica's events).

- A budget is checked before a call, not during it: the calls in flight when a tenant reaches
  it still finish, so its spend can pass the limit by what they cost.
- An attempt whose cost is unknown (``cost_usd`` null: a model without a price) adds nothing.
- Events count at the cost they were recorded with (``replay --reprice`` re-costs the stores,
  not the log).
"""

from __future__ import annotations

import logging
from collections.abc import Hashable
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal

from gateway.budgets.config import Budget, BudgetSettings
from gateway.errors import BudgetExceeded
from gateway.events import UsageEvent
from gateway.ids import Clock, utcnow
from gateway.pricing.base import format_usd
from gateway.safe_text import log_value
from gateway.windowed_log import WindowedLog

log = logging.getLogger("gateway.budgets")
ZERO = Decimal(0)
#: own events counted and not yet read back from the shared stream, at most (past it the oldest
#: is forgotten, and counted a second time if it comes back: too much, never too little)
MAX_ECHOES = 500_000


@dataclass(frozen=True, slots=True)
class Standing:
    """One tenant's budget now."""

    tenant: str
    budget: Budget
    start: datetime
    resets: datetime
    spent: Decimal

    @property
    def remaining(self) -> Decimal:
        return max(self.budget.usd - self.spent, ZERO)

    @property
    def exceeded(self) -> bool:
        return self.spent >= self.budget.usd


class SpendLedger:
    def __init__(self, config: BudgetSettings, *, clock: Clock = utcnow, shared_stream: bool = False) -> None:
        """``shared_stream``: the events also come from a stream every replica writes (Kafka),
        this process's own among them, which :meth:`observe` counted already."""
        self.config = config
        self._clock = clock
        #: tenant -> period start -> spent (the current period and, for a replica whose clock
        #: is ahead, the next)
        self._spent: dict[str, dict[datetime, Decimal]] = {}
        #: own events counted, by id, until the shared stream brings them back
        self._echoes: dict[str, None] | None = {} if shared_stream else None
        #: whether the events before now are all counted (the start's read of the log is over)
        self.complete = not shared_stream
        #: the refused calls' WARNINGs (``gateway.budgets``)
        self.refusals = WindowedLog(log, _refusals_counted)

    def observe(self, event: UsageEvent) -> None:
        """A usage event of this process (the recorder's observer)."""
        if self._add(event) and self._echoes is not None:
            echoes = self._echoes
            echoes[event.event_id] = None
            if len(echoes) > MAX_ECHOES:
                del echoes[next(iter(echoes))]

    def observe_shared(self, event: UsageEvent) -> None:
        """A usage event read from the log or the shared stream (any process's)."""
        if self._echoes is not None and self._echoes:
            try:
                del self._echoes[event.event_id]
                return  # counted when this process recorded it
            except KeyError:
                pass
        self._add(event)

    def _add(self, event: UsageEvent) -> bool:
        cost = event.cost_usd
        if not cost or cost < 0:  # unknown (None) or free
            return False
        budget = self.config.for_tenant(event.tenant_id)
        if budget is None:
            return False
        current = budget.period_start(self._clock())
        start = budget.period_start(event.created_at)
        if start != current and start != budget.period_end(current):
            return False  # a past period's (or a clock far ahead): no budget of now
        periods = self._spent.get(event.tenant_id)
        if periods is None:
            self._spent[event.tenant_id] = {start: cost}
            return True
        periods[start] = periods.get(start, ZERO) + cost
        if len(periods) > 1:
            for old in [p for p in periods if p < current]:
                del periods[old]
        return True

    def standing(self, tenant: str) -> Standing | None:
        """``tenant``'s budget now (None: it has none)."""
        budget = self.config.for_tenant(tenant)
        if budget is None:
            return None
        start = budget.period_start(self._clock())
        periods = self._spent.get(tenant)
        spent = periods.get(start, ZERO) if periods is not None else ZERO
        return Standing(tenant, budget, start, budget.period_end(start), spent)

    def check(self, tenant: str) -> None:
        """Raise :class:`BudgetExceeded` when ``tenant`` has used its budget of the period (and
        log it: a line a minute per tenant, the others counted)."""
        standing = self.standing(tenant)
        if standing is not None and standing.exceeded:
            self.refusals.hit(
                tenant,
                lambda since: (
                    f"budget exceeded: tenant {log_value(tenant)} spent ${format_usd(standing.spent)} of its "
                    f"{'daily' if standing.budget.period == 'day' else 'monthly'} ${format_usd(standing.budget.usd)}; "
                    f"its calls are refused until {standing.resets.isoformat()}{since}"
                ),
            )
            raise BudgetExceeded.of(standing)

    def earliest_start(self) -> datetime:
        """The start of the earliest current period of the budgets given."""
        now = self._clock()
        budgets = [*self.config.tenants.values(), self.config.default]
        return min(b.period_start(now) for b in budgets if b is not None)

    def tenants(self) -> list[str]:
        """Every tenant with a budget given or a spend counted."""
        return sorted(set(self.config.tenants) | set(self._spent))


def _refusals_counted(tenant: Hashable, count: int, seconds: float) -> str:
    return (
        f"budget exceeded: tenant {log_value(str(tenant))}: {count} more calls refused, in the "
        f"{seconds:.0f} s after the last such line"
    )
