"""What each tenant has spent in its budget's current period, derived from the usage events.

The ledger is a projection of the event log like the cost stores and the health view: it adds
each event's ``cost_usd`` to its tenant's period (by the event's time), and the gateway refuses
a tenant's next call once that sum reaches its budget (:class:`~gateway.errors.BudgetExceeded`,
before any provider is asked).

It follows the log (the embedded one, or the Kafka topic every replica writes: see
:mod:`gateway.budgets.follow`), and counts this process's own attempts at once, as they are
recorded (:meth:`SpendLedger.observe`): those are *pending* until the log brings them back,
when they are known by their id and not counted again. What the log brought, with the position
it was read to, is the *confirmed* spend a snapshot keeps (:mod:`gateway.budgets.snapshot`), so
a restart reads only the log after it.

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
from gateway.event_json import UNDECODABLE, decode_event, event_id_of
from gateway.events import UsageEvent
from gateway.ids import Clock, utcnow
from gateway.pricing.base import format_usd
from gateway.safe_text import log_value
from gateway.windowed_log import WindowedLog

log = logging.getLogger("gateway.budgets")
ZERO = Decimal(0)
#: own events counted and not yet read back from the log, at most (past it the oldest is
#: forgotten, and counted a second time if it comes back: too much, never too little)
MAX_PENDING = 500_000
#: the ids of the last records read, kept to count a record the log holds twice once (about
#: 10 MB); a snapshot keeps the last :data:`SNAPSHOT_IDS` of them
RECENT_IDS = 100_000
SNAPSHOT_IDS = 10_000

#: tenant -> (period kind, period start) -> spent
Spend = dict[str, dict[tuple[str, datetime], Decimal]]


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
    def __init__(self, config: BudgetSettings, *, clock: Clock = utcnow) -> None:
        self.config = config
        self._clock = clock
        #: tenant -> (period, start) -> spent: the current period and, for a replica whose clock
        #: is ahead, the next; confirmed and pending together
        self._spent: Spend = {}
        #: own events counted, by id, until the log brings them back: (tenant, period, cost)
        self._pending: dict[str, tuple[str, tuple[str, datetime], Decimal]] = {}
        #: whether the log's events before now are all counted (its read at the start is over)
        self.complete = False
        #: whether a follower brings this process's own events back from the log (else they are
        #: counted once, as recorded, and not kept pending)
        self.follows_log = True
        #: records of the log that could not be read (the projector dead-letters them)
        self.unreadable = 0
        #: the ids of the last records read, oldest first, and the records found twice
        self.recent: dict[str, None] = {}
        self.duplicates = 0
        #: the refused calls' WARNINGs (``gateway.budgets``)
        self.refusals = WindowedLog(log, _refusals_counted, key_fields=lambda tenant: {"tenantId": tenant})

    # --- what is spent ---------------------------------------------------------------------------

    def observe(self, event: UsageEvent) -> None:
        """An attempt of this process, as it is recorded (the recorder's observer)."""
        counted = self._add(event.tenant_id, event.created_at, event.cost_usd)
        if counted is not None and self.follows_log:
            pending = self._pending
            pending[event.event_id] = counted
            if len(pending) > MAX_PENDING:
                del pending[next(iter(pending))]

    def observe_record(self, raw: bytes | None) -> None:
        """A record of the log (any process's attempt), counted once by its event id: an own one
        is known without decoding it, and a record the log holds twice (a spool sent again
        after a crash) counts once when its first copy is among the last :data:`RECENT_IDS`."""
        if raw is None:
            return
        if not isinstance(raw, bytes):  # a row another program wrote as text (or a number)
            if not isinstance(raw, str):
                self.unreadable += 1
                return
            raw = raw.encode("utf-8", "surrogatepass")  # the projector decodes text alike
        event_id = event_id_of(raw)
        if event_id is not None and self._known(event_id):
            return
        try:
            event = decode_event(raw)
        except UNDECODABLE:  # as the projector dead-letters it
            self.unreadable += 1
            return
        if event_id is None and self._known(event.event_id):
            return
        self._add(event.tenant_id, event.created_at, event.cost_usd)

    def _known(self, event_id: str) -> bool:
        """Whether ``event_id`` is counted already (an own attempt, or read lately); it is read now."""
        recent = self.recent
        if event_id in recent:
            self.duplicates += 1
            return True
        recent[event_id] = None
        if len(recent) > RECENT_IDS:
            del recent[next(iter(recent))]
        return bool(self._pending) and self._pending.pop(event_id, None) is not None

    def _add(self, tenant: str, at: datetime, cost: Decimal | None) -> tuple[str, tuple[str, datetime], Decimal] | None:
        if not cost or cost < 0:  # unknown (None) or free
            return None
        budget = self.config.for_tenant(tenant)
        if budget is None:
            return None
        current = budget.period_start(self._clock())
        start = budget.period_start(at)
        if start != current and start != budget.period_end(current):
            return None  # a past period's (or a clock far ahead): no budget of now
        key = (budget.period, start)
        periods = self._spent.get(tenant)
        if periods is None:
            self._spent[tenant] = {key: cost}
        else:
            periods[key] = periods.get(key, ZERO) + cost
            if len(periods) > 1:
                for old in [k for k in periods if k[1] < current]:
                    del periods[old]
        return tenant, key, cost

    # --- snapshots ----------------------------------------------------------------------------------

    def confirmed(self) -> Spend:
        """What the log brought so far: the spend less the own attempts it has not brought yet."""
        spent = {tenant: dict(periods) for tenant, periods in self._spent.items()}
        for tenant, key, cost in self._pending.values():
            periods = spent.get(tenant)
            if periods is not None and key in periods:
                periods[key] -= cost
        return {t: {k: v for k, v in p.items() if v > 0} for t, p in spent.items() if any(v > 0 for v in p.values())}

    def recent_ids(self) -> list[str]:
        """The ids of the last :data:`SNAPSHOT_IDS` records read, oldest first (for a snapshot)."""
        ids = list(self.recent)
        return ids[-SNAPSHOT_IDS:]

    def restore(self, confirmed: Spend, recent: list[str] | None = None) -> None:
        """Add a snapshot's confirmed spend (the log read from the snapshot's position on): only
        what still is a current (or next) period of each tenant's budget; and the ids of the
        last records it had read."""
        for event_id in recent or ():
            self.recent[event_id] = None
        now = self._clock()
        tenants: set[str] = set()
        total = ZERO
        for tenant, periods in confirmed.items():
            budget = self.config.for_tenant(tenant)
            if budget is None:
                continue
            current = budget.period_start(now)
            for (period, start), cost in periods.items():
                if period == budget.period and start in (current, budget.period_end(current)) and cost > 0:
                    counted = self._spent.setdefault(tenant, {})
                    counted[period, start] = counted.get((period, start), ZERO) + cost
                    tenants.add(tenant)
                    total += cost
        # the snapshot is taken as written (an owner-only file): what it brought is said, so a
        # spend that does not match the stores can be traced to it (delete it to count again)
        log.info(
            "budgets: the snapshot gave %d tenants' spend of their periods, $%s in all", len(tenants), format_usd(total)
        )

    # --- what is allowed ---------------------------------------------------------------------------

    def standing(self, tenant: str) -> Standing | None:
        """``tenant``'s budget now (None: it has none)."""
        budget = self.config.for_tenant(tenant)
        if budget is None:
            return None
        start = budget.period_start(self._clock())
        periods = self._spent.get(tenant)
        spent = periods.get((budget.period, start), ZERO) if periods is not None else ZERO
        return Standing(tenant, budget, start, budget.period_end(start), spent)

    def check(self, tenant: str) -> None:
        """Raise :class:`BudgetExceeded` when ``tenant`` has used its budget of the period (and
        log it: a line a minute per tenant, the others counted)."""
        budget = self.config.for_tenant(tenant)
        if budget is None:
            return
        periods = self._spent.get(tenant)
        if budget.usd > 0 and (
            periods is None or periods.get((budget.period, budget.period_start(self._clock())), ZERO) < budget.usd
        ):
            return  # the common case, without building a Standing
        standing = self.standing(tenant)
        if standing is not None and standing.exceeded:
            self.refusals.hit(
                tenant,
                lambda since: (
                    f"budget exceeded: tenant {log_value(tenant)} spent ${format_usd(standing.spent)} of its "
                    f"{'daily' if standing.budget.period == 'day' else 'monthly'} ${format_usd(standing.budget.usd)}; "
                    f"its calls are refused until {standing.resets.strftime('%Y-%m-%dT%H:%M:%SZ')}{since}"
                ),
                {
                    "tenantId": tenant,
                    "period": standing.budget.period,
                    "spentUsd": format_usd(standing.spent),
                    "limitUsd": format_usd(standing.budget.usd),
                    "resetsAt": standing.resets.strftime("%Y-%m-%dT%H:%M:%SZ"),
                },
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
