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

Budgets of metadata pairs (a team's, a feature's: ``budgets.metadata``) are counted alike, each
an *account* of its own beside the tenants': an attempt counts in its tenant's and in every
metadata budget whose pairs its metadata hold.

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
from itertools import chain
from typing import cast

from gateway.budgets.config import Budget, BudgetSettings, MetadataBudget, Scope
from gateway.errors import BudgetExceeded
from gateway.event_json import UNDECODABLE, decode_event, event_id_of
from gateway.events import UsageEvent
from gateway.ids import Clock, utcnow
from gateway.metadata_scopes import Account, ScopeIndex, account_fields, account_name
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

#: a period: its kind and start
PeriodKey = tuple[str, datetime]
#: account -> period -> spent
Spend = dict[Account, dict[PeriodKey, Decimal]]
#: what one attempt added to one account: to which, in which period, how much
Entry = tuple[Account, PeriodKey, Decimal]
#: what one attempt added, to each account it counts in
Counted = tuple[Entry, ...]


@dataclass(frozen=True, slots=True)
class Standing:
    """One budget now: a tenant's, or a metadata budget's (``metadata``: its pairs; ``tenant``
    None: of every tenant)."""

    tenant: str | None
    budget: Budget
    start: datetime
    resets: datetime
    spent: Decimal

    @property
    def metadata(self) -> dict[str, str]:
        """The pairs of the calls it covers ({}: every call of the tenant)."""
        return self.budget.match if isinstance(self.budget, MetadataBudget) else {}

    @property
    def pairs(self) -> str:
        """Its pairs as a message names them (``env=prod, team=search``; "": a tenant's budget)."""
        return self.budget.pairs if isinstance(self.budget, MetadataBudget) else ""

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
        #: account -> (period, start) -> spent: the current period and, for a replica whose clock
        #: is ahead, the next; confirmed and pending together
        self._spent: Spend = {}
        #: own events counted, by id, until the log brings them back: what each added to its
        #: first account, and (an attempt under metadata budgets) to the others
        self._pending: dict[str, Entry] = {}
        self._pending_more: dict[str, Counted] = {}
        #: the metadata budgets by scope, and indexed for a call's metadata to find them
        self._scoped: dict[Scope, MetadataBudget] = {b.scope: b for b in config.metadata}
        self._index = ScopeIndex(config.metadata) if config.metadata else None
        #: period kind -> the current period's start, the next one's, and the one after (the
        #: clock's periods, computed again only when the clock leaves them)
        self._periods: dict[str, tuple[datetime, datetime, datetime]] = {}
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
        self.refusals = WindowedLog(log, _refusals_counted, key_fields=_key_fields)

    # --- what is spent ---------------------------------------------------------------------------

    def observe(self, event: UsageEvent) -> None:
        """An attempt of this process, as it is recorded (the recorder's observer)."""
        counted = self._count(event.tenant_id, event.metadata, event.created_at, event.cost_usd)
        if counted and self.follows_log:
            pending = self._pending
            pending[event.event_id] = counted[0]
            if len(counted) > 1:
                self._pending_more[event.event_id] = counted[1:]
            if len(pending) > MAX_PENDING:
                oldest = next(iter(pending))
                del pending[oldest]
                self._pending_more.pop(oldest, None)

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
        self._count(event.tenant_id, event.metadata, event.created_at, event.cost_usd)

    def _known(self, event_id: str) -> bool:
        """Whether ``event_id`` is counted already (an own attempt, or read lately); it is read now."""
        recent = self.recent
        if event_id in recent:
            self.duplicates += 1
            return True
        recent[event_id] = None
        if len(recent) > RECENT_IDS:
            del recent[next(iter(recent))]
        if not self._pending or self._pending.pop(event_id, None) is None:
            return False
        if self._pending_more:
            self._pending_more.pop(event_id, None)
        return True

    def _count(self, tenant: str, metadata: dict[str, str], at: datetime, cost: Decimal | None) -> Counted:
        """Add an attempt's cost to its tenant's budget and to each metadata budget it matches."""
        if not cost or cost < 0:  # unknown (None) or free
            return ()
        counted: Counted = ()
        budget = self.config.for_tenant(tenant)
        if budget is not None and (key := self._add(tenant, budget, at, cost)) is not None:
            counted = ((tenant, key, cost),)
        if metadata and self._index is not None:
            for scoped in self._index.matching(tenant, metadata):
                if (key := self._add(scoped.scope, scoped, at, cost)) is not None:
                    counted = (*counted, (scoped.scope, key, cost))
        return counted

    def _current(self, budget: Budget) -> tuple[datetime, datetime, datetime]:
        """The start of the clock's period of ``budget``'s kind, of the next, and of the one after."""
        now = self._clock()
        periods = self._periods.get(budget.period)
        if periods is None or not periods[0] <= now < periods[1]:
            current = budget.period_start(now)
            following = budget.period_end(current)
            periods = self._periods[budget.period] = (current, following, budget.period_end(following))
        return periods

    def _add(self, account: Account, budget: Budget, at: datetime, cost: Decimal) -> PeriodKey | None:
        current, following, after = self._current(budget)
        if current <= at < following:
            start = current
        elif following <= at < after:
            start = following
        else:
            return None  # a past period's (or a clock far ahead): no budget of now
        key = (budget.period, start)
        periods = self._spent.get(account)
        if periods is None:
            self._spent[account] = {key: cost}
        else:
            periods[key] = periods.get(key, ZERO) + cost
            if len(periods) > 1:
                for old in [k for k in periods if k[1] < current]:
                    del periods[old]
        return key

    def _budget_of(self, account: Account) -> Budget | None:
        return self.config.for_tenant(account) if isinstance(account, str) else self._scoped.get(account)

    # --- snapshots ----------------------------------------------------------------------------------

    def confirmed(self) -> Spend:
        """What the log brought so far: the spend less the own attempts it has not brought yet."""
        spent = {account: dict(periods) for account, periods in self._spent.items()}
        more = (entry for counted in self._pending_more.values() for entry in counted)
        for account, key, cost in chain(self._pending.values(), more):
            periods = spent.get(account)
            if periods is not None and key in periods:
                periods[key] -= cost
        return {t: {k: v for k, v in p.items() if v > 0} for t, p in spent.items() if any(v > 0 for v in p.values())}

    def recent_ids(self) -> list[str]:
        """The ids of the last :data:`SNAPSHOT_IDS` records read, oldest first (for a snapshot)."""
        ids = list(self.recent)
        return ids[-SNAPSHOT_IDS:]

    def restore(self, confirmed: Spend, recent: list[str] | None = None) -> None:
        """Add a snapshot's confirmed spend (the log read from the snapshot's position on): only
        what still is a current (or next) period of each account's budget; and the ids of the
        last records it had read."""
        for event_id in (recent or [])[-RECENT_IDS:]:  # (a hand-edited list may be longer)
            self.recent[event_id] = None
        now = self._clock()
        accounts: set[Account] = set()
        total = ZERO
        for account, periods in confirmed.items():
            budget = self._budget_of(account)
            if budget is None:
                continue
            current = budget.period_start(now)
            for (period, start), cost in periods.items():
                if period == budget.period and start in (current, budget.period_end(current)) and cost > 0:
                    counted = self._spent.setdefault(account, {})
                    counted[period, start] = counted.get((period, start), ZERO) + cost
                    accounts.add(account)
                    if isinstance(account, str):
                        total += cost
        # the snapshot is taken as written (an owner-only file): what it brought is said, so a
        # spend that does not match the stores can be traced to it (delete it to count again)
        tenants = sum(isinstance(account, str) for account in accounts)
        also = ""
        if self._scoped:  # (not added up: a call counts in each metadata budget it matches)
            also = f", and the spend of {len(accounts) - tenants} metadata budgets"
        log.info(
            "budgets: the snapshot gave %d tenants' spend of their periods, $%s in all%s",
            tenants,
            format_usd(total),
            also,
        )

    # --- what is allowed ---------------------------------------------------------------------------

    def standing(self, tenant: str) -> Standing | None:
        """``tenant``'s budget now (None: it has none)."""
        budget = self.config.for_tenant(tenant)
        return self._standing(tenant, budget) if budget is not None else None

    def scoped_standings(self, tenant: str | None) -> list[Standing]:
        """The metadata budgets of ``tenant`` now (None: every metadata budget, of one tenant or all)."""
        return [
            self._standing(budget.scope, budget, budget.tenant)
            for budget in self.config.metadata
            if tenant is None or budget.tenant == tenant
        ]

    def _standing(self, account: Account, budget: Budget, tenant: str | None = None) -> Standing:
        start = budget.period_start(self._clock())
        periods = self._spent.get(account)
        spent = periods.get((budget.period, start), ZERO) if periods is not None else ZERO
        owner = account if isinstance(account, str) else tenant
        return Standing(owner, budget, start, budget.period_end(start), spent)

    def check(self, tenant: str, metadata: dict[str, str] | None = None) -> None:
        """Raise :class:`BudgetExceeded` when ``tenant``, or a metadata budget a call of it with
        ``metadata`` falls under, has used its budget of the period (and log it: a line a minute
        per budget, the others counted)."""
        budget = self.config.for_tenant(tenant)
        if budget is not None:
            self._check(tenant, budget)
        if metadata and self._index is not None:
            for scoped in self._index.matching(tenant, metadata):
                self._check(scoped.scope, scoped, scoped.tenant, caller=tenant)

    def _check(self, account: Account, budget: Budget, tenant: str | None = None, caller: str | None = None) -> None:
        periods = self._spent.get(account)
        if budget.usd > 0 and (
            periods is None or periods.get((budget.period, self._current(budget)[0]), ZERO) < budget.usd
        ):
            return  # the common case, without building a Standing
        standing = self._standing(account, budget, tenant)
        if not standing.exceeded:
            return
        resets = standing.resets.strftime("%Y-%m-%dT%H:%M:%SZ")
        period = "daily" if budget.period == "day" else "monthly"
        # a budget of every tenant: the line names the tenant whose call it refused (the first
        # of the window; the others are counted)
        by = f" (a call of tenant {log_value(caller)})" if tenant is None and caller is not None else ""
        self.refusals.hit(
            account,
            lambda since: (
                f"budget exceeded: {account_name(account)} spent ${format_usd(standing.spent)} of its {period} "
                f"${format_usd(budget.usd)}; its calls are refused until {resets}{by}{since}"
            ),
            {
                **account_fields(account),
                **({"callerTenantId": caller} if by else {}),
                "period": budget.period,
                "spentUsd": format_usd(standing.spent),
                "limitUsd": format_usd(budget.usd),
                "resetsAt": resets,
            },
        )
        raise BudgetExceeded.of(standing)

    def earliest_start(self) -> datetime:
        """The start of the earliest current period of the budgets given."""
        now = self._clock()
        return min(b.period_start(now) for b in self.config.every_budget())

    def tenants(self) -> list[str]:
        """Every tenant with a budget given or a spend counted."""
        return sorted(set(self.config.tenants) | {a for a in self._spent if isinstance(a, str)})


def _key_fields(account: Hashable) -> dict[str, object]:
    return account_fields(cast(Account, account))


def _refusals_counted(account: Hashable, count: int, seconds: float) -> str:
    return (
        f"budget exceeded: {account_name(cast(Account, account))}: {count} more calls refused, in the "
        f"{seconds:.0f} s after the last such line"
    )
