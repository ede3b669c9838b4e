"""Throughput of the sinks (not a test). Events are built first; only ``apply`` is timed.

    python -m tests.bench.sinks                                  # DuckDB only
    python -m tests.bench.sinks --database-url postgresql://gw:gw@127.0.0.1:5432/gw
    python -m tests.bench.sinks --compare --database-url ...     # also the rejected write paths

Reports wall-clock events/s and events per CPU-second of this process (the second is what a
busy, shared machine cannot take away; Postgres' own CPU is not in it). Each sink also inserts
the same events carrying metadata (two pairs, cost attribution) into a fresh table, against the
plain insert in the same run.
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import asyncpg
import orjson
from pydantic import TypeAdapter

from analytics.store import AnalyticsStore
from consumers.sinks import postgres as pg
from consumers.sinks.duckdb import FACT_COLUMNS, UPSERT, DuckDBSink
from gateway.events import UsageEvent
from gateway.ids import uuid7

START = datetime(2026, 3, 1, tzinfo=UTC)


def make_events(n: int) -> list[UsageEvent]:
    return [
        UsageEvent(
            event_id=str(uuid7()),
            request_id=f"req_{i // 2}",
            attempt=1 + i % 2,
            created_at=START + timedelta(milliseconds=i),
            tenant_id=f"tenant-{i % 50}",
            provider=("openai", "anthropic", "google")[i % 3],
            requested_model="gpt-4o",
            provider_model="gpt-4o-2024-08-06",
            served_model="gpt-4o-2024-08-06",
            outcome="success" if i % 10 else "rate_limited",
            http_status=200 if i % 10 else 429,
            latency_ms=100.0 + i % 900,
            ttft_ms=20.5,
            prompt_tokens=500 + i % 1000,
            completion_tokens=100 + i % 300,
            total_tokens=600 + i % 1000 + i % 300,
            cost_usd=None if i % 97 == 0 else Decimal("0.0000025") * (i % 5000),
            price_version="2026-03",
            billable=bool(i % 10),
        )
        for i in range(n)
    ]


Apply = Callable[[Sequence[UsageEvent]], Awaitable[object]]


async def timed(label: str, apply: Apply, events: list[UsageEvent], batch: int) -> None:
    wall, cpu = time.perf_counter(), time.process_time()
    for i in range(0, len(events), batch):
        await apply(events[i : i + batch])
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    n = len(events)
    print(f"  {label:<42} {n / wall:>9,.0f} ev/s wall  {n / cpu:>9,.0f} ev/CPU-s  ({n:,} in batches of {batch:,})")


def tagged(events: list[UsageEvent]) -> list[UsageEvent]:
    """The events with a call's metadata (two pairs, as a team's key and its request give them)."""
    return [
        e.model_copy(
            update={"schema_version": 4, "metadata": {"team": f"team-{i % 20}", "feature": ("chat", "search")[i % 2]}}
        )
        for i, e in enumerate(events)
    ]


def repriced(events: list[UsageEvent]) -> list[UsageEvent]:
    return [e.model_copy(update={"cost_usd": Decimal("0.0000031"), "price_version": "2026-04"}) for e in events]


async def bench_duckdb(events: list[UsageEvent], compare: bool) -> None:
    print("DuckDB sink (file-backed)")
    with tempfile.TemporaryDirectory() as tmp:
        for batch in (5_000, 10_000):
            store = AnalyticsStore(Path(tmp) / f"bench-{batch}.duckdb")
            await store.open()
            sink = DuckDBSink(store)
            await timed(f"insert, batch {batch:,}", sink.apply, events, batch)
            await timed(f"redeliver (no change), batch {batch:,}", sink.apply, events, batch)
            await timed(f"reprice, batch {batch:,}", sink.apply, repriced(events), batch)
            await store.close()
            store = AnalyticsStore(Path(tmp) / f"bench-{batch}-tagged.duckdb")
            await store.open()
            await timed(f"insert with metadata, batch {batch:,}", DuckDBSink(store).apply, tagged(events), batch)
            await store.close()
        if compare:
            store = AnalyticsStore(Path(tmp) / "compare.duckdb")
            await store.open()
            await timed("[rejected] from_json of one parameter", _duckdb_from_json(store), events[:50_000], 5_000)
            await store.run(lambda c: c.execute("DELETE FROM usage_facts"))
            await timed("[rejected] unnest of Python lists", _duckdb_lists(store), events[:20_000], 5_000)
            await store.run(lambda c: c.execute("DELETE FROM usage_facts"))
            await timed("[rejected] executemany", _duckdb_executemany(store), events[:500], 500)
            await store.close()


def _fact_row(e: UsageEvent) -> list[object]:
    row = [getattr(e, name) for name in FACT_COLUMNS]
    row[list(FACT_COLUMNS).index("cost_usd")] = None if e.cost_usd is None else format(e.cost_usd, "f")
    row[list(FACT_COLUMNS).index("metadata")] = orjson.dumps(e.metadata).decode()
    return row


def _duckdb_from_json(store: AnalyticsStore) -> Apply:
    struct = "{" + ", ".join(f'"{n}": "{k}"' for n, k in FACT_COLUMNS.items()) + "}"
    source = f"(SELECT unnest(from_json($1, '[{struct}]')) AS e)"
    sql = UPSERT[: UPSERT.index(" FROM read_json")] + f" FROM {source}" + UPSERT[UPSERT.index(" ON CONFLICT") :]
    batch = TypeAdapter(list[UsageEvent])

    async def apply(events: Sequence[UsageEvent]) -> None:
        payload = batch.dump_json(list(events)).decode()
        await store.run(lambda c: c.execute(sql, [payload]))

    return apply


def _duckdb_lists(store: AnalyticsStore) -> Apply:
    kinds = [("DECIMAL(20, 10)" if n == "cost_usd" else k, k) for n, k in FACT_COLUMNS.items()]
    select = ", ".join(f"unnest(${i + 1}::{k}[])::{cast}" for i, (cast, k) in enumerate(kinds))
    sql = f"INSERT OR REPLACE INTO usage_facts ({', '.join(FACT_COLUMNS)}) SELECT {select}"

    async def apply(events: Sequence[UsageEvent]) -> None:
        columns = [list(c) for c in zip(*(_fact_row(e) for e in events), strict=True)]
        await store.run(lambda c: c.execute(sql, columns))

    return apply


def _duckdb_executemany(store: AnalyticsStore) -> Apply:
    sql = (
        f"INSERT OR REPLACE INTO usage_facts ({', '.join(FACT_COLUMNS)}) VALUES ({', '.join('?' * len(FACT_COLUMNS))})"
    )

    async def apply(events: Sequence[UsageEvent]) -> None:
        rows = [_fact_row(e) for e in events]
        await store.run(lambda c: c.executemany(sql, rows))

    return apply


async def bench_postgres(url: str, events: list[UsageEvent], compare: bool) -> None:
    print("Postgres sink (COPY into a temp table, then INSERT ... ON CONFLICT)")
    schema = f"bench_{uuid.uuid4().hex[:10]}"
    sink = pg.PostgresSink(url, schema=schema)
    await sink.start()
    conn = await asyncpg.connect(url, server_settings={"search_path": schema})
    try:
        await timed("insert, batch 10,000", sink.apply, events, 10_000)
        await timed("redeliver (no change), batch 10,000", sink.apply, events, 10_000)
        await timed("reprice, batch 10,000", sink.apply, repriced(events), 10_000)
        await sink.reset()  # empty again: plain COPYs, as the first insert (a TRUNCATE left it upserting)
        await timed("insert with metadata, batch 10,000", sink.apply, tagged(events), 10_000)
        if compare:
            for label, apply in (("executemany", _pg_executemany(conn)), ("unnest($1::text[], ...)", _pg_unnest(conn))):
                await conn.execute('TRUNCATE "LLMUsage"')
                await timed(f"[rejected] {label}, insert", apply, events, 10_000)
                await timed(f"[rejected] {label}, redeliver", apply, events, 10_000)
    finally:
        await sink.close()
        await conn.execute(f'DROP SCHEMA "{schema}" CASCADE')
        await conn.close()


#: each "LLMUsage" column's type, for the rejected unnest path (checked against the sink's columns:
#: a column added to the sink without its type here broke the path unseen)
_PG_TYPE = {
    "id": "text", "tenantId": "text", "provider": "text", "model": "text", "promptTokens": "int4",
    "completionTokens": "int4", "totalTokens": "int4", "costUsd": "numeric", "createdAt": "timestamptz",
    "requestId": "text", "attempt": "int4", "outcome": "text", "requestedModel": "text", "providerModel": "text",
    "httpStatus": "int4", "errorCode": "text", "latencyMs": "float8", "ttftMs": "float8", "cachedTokens": "int4",
    "cacheCreationTokens": "int4", "cacheCreation1hTokens": "int4", "reasoningTokens": "int4",
    "priceVersion": "text", "billable": "bool", "incomplete": "bool", "stream": "bool", "endpoint": "text",
    "apiKeyId": "text", "gatewayInstance": "text", "metadata": "jsonb",
}  # fmt: skip
assert tuple(_PG_TYPE) == pg.COLUMNS, "tests/bench/sinks.py: give each new LLMUsage column its type"
_PG_TYPES = list(_PG_TYPE.values())
_PG_UPSERT = pg.merge_from_stage(corrects=True, updated_at=False)
_PG_CONFLICT = _PG_UPSERT[_PG_UPSERT.index("ON CONFLICT") :]


def _pg_executemany(conn: asyncpg.Connection) -> Apply:
    values = ", ".join(f"${i + 1}" for i in range(len(pg.COLUMNS)))
    sql = f"INSERT INTO {pg.TABLE} ({pg._QUOTED}) VALUES ({values}) {_PG_CONFLICT}"

    async def apply(events: Sequence[UsageEvent]) -> None:
        async with conn.transaction():
            await conn.executemany(sql, [pg.row(e) for e in events])

    return apply


def _pg_unnest(conn: asyncpg.Connection) -> Apply:
    arrays = ", ".join(f"${i + 1}::{t}[]" for i, t in enumerate(_PG_TYPES))
    sql = f"INSERT INTO {pg.TABLE} ({pg._QUOTED}) SELECT * FROM unnest({arrays}) {_PG_CONFLICT}"

    async def apply(events: Sequence[UsageEvent]) -> None:
        columns = [list(c) for c in zip(*(pg.row(e) for e in events), strict=True)]
        await conn.execute(sql, *columns)

    return apply


async def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m tests.bench.sinks")
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--database-url", default=None, help="also benchmark the Postgres sink")
    parser.add_argument("--compare", action="store_true", help="also time the write paths not chosen")
    parser.add_argument("--smoke", action="store_true", help="3,000 events, every path (CI)")
    args = parser.parse_args()
    if args.smoke:
        args.events, args.compare = 3_000, True
    events = make_events(args.events)
    await bench_duckdb(events, args.compare)
    if args.database_url:
        await bench_postgres(args.database_url, events, args.compare)


if __name__ == "__main__":
    asyncio.run(main())
