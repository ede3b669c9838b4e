"""Cost queries over N usage rows (10,000,000): DuckDB and, side by side, the same questions on
the Postgres ``"LLMUsage"`` table, interleaved query by query (not a test).

Rows are generated in SQL (90 days, 1,000 tenants, 5 providers/models, 10% failed attempts,
1% unpriced) into the product schemas: ``analytics/migrations`` for DuckDB, the consumer's
Postgres migrations (in a schema of their own) for ``"LLMUsage"``. Queries:

- ``get_costs_for_tenant``: ``CostTrackingService.get_costs_for_tenant`` (30-day window, the
  HTTP API's row cap), and the same two statements as raw SQL on each engine;
- rollup: cost per UTC day and model over all rows (DuckDB through the ``v_cost_daily`` view).

    python -m tests.bench.analytics --smoke
    python -m tests.bench.analytics --rows 10000000 --start-services [--keep]
"""

from __future__ import annotations

import argparse
import asyncio
import random
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg

from analytics.compaction import DAY_NUMBER_SQL, compact_days, stale_days
from analytics.costs import _ROWS, _TOTALS, CostTrackingService
from analytics.http import MAX_ROWS
from analytics.store import AnalyticsStore
from consumers.migrations import migrate_postgres
from consumers.sinks.duckdb import REBUILD_DAILY
from tests.bench.common import Target, fmt, machine, median, percentile, say, services, table, targets_table

TENANTS, DAYS, EPOCH = 1_000, 90, datetime(2026, 1, 1, tzinfo=UTC)
PROVIDERS = "['openai', 'anthropic', 'google', 'azure', 'ollama']"
MODELS = "['gpt-4o-2024-08-06', 'claude-3-5-sonnet-20241022', 'gemini-pro', 'gpt-4o', 'llama3']"

DUCK_INSERT = f"""
INSERT INTO usage_facts (event_id, schema_version, request_id, attempt, created_at, tenant_id, endpoint, stream,
    provider, requested_model, provider_model, served_model, outcome, http_status, latency_ms, ttft_ms,
    prompt_tokens, completion_tokens, cached_tokens, cache_creation_tokens, reasoning_tokens, total_tokens,
    cost_usd, price_version, billable, incomplete)
SELECT printf('%016x-bench', i), 1, 'req_' || (i // 2), 1 + i % 2,
    to_timestamp({EPOCH.timestamp()} + i * {DAYS * 86400}.0 / $n), 'tenant-' || ((i * 7919) % {TENANTS}),
    'chat.completions', i % 3 = 0, {PROVIDERS}[1 + i % 5], 'gpt-4o', {MODELS}[1 + i % 5],
    CASE WHEN i % 10 <> 0 THEN {MODELS}[1 + i % 5] END, CASE WHEN i % 10 <> 0 THEN 'success' ELSE 'rate_limited' END,
    CASE WHEN i % 10 <> 0 THEN 200 ELSE 429 END, 100 + i % 900, 20.5,
    500 + i % 1000, 100 + i % 300, 0, 0, 0, 600 + i % 1000 + i % 300,
    CASE WHEN i % 10 = 0 THEN 0 WHEN i % 97 = 0 THEN NULL ELSE CAST(0.0000025 * (i % 5000) AS DECIMAL(20, 10)) END,
    'builtin-2026-03', i % 10 <> 0, false
FROM range($n) t(i)
"""
PG_INSERT = f"""
INSERT INTO "LLMUsage" ("id", "requestId", attempt, "createdAt", "tenantId", endpoint, stream,
    provider, "requestedModel", "providerModel", model, outcome, "httpStatus", "latencyMs", "ttftMs",
    "promptTokens", "completionTokens", "cachedTokens", "cacheCreationTokens", "reasoningTokens", "totalTokens",
    "costUsd", "priceVersion", billable, incomplete)
SELECT lpad(to_hex(i), 16, '0') || '-bench', 'req_' || (i / 2), 1 + i % 2,
    to_timestamp({EPOCH.timestamp()} + i * {DAYS * 86400}.0 / {{n}}), 'tenant-' || ((i * 7919) % {TENANTS}),
    'chat.completions', i % 3 = 0, (ARRAY{PROVIDERS})[1 + i % 5], 'gpt-4o', (ARRAY{MODELS})[1 + i % 5],
    (ARRAY{MODELS})[1 + i % 5], CASE WHEN i % 10 <> 0 THEN 'success' ELSE 'rate_limited' END,
    CASE WHEN i % 10 <> 0 THEN 200 ELSE 429 END, 100 + i % 900, 20.5,
    500 + i % 1000, 100 + i % 300, 0, 0, 0, 600 + i % 1000 + i % 300,
    CASE WHEN i % 10 = 0 THEN 0 WHEN i % 97 = 0 THEN NULL ELSE CAST(0.0000025 * (i % 5000) AS NUMERIC(20, 10)) END,
    'builtin-2026-03', i % 10 <> 0, false
FROM generate_series(0::bigint, {{n}} - 1) t(i)
"""
PG_COLUMNS = {"tenant_id": '"tenantId"', "total_tokens": '"totalTokens"', "cost_usd": '"costUsd"',
              "created_at": '"createdAt"', "event_id": "id", "request_id": '"requestId"',
              "coalesce(served_model, provider_model)": "model", "requested_model": '"requestedModel"',
              "prompt_tokens": '"promptTokens"', "completion_tokens": '"completionTokens"',
              "cached_tokens": '"cachedTokens"', "reasoning_tokens": '"reasoningTokens"',
              "cache_creation_tokens": '"cacheCreationTokens"', "cache_creation_1h_tokens": '"cacheCreation1hTokens"',
              "price_version": '"priceVersion"', "usage_facts": '"LLMUsage"'}  # fmt: skip
ROLLUP_DUCK = "SELECT day, model, sum(calls), sum(tokens), sum(cost_usd) FROM v_cost_daily GROUP BY ALL ORDER BY 1, 2"
ROLLUP_PG = (
    """SELECT ("createdAt" AT TIME ZONE 'UTC')::date AS day, model, count(*), sum("totalTokens"),"""
    """ coalesce(sum("costUsd"), 0) FROM "LLMUsage" WHERE billable GROUP BY 1, 2 ORDER BY 1, 2"""
)


def to_pg(sql: str) -> str:
    for duck, pg in PG_COLUMNS.items():
        sql = sql.replace(duck, pg)
    return sql.replace("?", "$1", 1).replace("?", "$2", 1).replace("?", "$3", 1)


WHERE = "tenant_id = ? AND billable AND created_at >= ? AND created_at < ?"
PG_TOTALS, PG_ROWS = to_pg(_TOTALS.format(where=WHERE)), to_pg(_ROWS.format(where=WHERE)) + f" LIMIT {MAX_ROWS}"


async def load_duckdb(path: Path, n: int) -> AnalyticsStore:
    store = AnalyticsStore(path)
    await store.open()
    (have,) = (await store.fetchall("SELECT count(*) FROM usage_facts"))[0]
    started = time.perf_counter()
    if have != n:
        say(f"DuckDB: generating {n:,} rows")
        await store.run(lambda c: c.execute("DELETE FROM usage_facts; DELETE FROM usage_daily"))
        await store.run(lambda c: c.execute(DUCK_INSERT.replace("$n", str(n))))
        say(f"DuckDB: {n:,} rows in {time.perf_counter() - started:.0f} s")
    (days,) = (await store.fetchall("SELECT count(*) FROM usage_daily"))[0]
    if days == 0 and n:
        # the rollup the sink keeps batch by batch (tests/unit/test_usage_daily.py: always equal to
        # this aggregate of the facts), filled here as migration 0005 backfills an existing file
        await store.run(lambda c: c.execute(REBUILD_DAILY))
        say(f"DuckDB: usage_daily rebuilt from the facts in {time.perf_counter() - started:.0f} s")
    aggregate = REBUILD_DAILY[REBUILD_DAILY.index("SELECT") :]
    differ = (
        await store.fetchall(
            f"SELECT (SELECT count(*) FROM (FROM usage_daily EXCEPT ALL ({aggregate}))) "
            f"+ (SELECT count(*) FROM (({aggregate}) EXCEPT ALL FROM usage_daily))"
        )
    )[0][0]
    if differ:
        raise SystemExit(f"usage_daily differs from the aggregate of usage_facts in {differ} rows")
    # the closed days, rewritten tenant by tenant as the sink does when a day ends
    # (analytics/compaction.py); the newest day stays as it arrived
    (first, newest) = (await store.fetchall(f"SELECT min({DAY_NUMBER_SQL}), max({DAY_NUMBER_SQL}) FROM usage_facts"))[0]
    if first is not None:
        stale = await store.run(lambda c: stale_days(c, first, newest))
        if stale:
            started = time.perf_counter()
            rows = await store.run(lambda c: compact_days(c, stale))
            say(f"DuckDB: {len(stale)} closed days ({rows:,} rows) rewritten in {time.perf_counter() - started:.0f} s")
    return store


async def load_postgres(url: str, n: int) -> asyncpg.Connection:
    schema = f"bench_analytics_{n}"
    conn = await asyncpg.connect(url, server_settings={"search_path": schema, "TimeZone": "UTC"})
    await migrate_postgres(conn, schema=schema)
    have = await conn.fetchval('SELECT count(*) FROM "LLMUsage"')
    if have != n:
        say(f"Postgres: generating {n:,} rows in schema {schema}")
        started = time.perf_counter()
        await conn.execute('TRUNCATE "LLMUsage"')
        await conn.execute(PG_INSERT.format(n=n), timeout=3600)
        await conn.execute('VACUUM ANALYZE "LLMUsage"', timeout=3600)
        say(f"Postgres: {n:,} rows in {time.perf_counter() - started:.0f} s")
    return conn


Query = Callable[[str, datetime, datetime], Awaitable[Any]]


def queries(store: AnalyticsStore, pg: asyncpg.Connection | None) -> dict[str, dict[str, Query]]:
    service = CostTrackingService(store)

    async def duck_raw(tenant: str, start: datetime, end: datetime) -> Any:
        params = [tenant, start, end]
        totals, rows = _TOTALS.format(where=WHERE), _ROWS.format(where=WHERE) + f" LIMIT {MAX_ROWS}"
        return await store.run(lambda c: (c.execute(totals, params).fetchone(), c.execute(rows, params).fetchall()))

    out: dict[str, dict[str, Query]] = {
        "get_costs_for_tenant (service, 30 days)": {
            "duckdb": lambda t, s, e: service.get_costs_for_tenant(t, s, e, limit=MAX_ROWS)
        },
        "get_costs_for_tenant SQL (totals + rows)": {"duckdb": duck_raw},
        "cost per day per model (all rows)": {"duckdb": lambda t, s, e: store.fetchall(ROLLUP_DUCK)},
    }
    if pg is not None:

        async def pg_raw(tenant: str, start: datetime, end: datetime) -> Any:
            return await pg.fetchrow(PG_TOTALS, tenant, start, end), await pg.fetch(PG_ROWS, tenant, start, end)

        out["get_costs_for_tenant SQL (totals + rows)"]["postgres"] = pg_raw
        out["cost per day per model (all rows)"]["postgres"] = lambda t, s, e: pg.fetch(ROLLUP_PG)
    return out


async def measure(qs: dict[str, dict[str, Query]], iterations: int) -> dict[tuple[str, str], list[float]]:
    rng = random.Random(7)
    times: dict[tuple[str, str], list[float]] = {}
    for i in range(iterations):
        tenant = f"tenant-{rng.randrange(TENANTS)}"
        start = EPOCH + timedelta(days=rng.randrange(DAYS - 30))
        for name, engines in qs.items():
            order = list(engines) if i % 2 == 0 else list(reversed(engines))
            for engine in order:
                started = time.perf_counter()
                await engines[engine](tenant, start, start + timedelta(days=30))
                times.setdefault((name, engine), []).append((time.perf_counter() - started) * 1000)
    return times


def report(times: dict[tuple[str, str], list[float]], n: int, iterations: int, has_pg: bool) -> None:
    rows = []
    for (name, engine), ms in times.items():
        duck = times.get((name, "duckdb"), [])
        ratio = median([p / d for p, d in zip(ms, duck, strict=False) if d]) if engine == "postgres" else None
        rows.append([name, engine, fmt(percentile(ms, 50)), fmt(percentile(ms, 99)), fmt(ratio) if ratio else ""])
    print(f"\n## Analytics over {n:,} usage rows ({machine()})\n")
    print(f"{iterations} interleaved iterations (a random tenant and 30-day window each); ", end="")
    print(f"Postgres: {'yes' if has_pg else 'skipped'}\n")
    print(table(["query", "engine", "p50 ms", "p99 ms", "Postgres / DuckDB (p50 of per-iteration ratios)"], rows))
    targets = [
        Target(f"DuckDB p50: {name}", percentile(times[(name, "duckdb")], 50), 50, True, " ms")
        for name in ("get_costs_for_tenant (service, 30 days)", "cost per day per model (all rows)")
    ]
    print()
    print(targets_table(targets))


async def run(args: argparse.Namespace, database_url: str | None, work: Path) -> None:
    store = await load_duckdb(args.duckdb or work / "analytics.duckdb", args.rows)
    pg = await load_postgres(database_url, args.rows) if database_url else None
    try:
        qs = queries(store, pg)
        await measure(qs, 2)  # warm caches of both engines
        report(await measure(qs, args.iterations), args.rows, args.iterations, pg is not None)
    finally:
        await store.close()
        if pg is not None:
            if not args.keep:
                await pg.execute(f'DROP SCHEMA "bench_analytics_{args.rows}" CASCADE')
            await pg.close()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m tests.bench.analytics", description=__doc__.split("\n")[0])
    p.add_argument("--smoke", action="store_true", help="100,000 rows, 5 iterations (CI)")
    p.add_argument("--rows", type=int, default=10_000_000)
    p.add_argument("--iterations", type=int, default=30)
    p.add_argument("--duckdb", type=Path, help="keep the DuckDB file here (reused when it has --rows rows)")
    p.add_argument("--keep", action="store_true", help="keep the Postgres schema bench_analytics_<rows> for reuse")
    p.add_argument(
        "--start-services", action="store_true", help="start Postgres if LLM_GATEWAY_TEST_DATABASE_URL is unset"
    )
    args = p.parse_args(argv)
    if args.smoke:
        args.rows, args.iterations = 100_000, 5
    with (
        services(kafka=False, postgres=True, start=args.start_services) as svc,
        tempfile.TemporaryDirectory(prefix="bench-analytics-") as tmp,
    ):
        asyncio.run(run(args, svc.database_url, Path(tmp)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
