"""The platform's own "LLMUsage" table, as a review met it: made by an ORM (Prisma) with columns,
types and constraints of its own, altered after, dropped and made again, written by a role with
no CREATE on its schema, named by a Prisma database URL. Against the real PostgreSQL."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal

import asyncpg
import pytest

from consumers.sinks.base import SinkError
from consumers.sinks.postgres import PostgresSink
from gateway.database_url import DsnOptions, dsn_options
from tests.conftest import missing_service
from tests.contract.test_sink_contract import make_event, scratch_schema

pytestmark = pytest.mark.postgres

#: the platform's table as `prisma migrate` makes it: a DateTime is timestamp(3) without time zone,
#: `@default(...)` columns (here `updatedAt DateTime @default(now()) @updatedAt`) are NOT NULL
#: with defaults. A bare `@updatedAt` has none (the last test)
PRISMA_TABLE = """
CREATE TABLE "{schema}"."LLMUsage" (
    "id" TEXT NOT NULL,
    "tenantId" TEXT NOT NULL,
    "provider" TEXT NOT NULL,
    "model" TEXT NOT NULL,
    "promptTokens" INTEGER NOT NULL DEFAULT 0,
    "completionTokens" INTEGER NOT NULL DEFAULT 0,
    "totalTokens" INTEGER NOT NULL DEFAULT 0,
    "costUsd" DECIMAL(65,30),
    "createdAt" TIMESTAMP(3) NOT NULL DEFAULT CURRENT_TIMESTAMP,
    "updatedAt" TIMESTAMP(3) NOT NULL DEFAULT CURRENT_TIMESTAMP,
    "source" TEXT NOT NULL DEFAULT 'platform',
    CONSTRAINT "LLMUsage_pkey" PRIMARY KEY ("id")
)
"""


async def stored(conn: asyncpg.Connection, schema: str, *extra: str) -> dict[str, tuple[object, ...]]:
    columns = ", ".join(f'"{c}"' for c in ("id", "costUsd", "createdAt", *extra))
    rows = await conn.fetch(f'SELECT {columns} FROM "{schema}"."LLMUsage"')
    return {r["id"]: tuple(r)[1:] for r in rows}


async def test_a_prisma_table_with_not_null_defaults_and_naive_times_takes_every_batch() -> None:
    """Its NOT NULL columns with defaults refused every staged row once the table held rows
    (the staging table copied NOT NULL, not the default), and a tenant with a quote (the binary
    path) met its `timestamp` column with an aware time: a crash loop."""
    async with scratch_schema("prisma") as pg:
        await pg.conn.execute(f'CREATE SCHEMA "{pg.schema}"')
        await pg.conn.execute(PRISMA_TABLE.format(schema=pg.schema))
        await pg.conn.execute(
            f'INSERT INTO "{pg.schema}"."LLMUsage" ("id", "tenantId", "provider", "model") '
            "VALUES ('platform-row', 'acme', 'openai', 'gpt-4')"
        )
        sink = pg.sink()
        await sink.start()
        assert not sink.direct  # the table holds a row: the staging path
        at = datetime(2026, 3, 1, 12, 0, 0, 123000, tzinfo=UTC)
        plain = make_event(1, created_at=at)
        quoted = make_event(2, tenant_id='O"Brien\\', created_at=at)  # CSV cannot carry it: binary
        shifted = make_event(3, created_at=at.astimezone(timezone(timedelta(hours=5))))  # not UTC
        await sink.apply([plain])
        await sink.apply([quoted])
        await sink.apply([shifted])
        rows = await stored(pg.conn, pg.schema, "source")
        naive = at.replace(tzinfo=None)  # the same instant, as UTC without a zone
        assert rows[plain.event_id] == (Decimal("0.0000025"), naive, "platform")
        assert rows[quoted.event_id] == (Decimal("0.0000025"), naive, "platform")
        assert rows[shifted.event_id] == (Decimal("0.0000025"), naive, "platform")
        assert rows["platform-row"][2] == "platform"  # the platform's row is left as it was


async def test_a_column_the_platform_adds_with_a_default_is_filled_by_it() -> None:
    async with scratch_schema("altered") as pg:
        sink = pg.sink()
        await sink.start()
        await sink.apply([make_event(1)])
        await pg.conn.execute(f'ALTER TABLE "{pg.schema}"."LLMUsage" ADD COLUMN "seq" BIGSERIAL')
        again = pg.sink()  # a restart: the table holds rows, so the staging path
        await again.start()
        await again.apply([make_event(2)])
        seqs = await pg.conn.fetch(f'SELECT "seq" FROM "{pg.schema}"."LLMUsage" ORDER BY "seq"')
        assert [r["seq"] for r in seqs] == [1, 2]


async def test_a_dropped_table_is_made_again_and_a_bare_one_gets_the_gateway_columns() -> None:
    """The record of applied migrations kept the projector paused on "relation does not exist"
    for good (restarts too), and on a column the platform's new table did not have."""
    async with scratch_schema("dropped") as pg:
        sink = pg.sink()
        await sink.start()
        await sink.apply([make_event(1)])
        await pg.conn.execute(f'DROP TABLE "{pg.schema}"."LLMUsage"')
        with pytest.raises(SinkError, match="migrating again"):
            await sink.apply([make_event(2)])
        await sink.apply([make_event(2)])  # migrated again on the next try
        assert len(await stored(pg.conn, pg.schema)) == 1

        await pg.conn.execute(f'DROP TABLE "{pg.schema}"."LLMUsage"')
        await pg.conn.execute(PRISMA_TABLE.format(schema=pg.schema))  # the platform's, without ours
        third = make_event(3)
        with pytest.raises(SinkError, match="migrating again"):
            await sink.apply([third])
        await sink.apply([third])
        assert list(await stored(pg.conn, pg.schema)) == [third.event_id]
        restarted = pg.sink()
        await restarted.start()
        await restarted.apply([make_event(4)])
        assert len(await stored(pg.conn, pg.schema)) == 2


async def test_a_role_without_create_writes_to_a_database_its_owner_migrated() -> None:
    async with scratch_schema("grants") as pg:
        owner = pg.sink()
        await owner.start()
        await owner.close()
        role = f"app_{pg.schema[-12:]}"
        await pg.conn.execute(f"CREATE ROLE {role} LOGIN PASSWORD 'app'")
        try:
            await pg.conn.execute(f'GRANT USAGE ON SCHEMA "{pg.schema}" TO {role}')
            await pg.conn.execute(f'GRANT SELECT, INSERT, UPDATE ON "{pg.schema}"."LLMUsage" TO {role}')
            await pg.conn.execute(f'GRANT SELECT ON "{pg.schema}".gateway_schema_migrations TO {role}')
            url = pg.url.replace("gw:gw@", f"{role}:app@", 1)
            app = PostgresSink(url, schema=pg.schema)
            try:
                await app.start()
                await app.apply([make_event(1), make_event(2)])
            finally:
                await app.close()
            assert len(await stored(pg.conn, pg.schema)) == 2
        finally:
            await pg.conn.execute(f"DROP OWNED BY {role}")
            await pg.conn.execute(f"DROP ROLE {role}")


def test_a_prisma_database_url_names_the_schema_and_keeps_its_application_name() -> None:
    """Prisma's and libpq's client parameters went to the server as settings, which refused the
    connection ("unrecognized configuration parameter"): a diff review listed the ones left."""
    options = dsn_options(
        "postgresql://u:p%40ss@db:5432/app?schema=usage&connection_limit=5&application_name=platform-usage"
        "&sslmode=disable&options=-c%20statement_timeout%3D5000&connect_timeout=10&pool_timeout=20"
        "&statement_cache_size=0&sslidentity=id.p12&sslaccept=strict&socket_timeout=9"
        "&max_connection_lifetime=60&max_idle_connection_lifetime=30"
    )
    assert (options.schema, options.application_name, options.connect_timeout) == ("usage", "platform-usage", 10.0)
    assert options.dsn == (
        "postgresql://u:p%40ss@db:5432/app?application_name=platform-usage&sslmode=disable"
        "&options=-c%20statement_timeout%3D5000"
    )
    assert not options.pgbouncer
    assert dsn_options("postgresql://u:p@db/app") == DsnOptions("postgresql://u:p@db/app")
    assert dsn_options("postgresql://u:p@db/app?connect_timeout=soon").connect_timeout is None


async def test_the_schema_of_a_prisma_url_is_where_the_table_goes() -> None:
    async with scratch_schema("url") as pg:
        sink = PostgresSink(
            f"{pg.url}?schema={pg.schema}&connection_limit=3&application_name=platform-usage&connect_timeout=10"
        )
        try:
            await sink.start()
            await sink.apply([make_event(1)])
            names = await pg.conn.fetch(
                "SELECT application_name FROM pg_stat_activity WHERE application_name = 'platform-usage'"
            )
            assert names  # the pool's connection, named as the URL says
        finally:
            await sink.close()
        assert len(await stored(pg.conn, pg.schema)) == 1


async def test_an_unpriced_call_where_cost_is_not_null_is_dead_lettered_alone() -> None:
    """Prisma makes ``costUsd Decimal`` NOT NULL; an unpriced call (a new model) has no cost.
    Its event paused the projection for every tenant (a re-test); now it alone is dead-lettered,
    saying why, and the rest of its batch lands."""
    from consumers.deadletter import MemoryDeadLetters
    from consumers.projector import Projector
    from gateway.eventlog.memory import MemoryEventLog

    async with scratch_schema("notnullcost") as pg:
        await pg.conn.execute(f'CREATE SCHEMA "{pg.schema}"')
        table = PRISMA_TABLE.format(schema=pg.schema)
        await pg.conn.execute(table.replace('"costUsd" DECIMAL(65,30),', '"costUsd" DECIMAL(65,30) NOT NULL,'))
        log, letters = MemoryEventLog(), MemoryDeadLetters()
        priced = [make_event(i, tenant_id=f"t{i}") for i in range(4)]
        unpriced = make_event(9, tenant_id="new-model", cost=None)
        for event in (priced[0], priced[1], unpriced, priced[2], priced[3]):
            log.publish(event)
        projector = Projector(log, [pg.sink()], letters, batch_size=10)
        await projector.start()
        assert await projector.run_until_idle() == 4
        await projector.close()
        assert set(await stored(pg.conn, pg.schema)) == {e.event_id for e in priced}
        [letter] = letters.letters.values()
        assert b"new-model" in letter.raw and '"costUsd" is NOT NULL' in letter.reason
        assert "new-model" not in letter.reason  # the reason names the column, not the row
        assert projector.stats.status == "ok"


async def test_the_platforms_time_defaults_come_out_in_utc_whatever_the_database_zone() -> None:
    async with scratch_schema("zone") as pg:
        await pg.conn.execute(f'CREATE SCHEMA "{pg.schema}"')
        await pg.conn.execute(PRISMA_TABLE.format(schema=pg.schema))
        database = await pg.conn.fetchval("SELECT current_database()")
        role = await pg.conn.fetchval("SELECT current_user")
        await pg.conn.execute(f'ALTER ROLE "{role}" IN DATABASE "{database}" SET timezone = \'Pacific/Kiritimati\'')
        try:
            sink = pg.sink()
            await sink.start()
            event = make_event(1, created_at=datetime.now(UTC))
            await sink.apply([event])
            created, updated = await pg.conn.fetchrow(
                f'SELECT "createdAt", "updatedAt" FROM "{pg.schema}"."LLMUsage" WHERE "id" = $1', event.event_id
            )
        finally:
            await pg.conn.execute(f'ALTER ROLE "{role}" IN DATABASE "{database}" RESET timezone')
        assert abs((updated - created).total_seconds()) < 60  # both UTC without a zone (not 14 h apart)


async def test_prismas_updated_at_without_a_default_is_written_with_each_row_and_each_correction() -> None:
    """`updatedAt DateTime @updatedAt` is set by Prisma's client, so `prisma migrate` gives the
    column no default: every insert failed its NOT NULL and the projection paused for good. And
    a repriced row kept the time it was first written, so the platform's sync of changed rows
    (``WHERE "updatedAt" > last_sync``) never saw the correction."""
    async with scratch_schema("updatedat") as pg:
        await pg.conn.execute(f'CREATE SCHEMA "{pg.schema}"')
        table = PRISMA_TABLE.format(schema=pg.schema)
        bare = table.replace(
            '"updatedAt" TIMESTAMP(3) NOT NULL DEFAULT CURRENT_TIMESTAMP,', '"updatedAt" TIMESTAMP(3) NOT NULL,'
        )
        assert bare != table
        await pg.conn.execute(bare)
        live = PostgresSink(pg.url, schema=pg.schema, corrects=False)
        pg.sinks.append(live)
        await live.start()
        first, second = make_event(1), make_event(2)
        await live.apply([first, second])  # an empty table: the first batch
        await live.apply([make_event(3)])
        written = await stored(pg.conn, pg.schema, "updatedAt")
        assert len(written) == 3
        now = datetime.now(UTC).replace(tzinfo=None)
        assert all(abs((row[2] - now).total_seconds()) < 60 for row in written.values())  # UTC, written now

        replay = pg.sink()  # a replay's sink: corrects the costs that changed
        await replay.start()
        await asyncio.sleep(0.01)  # timestamp(3): past the millisecond of the first write
        corrected = first.model_copy(update={"cost_usd": Decimal("0.0000031"), "price_version": "2026-02"})
        await replay.apply([corrected, second])  # the second's cost is unchanged
        after = await stored(pg.conn, pg.schema, "updatedAt")
        assert after[first.event_id][0] == Decimal("0.0000031")
        assert after[first.event_id][2] > written[first.event_id][2]  # the corrected row says so
        assert after[second.event_id] == written[second.event_id]  # an unchanged row is not rewritten


async def test_an_updated_at_the_platform_adds_while_the_sink_runs_is_written_at_the_next_try() -> None:
    """`prisma migrate` adding ``updatedAt DateTime @updatedAt`` to the live table: the sink
    knew the table's columns from its start, and paused on the new NOT NULL until a restart."""
    async with scratch_schema("addedupdatedat") as pg:
        sink = pg.sink()
        await sink.start()
        await sink.apply([make_event(1)])
        table = f'"{pg.schema}"."LLMUsage"'
        await pg.conn.execute(f'ALTER TABLE {table} ADD COLUMN "updatedAt" TIMESTAMP(3) NOT NULL DEFAULT now()')
        await pg.conn.execute(f'ALTER TABLE {table} ALTER COLUMN "updatedAt" DROP DEFAULT')  # as Prisma leaves it
        later = make_event(2)
        with pytest.raises(SinkError, match="updatedAt"):
            await sink.apply([later])  # paused once: the projector retries the batch
        await sink.apply([later])
        assert (await stored(pg.conn, pg.schema, "updatedAt"))[later.event_id][2] is not None


@pytest.mark.parametrize("mode", ["require", "verify-full"])
async def test_a_database_that_takes_tls_only_gets_the_rows_over_tls(mode: str) -> None:
    """Managed PostgreSQL (RDS, Cloud SQL, Azure) wants TLS: ``sslmode`` and ``sslrootcert`` in
    ``DATABASE_URL`` are libpq's, and every connection of the sink's pool is encrypted
    (``verify-full``: the server's certificate checked against the root given, for its name)."""
    async with scratch_schema("tls") as pg:
        if await pg.conn.fetchval("SHOW ssl") != "on":
            missing_service("the test PostgreSQL serves no TLS (ssl = off)")
        root = await pg.conn.fetchval("SHOW ssl_cert_file")  # Debian's self-signed "snakeoil", CN=localhost
        url = pg.url.replace("127.0.0.1", "localhost")
        name = f"tls-{mode}"
        sink = PostgresSink(f"{url}?schema={pg.schema}&sslmode={mode}&sslrootcert={root}&application_name={name}")
        try:
            await sink.start()
            await sink.apply([make_event(i) for i in range(3)])
            encrypted = await pg.conn.fetch(
                "SELECT s.ssl FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid) WHERE a.application_name = $1",
                name,
            )
            assert encrypted and all(row["ssl"] for row in encrypted)
        finally:
            await sink.close()
        assert len(await stored(pg.conn, pg.schema)) == 3


async def test_a_server_certificate_for_another_name_is_refused_under_verify_full() -> None:
    """``verify-full`` checks the name: Debian's certificate says ``localhost``, so 127.0.0.1 is
    refused, and the error says why (were ``sslmode`` dropped from the URL, asyncpg's default
    ``prefer`` would connect)."""
    async with scratch_schema("tls-name") as pg:
        if await pg.conn.fetchval("SHOW ssl") != "on":
            missing_service("the test PostgreSQL serves no TLS (ssl = off)")
        root = await pg.conn.fetchval("SHOW ssl_cert_file")
        assert "127.0.0.1" in pg.url
        sink = PostgresSink(f"{pg.url}?schema={pg.schema}&sslmode=verify-full&sslrootcert={root}")
        try:
            with pytest.raises(SinkError, match="CERTIFICATE_VERIFY_FAILED"):
                await sink.start()
        finally:
            await sink.close()
