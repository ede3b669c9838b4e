"""A starting gateway's budget ledger: reading the current period's events from the embedded
log (the baseline: no snapshot, or one that does not fit) against going on from the snapshot a
stop wrote (the log read from its position: what a restart does).

The log holds ``--events`` events of the current month (100 tenants, each with a monthly
budget); both starts must find the same spend to the last decimal (checked here too)::

    python -m tests.bench.budget_start [--events 1000000] [--tail 10000] [--metadata-budgets 0] [--smoke]

``--tail``: events written after the snapshot (a crash's, or a replica's since its last one).
``--metadata-budgets N``: the events carry metadata (a team of 21 and an environment), and a
third read counts them in N budgets of metadata pairs as well (a team's in each of the first
tenants, one across every tenant), against the whole read's tenants-only ledger in the same run;
each budget's spend is checked against the sum written.
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from collections import Counter
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

from gateway.budgets import snapshot as snapshots
from gateway.budgets.config import Budget, BudgetSettings, MetadataBudget
from gateway.budgets.follow import LOG_NAME, SqliteBudgetFollower
from gateway.budgets.ledger import SpendLedger
from gateway.eventlog.sqlite import SqliteOutbox, append_events
from tests.bench.common import say, table, timing_row
from tests.support.events import usage_event

CONFIG = BudgetSettings(default=Budget(usd=1_000_000))
TENANTS = 100
#: (prime to TENANTS: every tenant meets every team, so each team budget of a tenant counts)
TEAMS = 21
COST = Decimal("0.0000125")


def metadata_of(n: int, with_metadata: bool) -> dict[str, str]:
    return {"team": f"team{n % TEAMS}", "env": "prod"} if with_metadata else {}


def metadata_budgets(count: int) -> list[MetadataBudget]:
    """``count`` budgets: one across every tenant (``env=prod``), then a team's in a tenant each."""
    budgets = [MetadataBudget(match={"env": "prod"}, usd=1_000_000)]
    for n in range(count - 1):
        tenant, team = divmod(n, TEAMS)
        budgets.append(MetadataBudget(tenant=f"t{tenant}", match={"team": f"team{team}"}, usd=1_000_000))
    return budgets


def expected_spend(budgets: list[MetadataBudget], events: int) -> dict[object, Decimal]:
    """What each budget must count of the events written (``n``: tenant ``n % 100``, team
    ``n % 21``, every one ``env=prod``)."""
    written = Counter((f"t{n % TENANTS}", f"team{n % TEAMS}") for n in range(events))
    return {
        budget.scope: COST
        * sum(
            count
            for (tenant, team), count in written.items()
            if budget.tenant in (None, tenant) and budget.match.get("team", team) == team
        )
        for budget in budgets
    }


def write(
    outbox: SqliteOutbox, count: int, start: datetime, now: datetime, with_metadata: bool, first: int = 0
) -> None:
    step = (now - start) / max(count, 1)
    batch = []
    for n in range(first, first + count):
        batch.append(
            usage_event(f"t{n % TENANTS}", COST, start + step * (n - first), metadata=metadata_of(n, with_metadata))
        )
        if len(batch) == 5000:
            append_events(outbox, batch)
            batch = []
    append_events(outbox, batch)


async def start(
    log: Path, saved: snapshots.Snapshot | None, config: BudgetSettings = CONFIG
) -> tuple[float, SpendLedger, SqliteBudgetFollower]:
    ledger = SpendLedger(config)
    follower = SqliteBudgetFollower(log, ledger)
    began = time.perf_counter()
    await follower.catch_up(saved)
    took = time.perf_counter() - began
    await follower.close()
    return took, ledger, follower


async def main_async(events: int, tail: int, scoped: int) -> None:
    now = datetime.now(UTC)
    month = now.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    with tempfile.TemporaryDirectory() as tmp:
        log = Path(tmp) / "events.sqlite3"
        outbox = SqliteOutbox(log)
        began = time.perf_counter()
        write(outbox, events - tail, month, now, scoped > 0)
        _, _, follower = await start(log, None)
        saved = follower.snapshot()
        snapshots.save(Path(tmp) / snapshots.FILE, saved, CONFIG)
        write(outbox, tail, now, now, scoped > 0, first=events - tail)
        outbox.close()
        say(f"wrote {events:,} events in {time.perf_counter() - began:.1f} s")
        loaded = snapshots.load(Path(tmp) / snapshots.FILE, CONFIG, LOG_NAME)
        assert loaded is not None
        full, full_ledger, _ = await start(log, None)
        resumed, resumed_ledger, _ = await start(log, loaded)
        rows = [timing_row("whole period (baseline)", events, full, full)]
        if scoped:
            config = BudgetSettings(default=CONFIG.default, metadata=metadata_budgets(scoped))
            with_scoped, scoped_ledger, _ = await start(log, None, config)
            rows.append(timing_row(f"whole period, {scoped} metadata budgets too", events, with_scoped, full))
            expected = expected_spend(config.metadata, events)
            for standing in scoped_ledger.scoped_standings(None):
                budget = standing.budget
                assert isinstance(budget, MetadataBudget)
                if standing.spent != expected[budget.scope]:
                    raise SystemExit(f"{budget.scope}: counted {standing.spent}, written {expected[budget.scope]}")
            say(f"each of the {scoped} metadata budgets counted what was written")
    for tenant in (f"t{n}" for n in range(TENANTS)):
        a, b = full_ledger.standing(tenant), resumed_ledger.standing(tenant)
        if a is None or b is None or a.spent != b.spent:
            raise SystemExit(f"{tenant}: the snapshot's start found {b} against the whole read's {a}")
    say("both starts found the same spend for every tenant")
    print(
        table(
            ["start", "events read", "seconds", "µs an event", "x whole read"],
            [*rows, timing_row("from the snapshot", tail, resumed, full)],
        )
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--tail", type=int, default=10_000)
    parser.add_argument("--metadata-budgets", type=int, default=0, help="budgets of metadata pairs, in a third read")
    parser.add_argument("--smoke", action="store_true", help="a seconds-long run (CI)")
    args = parser.parse_args()
    events, tail = (20_000, 1_000) if args.smoke else (args.events, args.tail)
    asyncio.run(main_async(events, tail, args.metadata_budgets))


if __name__ == "__main__":
    main()
