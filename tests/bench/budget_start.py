"""A starting gateway's budget ledger: reading the current period's events from the embedded
log (the baseline: no snapshot, or one that does not fit) against going on from the snapshot a
stop wrote (the log read from its position: what a restart does).

The log holds ``--events`` events of the current month (100 tenants, each with a monthly
budget); both starts must find the same spend to the last decimal (checked here too)::

    python -m tests.bench.budget_start [--events 1000000] [--tail 10000] [--smoke]

``--tail``: events written after the snapshot (a crash's, or a replica's since its last one).
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

from gateway.budgets import snapshot as snapshots
from gateway.budgets.config import Budget, BudgetSettings
from gateway.budgets.follow import LOG_NAME, SqliteBudgetFollower
from gateway.budgets.ledger import SpendLedger
from gateway.eventlog.sqlite import SqliteOutbox, append_events
from tests.bench.common import say, table, timing_row
from tests.support.events import usage_event

CONFIG = BudgetSettings(default=Budget(usd=1_000_000))
TENANTS = 100


def write(outbox: SqliteOutbox, count: int, start: datetime, now: datetime) -> None:
    step = (now - start) / max(count, 1)
    batch = []
    for n in range(count):
        batch.append(usage_event(f"t{n % TENANTS}", Decimal("0.0000125"), start + step * n))
        if len(batch) == 5000:
            append_events(outbox, batch)
            batch = []
    append_events(outbox, batch)


async def start(log: Path, saved: snapshots.Snapshot | None) -> tuple[float, SpendLedger, SqliteBudgetFollower]:
    ledger = SpendLedger(CONFIG)
    follower = SqliteBudgetFollower(log, ledger)
    began = time.perf_counter()
    await follower.catch_up(saved)
    took = time.perf_counter() - began
    await follower.close()
    return took, ledger, follower


async def main_async(events: int, tail: int) -> None:
    now = datetime.now(UTC)
    month = now.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    with tempfile.TemporaryDirectory() as tmp:
        log = Path(tmp) / "events.sqlite3"
        outbox = SqliteOutbox(log)
        began = time.perf_counter()
        write(outbox, events - tail, month, now)
        _, _, follower = await start(log, None)
        saved = follower.snapshot()
        snapshots.save(Path(tmp) / snapshots.FILE, saved, CONFIG)
        write(outbox, tail, now, now)
        outbox.close()
        say(f"wrote {events:,} events in {time.perf_counter() - began:.1f} s")
        loaded = snapshots.load(Path(tmp) / snapshots.FILE, CONFIG, LOG_NAME)
        assert loaded is not None
        full, full_ledger, _ = await start(log, None)
        resumed, resumed_ledger, _ = await start(log, loaded)
    for tenant in (f"t{n}" for n in range(TENANTS)):
        a, b = full_ledger.standing(tenant), resumed_ledger.standing(tenant)
        if a is None or b is None or a.spent != b.spent:
            raise SystemExit(f"{tenant}: the snapshot's start found {b} against the whole read's {a}")
    say("both starts found the same spend for every tenant")
    print(
        table(
            ["start", "events read", "seconds", "µs an event", "x whole read"],
            [
                timing_row("whole period (baseline)", events, full, full),
                timing_row("from the snapshot", tail, resumed, full),
            ],
        )
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--tail", type=int, default=10_000)
    parser.add_argument("--smoke", action="store_true", help="a seconds-long run (CI)")
    args = parser.parse_args()
    events, tail = (20_000, 1_000) if args.smoke else (args.events, args.tail)
    asyncio.run(main_async(events, tail))


if __name__ == "__main__":
    main()
