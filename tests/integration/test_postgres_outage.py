"""A database outage mid-stream: the projector pauses, waits, and catches up with no gap and no
duplicate once PostgreSQL is back (real cluster, taken down with ``pg_ctlcluster stop -m fast``)."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import pytest

from consumers.deadletter import MemoryDeadLetters
from consumers.projector import Projector
from consumers.sinks.postgres import PostgresSink
from gateway.eventlog.memory import MemoryEventLog
from gateway.events import UsageEvent
from gateway.ids import uuid7
from tests.conftest import PostgresControl

pytestmark = pytest.mark.postgres

START = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
TOTAL = 3000


def make_event(i: int) -> UsageEvent:
    failed = i % 10 == 0
    unpriced = i % 17 == 0 and not failed
    return UsageEvent(
        event_id=str(uuid7()),
        request_id=f"req_{i}",
        attempt=1,
        created_at=START + timedelta(milliseconds=i),
        tenant_id=f"tenant-{i % 4}",
        provider="openai",
        requested_model="gpt-4o",
        provider_model="gpt-4o",
        outcome="rate_limited" if failed else "success",
        latency_ms=5.0,
        prompt_tokens=0 if failed else 100 + i,
        completion_tokens=0 if failed else 10,
        total_tokens=0 if failed else 110 + i,
        cost_usd=Decimal(0) if failed else None if unpriced else Decimal("0.0000025") * (i + 1),
        price_version="v1",
        billable=not failed,
    )


@pytest.fixture
async def schema(database_url: str) -> AsyncIterator[str]:
    name = f"outage_{uuid.uuid4().hex[:12]}"
    yield name
    conn = await asyncpg.connect(database_url)
    try:
        await conn.execute(f'DROP SCHEMA IF EXISTS "{name}" CASCADE')
    finally:
        await conn.close()


async def wait_for(what: str, check: Callable[[], bool], seconds: float) -> None:
    try:
        async with asyncio.timeout(seconds):
            while not check():  # noqa: ASYNC110 - polling the projector's counters
                await asyncio.sleep(0.05)
    except TimeoutError:
        pytest.fail(f"timed out after {seconds}s waiting until {what}")


async def test_projector_waits_out_a_database_outage_and_catches_up(
    database_url: str, postgres_control: PostgresControl, schema: str
) -> None:
    log = MemoryEventLog()
    sink = PostgresSink(database_url, schema=schema, connect_timeout=2.0, command_timeout=10.0)
    projector = Projector(
        log, [sink], MemoryDeadLetters(), batch_size=200, poll_timeout=0.05, retry_initial=0.1, retry_max=1.0
    )
    await projector.start()
    stop = asyncio.Event()
    consumer = asyncio.create_task(projector.run_forever(stop))
    events = [make_event(i) for i in range(TOTAL)]

    async def produce() -> None:
        for i in range(0, TOTAL, 50):  # a steady stream, ~6 s long
            for event in events[i : i + 50]:
                log.publish(event)
            await asyncio.sleep(0.1)

    producer = asyncio.create_task(produce())
    try:
        stats = projector.stats
        await wait_for("some events applied", lambda: stats.events_applied >= 500, 30)

        await postgres_control.astop()  # mid-stream
        await wait_for("the projector pauses", lambda: stats.paused and stats.retries >= 3, 30)
        applied_while_down = stats.events_applied
        await asyncio.sleep(1.0)
        assert stats.events_applied == applied_while_down  # nothing applied, nothing committed
        assert stats.paused
        assert await log.lag() > 0

        await postgres_control.astart()
        await producer
        await wait_for("caught up", lambda: stats.events_applied == TOTAL and not stats.paused, 60)
        assert await log.lag() == 0
    finally:
        stop.set()
        await asyncio.wait_for(consumer, 10)
        producer.cancel()
        await projector.close()

    conn = await asyncpg.connect(database_url, server_settings={"search_path": schema})
    try:
        count, distinct, total = await conn.fetchrow(
            'SELECT count(*), count(DISTINCT "id"), sum("costUsd") FROM "LLMUsage"'
        )
        per_tenant = dict(await conn.fetch('SELECT "tenantId", sum("costUsd") FROM "LLMUsage" GROUP BY 1'))
        unpriced = await conn.fetchval('SELECT count(*) FROM "LLMUsage" WHERE "costUsd" IS NULL')
    finally:
        await conn.close()
    assert count == distinct == TOTAL
    assert total == sum((e.cost_usd for e in events if e.cost_usd is not None), Decimal(0))
    for tenant, cost in per_tenant.items():
        expected = [e.cost_usd for e in events if e.tenant_id == tenant and e.cost_usd is not None]
        assert cost == sum(expected, Decimal(0))
    assert unpriced == sum(1 for e in events if e.cost_usd is None)
    assert stats.retries >= 3


async def test_a_database_recreated_empty_is_migrated_again_and_projected_into(database_url: str, schema: str) -> None:
    """The database restored empty (or recreated) under a running projector: its table is gone.
    The sink's pool outlived it, so every retry failed on "relation does not exist" and the
    projector stayed paused for good; now the sink opens a fresh pool, which migrates first,
    and the batches that were waiting are applied."""
    log = MemoryEventLog()
    sink = PostgresSink(database_url, schema=schema, connect_timeout=2.0, command_timeout=10.0)
    projector = Projector(log, [sink], MemoryDeadLetters(), batch_size=100, retry_initial=0.05, retry_max=0.2)
    await projector.start()
    events = [make_event(i) for i in range(300)]
    try:
        for event in events[:100]:
            log.publish(event)
        assert await projector.run_until_idle() == 100
        admin = await asyncpg.connect(database_url)
        try:
            await admin.execute(f'DROP SCHEMA "{schema}" CASCADE')  # what a restore to empty leaves
        finally:
            await admin.close()
        for event in events[100:]:
            log.publish(event)
        assert await projector.run_until_idle() == 200
        assert projector.stats.retries >= 1 and not projector.stats.paused
    finally:
        await projector.close()
    ids = await stored_ids(database_url, schema)
    assert ids == {e.event_id for e in events[100:]}  # a replay brings back what the restore lost


class PausableProxy:
    """A TCP proxy to the database that can stop forwarding (a server that takes the statement and
    never answers, as a hung host or a stopped proxy does), then carry on."""

    def __init__(self, host: str, port: int) -> None:
        self.upstream = (host, port)
        self.flowing = asyncio.Event()
        self.flowing.set()
        self._writers: list[asyncio.StreamWriter] = []
        self._server: asyncio.Server | None = None

    async def start(self) -> int:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        port: int = self._server.sockets[0].getsockname()[1]
        return port

    async def _handle(self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        self._writers.append(client_writer)
        await self.flowing.wait()  # a stopped host serves no new connection either (a cancel request)
        reader, writer = await asyncio.open_connection(*self.upstream)
        self._writers.append(writer)
        await asyncio.gather(self._pipe(client_reader, writer), self._pipe(reader, client_writer))

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                await self.flowing.wait()
                writer.write(data)
                await writer.drain()
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            writer.close()

    async def close(self) -> None:
        self.flowing.set()
        for writer in self._writers:
            writer.close()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()


async def test_a_hung_database_is_named_and_a_stop_does_not_wait_for_it(
    database_url: str, schema: str, tmp_path: Path
) -> None:
    """Behind a proxy that stopped forwarding, Postgres held the sink for its statement timeout:
    /healthz said ok and blamed the log, and a SIGTERM waited 68 s (a re-test). The sink is now
    named (stalled), and a stop cancels the held batch after its grace and closes the pool within
    CLOSE_SECONDS; the batch was not committed, and is stored at the next start."""
    from analytics.costs import CostTrackingService
    from analytics.store import AnalyticsStore
    from consumers.pipeline import Pipeline
    from consumers.sinks.postgres import CLOSE_SECONDS
    from gateway.eventlog.deadletter import SqliteDeadLetters

    url = urlsplit(database_url)
    proxy = PausableProxy(url.hostname or "127.0.0.1", url.port or 5432)
    proxied = urlunsplit(url._replace(netloc=f"{url.netloc.rsplit('@', 1)[0]}@127.0.0.1:{await proxy.start()}"))
    log = MemoryEventLog()
    events = [make_event(i) for i in range(20)]
    try:
        sink = PostgresSink(proxied, schema=schema, connect_timeout=2.0, command_timeout=60.0)
        projector = Projector(log, [sink], MemoryDeadLetters(), batch_size=200, poll_timeout=0.05)
        projector.stats.lag_stale_after = 0.5
        store = AnalyticsStore(tmp_path / "a.duckdb")
        pipeline = Pipeline(
            log, store, SqliteDeadLetters(tmp_path / "letters.sqlite3"), projector, CostTrackingService(store)
        )
        pipeline.stop_grace = 0.5
        await pipeline.start()
        for event in events[:10]:
            log.publish(event)
        await wait_for("the first events stored", lambda: projector.stats.events_applied == 10, 30)

        proxy.flowing.clear()
        for event in events[10:]:
            log.publish(event)
        await wait_for("the sink named as stalled", lambda: "postgres" in projector.stats.stalled(), 30)
        assert projector.stats.health()["status"] == "stalled"

        started = asyncio.get_running_loop().time()
        await asyncio.wait_for(pipeline.stop(), 60)
        assert asyncio.get_running_loop().time() - started < pipeline.stop_grace + CLOSE_SECONDS + 2
        assert await log.lag() == 10  # the held batch was not committed
    finally:
        await proxy.close()

    assert await stored_ids(database_url, schema) == {e.event_id for e in events[:10]}


async def stored_ids(database_url: str, schema: str) -> set[str]:
    """The event ids ``"LLMUsage"`` holds in ``schema``."""
    conn = await asyncpg.connect(database_url, server_settings={"search_path": schema})
    try:
        return {row[0] for row in await conn.fetch('SELECT "id" FROM "LLMUsage"')}
    finally:
        await conn.close()
