"""One contract for the sink port, run against every adapter: the DuckDB sink (always) and the
Postgres ``"LLMUsage"`` sink (real PostgreSQL, ``-m postgres``).

Each harness reads back what the sink projected in one common shape (id -> row), so every
test states the contract once: idempotent on the event id, re-priced on redelivery, exact
money, NULL for unpriced, atomic batches, fast enough for 10k-event batches.
"""

from __future__ import annotations

import asyncio
import csv
import io
import json
import logging
import math
import os
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal
from typing import Any

import asyncpg
import pytest

from analytics.store import AnalyticsStore
from consumers.migrations import MIGRATIONS_TABLE, postgres_migrations
from consumers.sinks.base import RejectedEvents, Sink, SinkError
from consumers.sinks.duckdb import FACT_COLUMNS, REBUILD_DAILY, DuckDBSink, batch_json
from consumers.sinks.postgres import COLUMNS, CSV_COLUMNS, PostgresSink, csv_rows, row
from gateway.events import UsageEvent
from gateway.ids import uuid7
from tests.conftest import DATABASE_ENV, missing_service

START = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
TENANTS = ("acme", "globex", "initech")


def make_event(i: int, *, cost: Decimal | None = Decimal("0.0000025"), **changes: Any) -> UsageEvent:
    fields: dict[str, Any] = {
        "event_id": str(uuid7()),
        "request_id": f"req_{i}",
        "attempt": 1,
        "created_at": START + timedelta(milliseconds=i),
        "tenant_id": TENANTS[i % len(TENANTS)],
        "provider": "openai",
        "requested_model": "gpt-4o",
        "provider_model": "gpt-4o-2024-08-06",
        "served_model": "gpt-4o-2024-08-06",
        "outcome": "success",
        "http_status": 200,
        "latency_ms": 12.5 + i,
        "ttft_ms": 3.25,
        "prompt_tokens": 100 + i,
        "completion_tokens": 20,
        "total_tokens": 120 + i,
        "cost_usd": cost,
        "price_version": "2026-01",
        "billable": True,
    }
    fields.update(changes)
    return UsageEvent(**fields)


@dataclass(frozen=True)
class Projected:
    """A projected row in the shape common to both sinks."""

    tenant_id: str
    provider: str
    model: str
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    cost_usd: Decimal | None
    price_version: str | None
    created_at: datetime
    outcome: str
    billable: bool


def projected(r: tuple[Any, ...]) -> Projected:
    """(id, tenant, provider, model, prompt, completion, total, cost, version, at, outcome, billable)"""
    return Projected(
        tenant_id=r[1],
        provider=r[2],
        model=r[3],
        prompt_tokens=r[4],
        completion_tokens=r[5],
        total_tokens=r[6],
        cost_usd=r[7],
        price_version=r[8],
        created_at=r[9].astimezone(UTC),
        outcome=r[10],
        billable=r[11],
    )


@dataclass
class Harness:
    sink: Sink
    rows: Callable[[], Awaitable[dict[str, Projected]]]
    total_cost: Callable[[], Awaitable[Decimal]]
    #: the live projector's sink on the same store (``corrects=False``)
    live: Sink


# --- DuckDB -------------------------------------------------------------------------------------
async def duckdb_harness() -> AsyncIterator[Harness]:
    store = AnalyticsStore()
    await store.open()
    sink, live = DuckDBSink(store), DuckDBSink(store, corrects=False)
    await sink.start()
    await live.start()

    async def rows() -> dict[str, Projected]:
        got = await store.fetchall(
            "SELECT id, tenant_id, provider, model, prompt_tokens, completion_tokens, total_tokens,"
            " cost_usd, price_version, created_at, outcome, billable FROM llm_usage"
        )
        return {r[0]: projected(r) for r in got}

    async def total_cost() -> Decimal:
        got = await store.fetchall("SELECT coalesce(sum(cost_usd), 0) FROM usage_facts")
        return Decimal(got[0][0])

    yield Harness(sink, rows, total_cost, live)
    await sink.close()
    await store.close()


# --- Postgres -----------------------------------------------------------------------------------
def database_url() -> str:
    url = os.environ.get(DATABASE_ENV, "")
    if not url:
        missing_service(f"{DATABASE_ENV} is not set")
    return url


@dataclass
class Scratch:
    """A Postgres schema of one test's own: its URL, name and a connection, and the sinks made
    on it (``sink``), all closed and the schema dropped after."""

    url: str
    schema: str
    conn: asyncpg.Connection
    sinks: list[PostgresSink]

    def sink(self) -> PostgresSink:
        made = PostgresSink(self.url, schema=self.schema)
        self.sinks.append(made)
        return made


@asynccontextmanager
async def scratch_schema(name: str) -> AsyncIterator[Scratch]:
    url = database_url()
    scratch = Scratch(url, f"sink_{name}_{uuid.uuid4().hex[:12]}", await asyncpg.connect(url), [])
    try:
        yield scratch
    finally:
        for sink in scratch.sinks:
            await sink.close()
        await scratch.conn.execute(f'DROP SCHEMA IF EXISTS "{scratch.schema}" CASCADE')
        await scratch.conn.close()


async def postgres_harness() -> AsyncIterator[Harness]:
    url = database_url()
    schema = f"sink_contract_{uuid.uuid4().hex[:12]}"
    sink, live = PostgresSink(url, schema=schema), PostgresSink(url, schema=schema, corrects=False)
    await sink.start()
    await live.start()
    conn = await asyncpg.connect(url, server_settings={"search_path": schema})

    async def rows() -> dict[str, Projected]:
        got = await conn.fetch(
            'SELECT "id", "tenantId", "provider", "model", "promptTokens", "completionTokens",'
            ' "totalTokens", "costUsd", "priceVersion", "createdAt", "outcome", "billable"'
            ' FROM "LLMUsage"'
        )
        return {r[0]: projected(tuple(r)) for r in got}

    async def total_cost() -> Decimal:
        return Decimal(await conn.fetchval('SELECT coalesce(sum("costUsd"), 0) FROM "LLMUsage"'))

    try:
        yield Harness(sink, rows, total_cost, live)
    finally:
        await sink.close()
        await live.close()
        await conn.execute(f'DROP SCHEMA "{schema}" CASCADE')
        await conn.close()


@pytest.fixture(params=["duckdb", pytest.param("postgres", marks=pytest.mark.postgres)])
async def harness(request: pytest.FixtureRequest) -> AsyncIterator[Harness]:
    factory = duckdb_harness if request.param == "duckdb" else postgres_harness
    async for h in factory():
        yield h


def expected(event: UsageEvent) -> Projected:
    return Projected(
        tenant_id=event.tenant_id,
        provider=event.provider,
        model=event.served_model or event.provider_model,
        prompt_tokens=event.prompt_tokens,
        completion_tokens=event.completion_tokens,
        total_tokens=event.total_tokens,
        cost_usd=event.cost_usd,
        price_version=event.price_version,
        created_at=event.created_at,
        outcome=event.outcome,
        billable=event.billable,
    )


# --- the contract -------------------------------------------------------------------------------
async def test_apply_projects_every_event(harness: Harness) -> None:
    events = [make_event(i) for i in range(20)]
    await harness.sink.apply(events)
    assert await harness.rows() == {e.event_id: expected(e) for e in events}


async def test_embedding_events_project_priced_and_unpriced(harness: Harness) -> None:
    """``POST /v1/embeddings``'s events (endpoint ``embeddings``, schema version 3, input tokens
    only; Gemini's billed at a cost unknown) go into each store as any other."""
    priced = make_event(1, schema_version=3, endpoint="embeddings", completion_tokens=0, total_tokens=101)
    unpriced = make_event(
        2, cost=None, schema_version=3, endpoint="embeddings", provider="google", prompt_tokens=0,
        completion_tokens=0, total_tokens=0, served_model=None, provider_model="gemini-embedding-001",
    )  # fmt: skip
    await harness.sink.apply([priced, unpriced])
    assert await harness.rows() == {e.event_id: expected(e) for e in (priced, unpriced)}
    assert await harness.total_cost() == priced.cost_usd


async def test_apply_is_idempotent(harness: Harness) -> None:
    events = [make_event(i, cost=Decimal("0.0012345") * i) for i in range(50)]
    await harness.sink.apply(events)
    first_rows, first_total = await harness.rows(), await harness.total_cost()
    await harness.sink.apply(events)
    assert await harness.rows() == first_rows
    assert await harness.total_cost() == first_total == sum((e.cost_usd or 0 for e in events), Decimal(0))


async def test_overlapping_batches_and_duplicates_within_a_batch(harness: Harness) -> None:
    events = [make_event(i) for i in range(30)]
    await harness.sink.apply(events[:20])
    await harness.sink.apply(events[10:] + events[25:])  # overlap, and the same event twice
    rows = await harness.rows()
    assert len(rows) == 30
    assert await harness.total_cost() == Decimal("0.0000025") * 30


async def test_redelivery_with_a_new_price_updates_the_cost(harness: Harness) -> None:
    events = [make_event(i, cost=Decimal("0.001")) for i in range(10)]
    await harness.sink.apply(events)
    repriced = [e.model_copy(update={"cost_usd": Decimal("0.0025"), "price_version": "2026-02"}) for e in events]
    await harness.sink.apply(repriced)
    rows = await harness.rows()
    assert len(rows) == 10
    assert {(r.cost_usd, r.price_version) for r in rows.values()} == {(Decimal("0.0025"), "2026-02")}
    assert await harness.total_cost() == Decimal("0.025")


async def test_the_live_projector_s_sink_keeps_a_stored_event_as_it_is(harness: Harness) -> None:
    """A live projector meeting a stored event is redelivering it with its recorded cost: it
    must not undo what a replay corrected (it did, for part of history, without a word)."""
    events = [make_event(i, cost=Decimal("0.001")) for i in range(10)]
    await harness.live.apply(events[:4])
    repriced = [e.model_copy(update={"cost_usd": Decimal("0.0025"), "price_version": "2026-02"}) for e in events]
    await harness.sink.apply(repriced[:4])  # a replay --reprice
    await harness.live.apply(events)  # a redelivery of the first four, and six new ones
    rows = await harness.rows()
    assert {i: (rows[e.event_id].cost_usd, rows[e.event_id].price_version) for i, e in enumerate(events)} == {
        i: (Decimal("0.0025"), "2026-02") if i < 4 else (e.cost_usd, e.price_version) for i, e in enumerate(events)
    }
    assert await harness.total_cost() == Decimal("0.0025") * 4 + Decimal("0.001") * 6
    await harness.sink.apply(events[:4])  # a replay without --reprice: back to the recorded costs
    assert await harness.total_cost() == Decimal("0.001") * 10


async def test_unpriced_is_null_and_a_later_price_backfills_it(harness: Harness) -> None:
    unpriced = make_event(1, cost=None, price_version=None)
    free_failure = make_event(2, cost=Decimal(0), outcome="rate_limited", http_status=429, billable=False)
    await harness.sink.apply([unpriced, free_failure])
    rows = await harness.rows()
    assert rows[unpriced.event_id].cost_usd is None
    assert rows[free_failure.event_id].cost_usd == 0
    assert rows[free_failure.event_id].outcome == "rate_limited"
    assert not rows[free_failure.event_id].billable
    assert await harness.total_cost() == 0

    priced = unpriced.model_copy(update={"cost_usd": Decimal("0.0000031"), "price_version": "2026-02"})
    await harness.sink.apply([priced])
    assert (await harness.rows())[unpriced.event_id].cost_usd == Decimal("0.0000031")

    # and a price withdrawn by a replay makes it unpriced again (not free)
    await harness.sink.apply([unpriced])
    assert (await harness.rows())[unpriced.event_id].cost_usd is None


@pytest.mark.parametrize(
    "cost",
    ["0.0000025", "0.0000000001", "1234567890.0123456789", "9999999999.9999999999", "0", "0.1"],
)
async def test_money_round_trips_exactly(harness: Harness, cost: str) -> None:
    event = make_event(1, cost=Decimal(cost))
    await harness.sink.apply([event])
    stored = (await harness.rows())[event.event_id].cost_usd
    assert stored == Decimal(cost)
    assert isinstance(stored, Decimal)


async def test_sums_are_exact(harness: Harness) -> None:
    costs = [Decimal("0.0000025"), Decimal("0.0000001"), Decimal("0.1"), Decimal("0.2"), Decimal("0.0036751")]
    events = [make_event(i, cost=c) for i, c in enumerate(costs * 20)]
    await harness.sink.apply(events)
    assert await harness.total_cost() == sum(costs) * 20 == Decimal("6.073554")


async def test_timestamps_keep_the_instant(harness: Harness) -> None:
    plus_two = timezone(timedelta(hours=2))
    event = make_event(1, created_at=datetime(2026, 3, 1, 14, 0, 0, 123456, tzinfo=plus_two))
    await harness.sink.apply([event])
    stored = (await harness.rows())[event.event_id].created_at
    assert stored == datetime(2026, 3, 1, 12, 0, 0, 123456, tzinfo=UTC)


async def test_model_is_the_served_model_else_the_provider_model(harness: Harness) -> None:
    served = make_event(1, served_model="gpt-4o-2024-11-20")
    unknown = make_event(2, served_model=None)
    await harness.sink.apply([served, unknown])
    rows = await harness.rows()
    assert rows[served.event_id].model == "gpt-4o-2024-11-20"
    assert rows[unknown.event_id].model == "gpt-4o-2024-08-06"


async def test_a_refused_batch_is_rejected_whole(harness: Harness) -> None:
    good = make_event(1)
    # beyond DECIMAL(20,10) (and the schema since: made past its check, as a foreign record)
    too_expensive = make_event(2).model_copy(update={"cost_usd": Decimal("10000000000")})
    with pytest.raises(RejectedEvents):
        await harness.sink.apply([good, too_expensive])
    assert await harness.rows() == {}
    await harness.sink.apply([good])
    assert list(await harness.rows()) == [good.event_id]


async def test_reset_drops_the_projection(harness: Harness) -> None:
    await harness.sink.apply([make_event(i) for i in range(5)])
    await harness.sink.reset()
    assert await harness.rows() == {}
    await harness.sink.apply([make_event(9)])
    assert len(await harness.rows()) == 1


async def test_a_batch_of_ten_thousand(harness: Harness) -> None:
    events = [make_event(i, cost=Decimal("0.0000025") * (i % 97)) for i in range(10_000)]
    await harness.sink.apply(events)
    await harness.sink.apply(events)
    rows = await harness.rows()
    assert len(rows) == 10_000
    assert await harness.total_cost() == sum((e.cost_usd or 0 for e in events), Decimal(0))


async def test_empty_batch_is_a_no_op(harness: Harness) -> None:
    await harness.sink.apply([])
    assert await harness.rows() == {}


async def test_plain_inserts_until_a_batch_meets_a_stored_event_then_upserts(harness: Harness) -> None:
    sink = harness.sink
    assert isinstance(sink, DuckDBSink | PostgresSink)
    events = [make_event(i, cost=Decimal("0.001")) for i in range(30)]
    assert sink.direct  # started on an empty table
    await sink.apply(events[:10])
    assert sink.direct
    # one batch: re-priced stored events, a stored event as it is, new events
    repriced = [e.model_copy(update={"cost_usd": Decimal("0.002"), "price_version": "2026-02"}) for e in events[5:9]]
    await sink.apply([*repriced, events[9], *events[10:20]])
    assert not sink.direct
    await sink.apply(events[20:])  # upserted too (the sink stopped trying plain inserts)
    rows = await harness.rows()
    assert rows == {e.event_id: expected(e) for e in [*events[:5], *repriced, *events[9:]]}
    assert await harness.total_cost() == Decimal("0.001") * 26 + Decimal("0.002") * 4
    await sink.reset()
    assert sink.direct  # emptied: plain inserts again
    await sink.apply(events[:3])
    assert set(await harness.rows()) == {e.event_id for e in events[:3]}


# --- DuckDB only: the facts hold the whole event ----------------------------------------------
async def test_duckdb_facts_hold_every_event_field() -> None:
    assert set(FACT_COLUMNS) == set(UsageEvent.model_fields)
    store = AnalyticsStore()
    await store.open()
    try:
        columns = {
            r[0]
            for r in await store.fetchall("SELECT column_name FROM duckdb_columns() WHERE table_name = 'usage_facts'")
        }
        assert columns == set(UsageEvent.model_fields)
        event = make_event(
            7,
            api_key_id="key_1",
            stream=True,
            error_code="x",
            error_message="quote ' \" and newline\n and unicode ✓ \x00",
            cached_tokens=11,
            cache_creation_tokens=3,
            cache_creation_1h_tokens=2,
            reasoning_tokens=5,
            incomplete=True,
            gateway_instance="gw-1",
            latency_ms=0.1 + 0.2,
            schema_version=4,
            metadata={"team": "search ✓", "quote": "say \"hi\" \\ 'x'", "empty": ""},
        )
        embedding = make_event(8, schema_version=3, endpoint="embeddings", completion_tokens=0, total_tokens=108)
        await DuckDBSink(store).apply([event, embedding])
        cursor = store.connection.execute("SELECT * FROM usage_facts ORDER BY created_at")
        names = [d[0] for d in cursor.description]
        rows = cursor.fetchall()
        # the metadata column is JSON (text): read as the event writes it
        stored = [
            UsageEvent.model_validate({**dict(zip(names, row, strict=True)), "metadata": json.loads(row[-1])})
            for row in rows
        ]
        assert names[-1] == "metadata"
        assert stored == [event, embedding]
        assert stored[0].metadata == event.metadata and stored[1].metadata == {}
    finally:
        await store.close()


# --- Postgres only: migrations ------------------------------------------------------------------
@pytest.mark.postgres
async def test_postgres_consumers_starting_together_migrate_once() -> None:
    url = database_url()
    schema = f"sink_migrate_{uuid.uuid4().hex[:12]}"
    sinks = [PostgresSink(url, schema=schema) for _ in range(4)]
    try:
        await asyncio.gather(*(s.start() for s in sinks))
        conn = await asyncpg.connect(url, server_settings={"search_path": schema})
        try:
            rows = await conn.fetch(f"SELECT version, name FROM {MIGRATIONS_TABLE} ORDER BY version")
            assert [(r["version"], r["name"]) for r in rows] == [(m.version, m.name) for m in postgres_migrations()]
        finally:
            await conn.close()
        await sinks[0].apply([make_event(1)])
    finally:
        for sink in sinks:
            await sink.close()
        conn = await asyncpg.connect(url)
        await conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
        await conn.close()


async def platform_table(pg: Scratch, extra: str = "") -> None:
    """The platform's own "LLMUsage" (Prisma's shape) in the scratch schema, with ``extra``
    columns, before any sink made it."""
    await pg.conn.execute(f'CREATE SCHEMA "{pg.schema}"')
    await pg.conn.execute(
        f'CREATE TABLE "{pg.schema}"."LLMUsage" ("id" TEXT PRIMARY KEY, "tenantId" TEXT NOT NULL,'
        ' "provider" TEXT NOT NULL, "model" TEXT NOT NULL, "promptTokens" INTEGER NOT NULL,'
        ' "completionTokens" INTEGER NOT NULL, "totalTokens" INTEGER NOT NULL,'
        f' "costUsd" DECIMAL(65, 30), "createdAt" TIMESTAMP(3) WITH TIME ZONE NOT NULL DEFAULT now(){extra})'
    )


@pytest.mark.postgres
async def test_postgres_an_upgrade_applies_its_new_migration_alone_without_a_warning(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A database of the version before (migrations 1 to 3): the new one adds its column. It
    warned "gone or lacks the gateway's columns: applying every migration again" on every
    upgrade that added a column (a review), the sink's columns checked before the pending
    migration ran."""
    from consumers.migrations import migrate_postgres

    async with scratch_schema("upgrade") as pg:
        before = [m for m in postgres_migrations() if m.version <= 3]
        await pg.conn.execute(f'CREATE SCHEMA "{pg.schema}"')
        await pg.conn.execute(f'SET search_path = "{pg.schema}"')
        assert await migrate_postgres(pg.conn, before) == [1, 2, 3]
        caplog.set_level(logging.INFO, logger="consumers.migrations")
        applied = await migrate_postgres(pg.conn, table="LLMUsage", columns=COLUMNS)
        assert applied == [4]
        assert not [r for r in caplog.records if r.levelno >= logging.WARNING], caplog.text
        await pg.conn.execute('DROP TABLE "LLMUsage"')  # gone: every migration again, said
        assert await migrate_postgres(pg.conn, table="LLMUsage", columns=COLUMNS) == [1, 2, 3, 4]
        assert "is gone or lacks the gateway's columns" in caplog.text
        sink = pg.sink()
        await sink.start()
        await sink.apply([make_event(1, schema_version=4, metadata={"team": "a"})])
        assert await pg.conn.fetchval('SELECT "metadata"->>\'team\' FROM "LLMUsage"') == "a"
        # a table the platform made again without the gateway's columns, and a pending migration
        # that uses one of them: it fails in its savepoint, and every migration runs in order
        from analytics.store import Migration

        await pg.conn.execute('DROP TABLE "LLMUsage"')
        await pg.conn.execute(
            'CREATE TABLE "LLMUsage" ("id" TEXT PRIMARY KEY, "tenantId" TEXT NOT NULL, "provider" TEXT NOT NULL,'
            ' "model" TEXT NOT NULL, "promptTokens" INTEGER NOT NULL, "completionTokens" INTEGER NOT NULL,'
            ' "totalTokens" INTEGER NOT NULL, "costUsd" DECIMAL(65, 30), "createdAt" TIMESTAMPTZ NOT NULL)'
        )
        index = Migration(5, "request_index", 'CREATE INDEX IF NOT EXISTS "x_idx" ON "LLMUsage" ("requestId")')
        caplog.clear()
        applied = await migrate_postgres(pg.conn, [*postgres_migrations(), index], table="LLMUsage", columns=COLUMNS)
        assert applied == [1, 2, 3, 4, 5] and "lacks the gateway's columns" in caplog.text
        assert await pg.conn.fetchval("SELECT to_regclass('x_idx') IS NOT NULL")


@pytest.mark.postgres
async def test_postgres_keeps_an_existing_platform_table_and_adds_the_extra_columns() -> None:
    async with scratch_schema("platform") as pg:
        schema, conn = pg.schema, pg.conn
        await platform_table(pg)
        await conn.execute(
            f"INSERT INTO \"{schema}\".\"LLMUsage\" VALUES ('legacy-1', 'acme', 'openai', 'gpt-4', 1, 1, 2, 0.5, now())"
        )
        await conn.execute(f'COMMENT ON COLUMN "{schema}"."LLMUsage"."tenantId" IS \'the platform\'\'s own words\'')
        sink = pg.sink()
        await sink.start()
        # the columns the gateway adds say what they hold; the platform's keep its comments
        comments = {
            r["attname"]: r["comment"]
            for r in await conn.fetch(
                "SELECT a.attname, col_description(a.attrelid, a.attnum) AS comment FROM pg_attribute a "
                "WHERE a.attrelid = $1::regclass AND a.attnum > 0 AND NOT a.attisdropped",
                f'"{schema}"."LLMUsage"',
            )
        }
        assert comments["tenantId"] == "the platform's own words" and comments["costUsd"] is None
        added = ["requestId", "outcome", "priceVersion", "billable", "apiKeyId", "gatewayInstance"]
        assert all(comments[name] for name in added), comments
        event = make_event(1, cost=Decimal("0.0000025"))
        await sink.apply([event])
        await sink.reset()  # drops the gateway's rows only
        await sink.apply([event])
        rows = await conn.fetch(f'SELECT "id", "costUsd", "requestId" FROM "{schema}"."LLMUsage" ORDER BY "id"')
        assert [(r["id"], r["costUsd"], r["requestId"]) for r in rows] == sorted(
            [("legacy-1", Decimal("0.5"), None), (event.event_id, Decimal("0.0000025"), "req_1")], key=lambda r: r[0]
        )


@pytest.mark.postgres
@pytest.mark.parametrize("kind", ["json", "text", "jsonb"])
async def test_postgres_keeps_a_platform_s_own_metadata_column_and_fills_it(kind: str) -> None:
    """A platform table with a "metadata" column of its own (Prisma's ``Json?`` is jsonb, some
    have json or text): kept as it is, with its comment, and given each call's metadata as JSON,
    by the CSV path and the binary one."""
    async with scratch_schema(f"meta_{kind}") as pg:
        schema, conn = pg.schema, pg.conn
        await platform_table(pg, f', "metadata" {kind}')
        await conn.execute(f'COMMENT ON COLUMN "{schema}"."LLMUsage"."metadata" IS \'ours\'')
        sink = pg.sink()
        await sink.start()
        as_csv = make_event(1, schema_version=4, metadata={"team": 'search "core"', "k,1": "é"})
        as_binary = make_event(2, error_code="back\\slash", schema_version=4, metadata={"team": "ads"})
        plain = make_event(3)
        assert csv_rows([as_csv, plain]) is not None and csv_rows([as_binary]) is None
        await sink.apply([as_csv, plain])
        await sink.apply([as_binary])
        column = await conn.fetchrow(
            "SELECT format_type(atttypid, atttypmod) AS kind, col_description(attrelid, attnum) AS comment "
            "FROM pg_attribute WHERE attrelid = $1::regclass AND attname = 'metadata'",
            f'"{schema}"."LLMUsage"',
        )
        assert (column["kind"], column["comment"]) == (kind, "ours")
        stored = {
            r["id"]: json.loads(r["metadata"])
            for r in await conn.fetch(f'SELECT "id", "metadata"::text AS metadata FROM "{schema}"."LLMUsage"')
        }
        assert stored == {e.event_id: e.metadata for e in (as_csv, as_binary, plain)}


@pytest.mark.postgres
async def test_postgres_a_platform_not_null_column_pauses_rather_than_rejecting_every_event() -> None:
    async with scratch_schema("notnull") as pg:
        await pg.conn.execute(f'CREATE SCHEMA "{pg.schema}"')
        await pg.conn.execute(
            f'CREATE TABLE "{pg.schema}"."LLMUsage" ("id" TEXT PRIMARY KEY, "tenantId" TEXT NOT NULL,'
            ' "provider" TEXT NOT NULL, "model" TEXT NOT NULL, "promptTokens" INTEGER NOT NULL,'
            ' "completionTokens" INTEGER NOT NULL, "totalTokens" INTEGER NOT NULL,'
            ' "costUsd" DECIMAL(65, 30), "createdAt" TIMESTAMPTZ NOT NULL, "userId" TEXT NOT NULL)'
        )
        sink = pg.sink()
        await sink.start()
        with pytest.raises(SinkError) as caught:
            await sink.apply([make_event(1)])
        assert caught.value.retryable
        assert "userId" in str(caught.value)


# --- DuckDB only: the batch file, plain inserts and the rollup ---------------------------------
def test_the_postgres_csv_keeps_the_batch_s_order_and_its_metadata_json() -> None:
    """A platform's own serial column numbers the rows as they come: a batch with metadata sent
    its rows without it first (a review). A backslash in the metadata's JSON is jsonb's to read,
    one anywhere else sends the batch as binary records."""
    tagged = {"team": 'a "b" \\ c'}
    batch = [make_event(i, schema_version=4, metadata=tagged if i % 2 else {}) for i in range(6)]
    data = csv_rows(batch)
    assert data is not None
    rows = list(csv.reader(io.StringIO(data.decode())))
    assert [r[0] for r in rows] == [e.event_id for e in batch]
    metadata = CSV_COLUMNS.index("metadata")
    assert [json.loads(r[metadata]) for r in rows] == [e.metadata for e in batch]
    assert csv_rows([*batch, make_event(9, tenant_id="back\\slash")]) is None
    assert csv_rows([make_event(9, tenant_id="back\\slash", schema_version=4, metadata=tagged)]) is None
    assert csv_rows([]) == b""


def test_events_hash_by_their_id() -> None:
    event = make_event(1, schema_version=4, metadata={"team": "a"})
    assert {event, event.model_copy()} == {event} and hash(event) == hash(event.event_id)


def test_the_batch_file_is_the_events_own_json() -> None:
    events = [
        make_event(1),
        make_event(2, cost=None, price_version=None, served_model=None),
        make_event(3, cost=Decimal("0.00000001"), error_message='quote " backslash \\ newline \n NUL \x00 ✓'),
        make_event(
            4, cost=Decimal("1E+3"), created_at=datetime(2026, 3, 1, 14, 0, 0, 5, tzinfo=timezone(timedelta(hours=2)))
        ),
        make_event(5, cost=Decimal("-0"), latency_ms=0.1 + 0.2, ttft_ms=None, api_key_id="null"),
    ]
    assert batch_json(events) == b"[" + b",".join(e.to_json() for e in events) + b"]"
    assert batch_json([]) == b"[]"


async def test_duckdb_rollup_equals_the_facts_after_plain_inserts_and_the_fall_back() -> None:
    store = AnalyticsStore()
    await store.open()
    try:
        sink = DuckDBSink(store)
        await sink.start()
        events = [
            make_event(
                i,
                cost=None if i % 7 == 0 else Decimal("0.0000001") * i,
                created_at=START + timedelta(hours=5 * i),
                billable=i % 5 != 0,
                incomplete=i % 3 == 0,
                served_model=None if i % 4 == 0 else "gpt-4o-2024-11-20",
            )
            for i in range(40)
        ]
        await sink.apply(events[:20])
        assert sink.direct
        repriced = [e.model_copy(update={"cost_usd": None, "price_version": None}) for e in events[15:20]]
        await sink.apply([*repriced, *events[20:]])
        assert not sink.direct
        aggregate = REBUILD_DAILY[REBUILD_DAILY.index("SELECT") :]
        assert sorted(await store.fetchall("SELECT * FROM usage_daily")) == sorted(await store.fetchall(aggregate))
    finally:
        await store.close()


# --- Postgres only: CSV and binary COPY write the same rows ----------------------------------
def _as_stored(values: tuple[Any, ...]) -> tuple[Any, ...]:
    """A row as Postgres gives it back: money at the column's scale, NaN comparable, the
    metadata as the object its JSON text is (jsonb writes it its own way)."""
    cost = COLUMNS.index("costUsd")
    out = list(values)
    metadata = COLUMNS.index("metadata")
    out[metadata] = json.loads(out[metadata])
    if out[cost] is not None:
        out[cost] = Decimal(out[cost]).quantize(Decimal("1e-10"))
    return tuple("NaN" if isinstance(v, float) and math.isnan(v) else v for v in out)


@pytest.mark.postgres
async def test_postgres_csv_and_binary_copy_store_the_same_values() -> None:
    plus_two = timezone(timedelta(hours=2))
    # values CSV carries as they are: commas, quotes of the other kind, unicode, empty and "null"
    # strings, money with an exponent or more than 10 decimals, offsets, floats at their limits
    as_csv = [
        make_event(1, tenant_id="acme, inc. ✓ 'x'", api_key_id="null", gateway_instance="", error_code="e,1"),
        make_event(2, cost=Decimal("1E-7"), created_at=datetime(2026, 3, 1, 14, 0, 0, 1, tzinfo=plus_two)),
        make_event(3, cost=Decimal("0.00000000015"), latency_ms=0.1 + 0.2, ttft_ms=1e-300),
        make_event(4, cost=None, price_version=None, served_model=None, http_status=None, ttft_ms=None),
        make_event(5, cost=Decimal("-0"), latency_ms=1e300, prompt_tokens=2**31 - 1),
        make_event(15, created_at=datetime(2026, 3, 1, 14, 0, tzinfo=timezone(timedelta(hours=15, minutes=59)))),
        make_event(19, cache_creation_tokens=5, cache_creation_1h_tokens=3),
        # metadata: its JSON in a quoted field; its own quotes and backslashes are JSON's
        make_event(20, schema_version=4, metadata={"team": 'search, "core" ✓', "path": "a\\b", "e": ""}),
        make_event(21, schema_version=4, metadata={"k,1": "'null'", "null": "null"}),
    ]
    # values CSV cannot carry: each sends its batch as binary records
    as_binary = [
        make_event(6, error_code='say "hi"', cache_creation_tokens=5, cache_creation_1h_tokens=3),
        make_event(22, error_code='x"y', schema_version=4, metadata={"team": 'a "b"'}),  # binary, with metadata
        make_event(7, tenant_id="back\\slash"),
        make_event(8, error_code="line\nbreak\ttab"),
        make_event(9, error_code="nul\x00here"),
        make_event(10).model_copy(update={"latency_ms": math.nan}),  # past the schema: the sink's own guard
        make_event(11).model_copy(update={"ttft_ms": math.inf}),
        make_event(16, created_at=datetime(2026, 3, 1, 14, 0, tzinfo=timezone(timedelta(hours=16)))),  # text: no
        make_event(17, created_at=datetime(2026, 3, 1, 14, 0, tzinfo=timezone(-timedelta(hours=23, minutes=59)))),
        make_event(18, provider_model="nul\x00model", served_model=None, gateway_instance="g\x00"),  # NUL: dropped
        make_event(12, created_at=datetime(2026, 3, 1, 12, 0)),  # noqa: DTZ001 - no offset, on purpose
    ]
    assert csv_rows(as_csv) is not None
    assert all(csv_rows([e]) is None for e in as_binary)
    assert csv_rows(as_csv[:2] + as_binary[:1]) is None  # one is enough
    async with scratch_schema("csv") as pg:
        schema, conn, sink = pg.schema, pg.conn, pg.sink()
        await sink.start()
        await sink.apply(as_csv)
        for event in as_binary[:-1]:
            await sink.apply([event])
        columns = ", ".join(f'"{c}"' for c in COLUMNS)
        stored = {r[0]: _as_stored(tuple(r)) for r in await conn.fetch(f'SELECT {columns} FROM "{schema}"."LLMUsage"')}
        assert stored == {e.event_id: _as_stored(row(e)) for e in as_csv + as_binary[:-1]}
        metadata = COLUMNS.index("metadata")
        assert {stored[e.event_id][metadata] == e.metadata for e in as_csv + as_binary[:-1]} == {True}
        typed = await conn.fetch(f'SELECT "metadata"->>\'team\' FROM "{schema}"."LLMUsage" WHERE "metadata" ? \'team\'')
        assert sorted(r[0] for r in typed) == sorted(['a "b"', 'search, "core" ✓'])
        nul = stored[as_binary[-2].event_id]
        assert (nul[COLUMNS.index("providerModel")], nul[COLUMNS.index("gatewayInstance")]) == ("nulmodel", "g")
        assert stored[as_csv[2].event_id][COLUMNS.index("costUsd")] == Decimal("0.0000000002")  # half up
        # past the schema (which refuses them since): the sink's own guard
        with pytest.raises(RejectedEvents):  # 2**31 tokens: refused whichever way it goes
            await sink.apply([make_event(13).model_copy(update={"prompt_tokens": 2**31})])
        with pytest.raises(RejectedEvents):  # an index row too large (54000): a value, not the server
            await sink.apply([make_event(14).model_copy(update={"tenant_id": os.urandom(6000).hex()})])


@pytest.mark.postgres
async def test_postgres_written_by_a_newer_version_is_refused_saying_so() -> None:
    """A database a newer gateway migrated: an older projector could undo what the newer one
    wrote (its corrections), so it refuses the database rather than write to it. It was a
    RuntimeError that stopped ``serve`` with a traceback (upgrade review)."""
    async with scratch_schema("newer") as pg:
        sink = pg.sink()
        await sink.start()
        await sink.close()
        await pg.conn.execute(f"INSERT INTO \"{pg.schema}\".{MIGRATIONS_TABLE} (version, name) VALUES (999, 'future')")
        sink = pg.sink()
        with pytest.raises(SinkError, match=r"\[999\].*newer llm-gateway") as refused:
            await sink.start()
        # the projector waits (paused, in /healthz) instead of dead-lettering the events
        assert refused.value.retryable
        with pytest.raises(SinkError, match="newer llm-gateway"):
            await sink.apply([make_event(1)])


@pytest.mark.postgres
async def test_postgres_a_hung_members_transaction_does_not_hold_the_others_for_good(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A consume member hung mid-batch (SIGSTOP) kept its transaction's row locks; the member
    given its partitions waited on them, timed out every 60 s and tried again, for as long as
    the hung process lived (a review: 5 minutes, its health blaming Postgres). The server now
    ends a sink's transaction idle past ``IDLE_IN_TRANSACTION_MS``."""
    from consumers.sinks import postgres as postgres_sink

    monkeypatch.setattr(postgres_sink, "IDLE_IN_TRANSACTION_MS", 500)
    async with scratch_schema("hung") as scratch:
        hung, other = scratch.sink(), scratch.sink()
        await hung.start()
        await other.start()
        event = make_event(1)
        await other.apply([event])
        assert hung._pool is not None
        async with hung._pool.acquire() as conn:  # the hung member, its batch half done
            await conn.execute("BEGIN")
            await conn.execute('SELECT 1 FROM "LLMUsage" WHERE "id" = $1 FOR UPDATE', event.event_id)
            repriced = event.model_copy(update={"cost_usd": Decimal("0.0000030"), "price_version": "2026-02"})
            async with asyncio.timeout(15):  # the lock waited for up to the 60 s statement timeout
                await other.apply([repriced])
            with pytest.raises((asyncpg.PostgresError, asyncpg.InterfaceError, ConnectionError)):
                await conn.execute("COMMIT")  # the server ended that session
        cost = await scratch.conn.fetchval(
            f'SELECT "costUsd" FROM "{scratch.schema}"."LLMUsage" WHERE "id" = $1', event.event_id
        )
        assert cost == Decimal("0.0000030")
