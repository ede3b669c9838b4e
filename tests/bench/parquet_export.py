"""The Parquet export (``analytics/parquet_export.py``: a file a UTC day, each written under a
temporary name, synced and renamed, with its day's count and cost read in the same transaction)
against the baseline of DuckDB writing the same facts as one Parquet file in one ``COPY``.

The store holds ``--events`` usage facts over ``--days`` days; both exports must hold every row
and the same total cost (checked here too)::

    python -m tests.bench.parquet_export [--events 1000000] [--days 30] [--smoke]
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

from analytics.parquet_export import TABLE_DIR, export_range
from analytics.store import AnalyticsStore
from consumers.sinks.duckdb import DuckDBSink
from tests.bench.common import say, table, timing_row
from tests.support.events import usage_event

START = datetime(2026, 11, 1, tzinfo=UTC)


async def fill(store: AnalyticsStore, events: int, days: int) -> None:
    sink = DuckDBSink(store)
    await sink.start()
    step = timedelta(days=days) / max(events, 1)
    for first in range(0, events, 10_000):
        batch = [
            usage_event(f"tenant-{n % 50}", Decimal(n % 9000) / 10**7, START + step * n)
            for n in range(first, min(first + 10_000, events))
        ]
        await sink.apply(batch)


async def main_async(events: int, days: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        export = Path(tmp) / "export"
        store = AnalyticsStore(Path(tmp) / "a.duckdb", allowed_directories=[Path(tmp)], memory_limit="128MB")
        await store.open()
        began = time.perf_counter()
        await fill(store, events, days)
        say(f"projected {events:,} facts over {days} days in {time.perf_counter() - began:.1f} s")
        whole = Path(tmp) / "whole.parquet"
        began = time.perf_counter()
        await store.run(lambda c: c.execute(f"COPY usage_facts TO '{whole}' (FORMAT parquet, COMPRESSION zstd)"))
        baseline = time.perf_counter() - began
        began = time.perf_counter()
        written = await export_range(store, export, None, None)
        took = time.perf_counter() - began
        began = time.perf_counter()
        await export_range(store, export, None, None)  # every day again: each file replaced
        again = time.perf_counter() - began
        check = await store.fetchall(
            f"SELECT (SELECT count(*) FROM '{whole}'), (SELECT sum(cost_usd) FROM '{whole}'), "
            f"(SELECT count(*) FROM read_parquet('{export}/{TABLE_DIR}/*/*.parquet')), "
            f"(SELECT sum(cost_usd) FROM read_parquet('{export}/{TABLE_DIR}/*/*.parquet'))"
        )
        size = sum(f.stat().st_size for f in export.rglob("*.parquet"))
        await store.close()
    whole_rows, whole_cost, rows, cost = check[0]
    if not whole_rows == rows == events or whole_cost != cost:
        raise SystemExit(f"the exports disagree: {whole_rows:,} / {rows:,} rows of {events:,}, ${whole_cost} / ${cost}")
    say(f"both exports hold the {events:,} facts, ${cost}; {len(written)} day files, {size / 1e6:.1f} MB")
    print(
        table(
            ["export", "facts", "seconds", "µs a fact", "x one COPY"],
            [
                timing_row("one COPY of the table (baseline)", events, baseline, baseline),
                timing_row(f"export-parquet, {len(written)} day files", events, took, baseline),
                timing_row("export-parquet again (every file replaced)", events, again, baseline),
            ],
        )
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--days", type=int, default=30)
    parser.add_argument("--smoke", action="store_true", help="a seconds-long run (CI)")
    args = parser.parse_args()
    events, days = (20_000, 3) if args.smoke else (args.events, args.days)
    asyncio.run(main_async(events, days))


if __name__ == "__main__":
    main()
