"""Closed UTC days of usage_facts are rewritten tenant by tenant (analytics/compaction.py), by the
DuckDB sink when the newest day advances: same rows and values, same rollup and costs, only the
physical order changes; a day that receives a late event is rewritten again; reset forgets."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import duckdb
import pytest

from analytics.compaction import DAY_NUMBER_SQL, DayCompactor, compact_day, day_number
from analytics.costs import CostTrackingService
from analytics.store import AnalyticsStore
from consumers.sinks.duckdb import DuckDBSink
from gateway.events import UsageEvent
from tests.unit.test_usage_daily import T0, event

TENANTS = ("acme", "globex", "initech", "umbrella")


def day_of_events(day: int, per_tenant: int = 6) -> list[UsageEvent]:
    """Every tenant's events of one day, interleaved as traffic arrives."""
    start = T0 + timedelta(days=day)
    return [
        event(TENANTS[i % len(TENANTS)], at=start + timedelta(minutes=10 * i)) for i in range(per_tenant * len(TENANTS))
    ]


async def open_store(path: Path) -> AsyncIterator[AnalyticsStore]:
    store = AnalyticsStore(path)
    await store.open()
    try:
        yield store
    finally:
        await store.close()


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[AnalyticsStore]:
    async for s in open_store(tmp_path / "a.duckdb"):
        yield s


async def facts(store: AnalyticsStore) -> list[tuple[Any, ...]]:
    return await store.fetchall("SELECT * FROM usage_facts ORDER BY event_id")


async def tenants_in_storage_order(store: AnalyticsStore, day: int) -> list[str]:
    rows = await store.fetchall(
        f"SELECT tenant_id FROM usage_facts WHERE {DAY_NUMBER_SQL} = $1 ORDER BY rowid",
        [day],
    )
    return [r[0] for r in rows]


async def test_a_closed_day_is_rewritten_tenant_by_tenant_with_the_same_rows(tmp_path: Path) -> None:
    days = [day_of_events(d) for d in range(3)]
    d0 = day_number(T0)
    async for plain in open_store(tmp_path / "plain.duckdb"):
        async for compacted in open_store(tmp_path / "compacted.duckdb"):
            sink, reference = DuckDBSink(compacted), DuckDBSink(plain)
            reference._compactor.due = lambda created: None  # type: ignore[method-assign]
            for batch in days:
                await sink.apply(batch)
                await reference.apply(batch)

            # the same rows, value for value, and the same rollup and costs
            assert await facts(compacted) == await facts(plain)
            daily = "SELECT * FROM usage_daily ORDER BY ALL"
            assert await compacted.fetchall(daily) == await plain.fetchall(daily)
            for tenant in TENANTS:
                got = await CostTrackingService(compacted).get_costs_for_tenant(tenant)
                assert got == await CostTrackingService(plain).get_costs_for_tenant(tenant)

            # days 0 and 1 are over (day 2 came): stored tenant by tenant; day 2 is still open
            for day in (d0, d0 + 1):
                order = await tenants_in_storage_order(compacted, day)
                assert order == sorted(order) and len(order) == 24
            assert await tenants_in_storage_order(plain, d0) != sorted(await tenants_in_storage_order(plain, d0))
            assert await compacted.fetchall("SELECT day_number, row_count FROM compacted_days ORDER BY 1") == [
                (d0, 24),
                (d0 + 1, 24),
            ]


async def test_a_late_event_is_sorted_in_at_the_next_day_change_and_reset_forgets(store: AnalyticsStore) -> None:
    sink = DuckDBSink(store)
    d0 = day_number(T0)
    for d in range(2):
        await sink.apply(day_of_events(d))
    late = event("aaa-first", at=T0 + timedelta(hours=23))  # day 0, after it was rewritten
    await sink.apply([late])
    assert (await tenants_in_storage_order(store, d0))[-1] == "aaa-first"  # appended for now

    await sink.apply(day_of_events(2))  # the next day change finds day 0's count changed
    order = await tenants_in_storage_order(store, d0)
    assert order[0] == "aaa-first" and order == sorted(order)
    assert (await store.fetchall("SELECT row_count FROM compacted_days WHERE day_number = $1", [d0]))[0][0] == 25

    await sink.reset()
    assert await store.fetchall("SELECT count(*) FROM compacted_days") == [(0,)]


async def test_days_after_2038_are_rewritten_too(store: AnalyticsStore) -> None:
    """A day number times 86400 overflowed an INTEGER from 2038-01-19 on: every day change logged
    "Overflow in multiplication of INT32" and no day was rewritten."""
    from datetime import UTC, datetime

    sink = DuckDBSink(store)
    start = datetime(2038, 3, 1, tzinfo=UTC)
    for d in range(2):
        day = start + timedelta(days=d)
        await sink.apply([event(TENANTS[i % 4], at=day + timedelta(minutes=10 * i)) for i in range(24)])
    d0 = day_number(start)
    order = await tenants_in_storage_order(store, d0)
    assert order == sorted(order) and len(order) == 24
    assert await store.fetchall("SELECT day_number, row_count FROM compacted_days") == [(d0, 24)]


@pytest.mark.parametrize("restart", [False, True])
async def test_the_days_before_a_long_pause_are_rewritten_when_traffic_comes_back(
    store: AnalyticsStore, restart: bool
) -> None:
    """The look back was the last 7 days before the newest: after a pause of more than that
    (traffic, or the gateway, stopped for weeks), the last days before it were never rewritten,
    restart or not (a review: a year's last day, then calls 46 days later)."""
    sink = DuckDBSink(store)
    d0 = day_number(T0)
    for d in range(2):
        await sink.apply(day_of_events(d))  # day 0 rewritten when day 1 came; day 1 still open
    if restart:
        sink = DuckDBSink(store)
    await sink.apply(day_of_events(46))
    order = await tenants_in_storage_order(store, d0 + 1)
    assert order == sorted(order)
    done = await store.fetchall("SELECT day_number FROM compacted_days ORDER BY 1")
    assert done == [(d0,), (d0 + 1,)]


def test_the_compactor_looks_back_at_start_and_then_only_when_the_day_advances() -> None:
    compactor = DayCompactor()
    d0 = day_number(T0)
    assert compactor.due([T0]) == (d0 - 7, d0)  # a (re)started projector checks the last week
    assert compactor.due([T0 + timedelta(hours=5)]) is None
    assert compactor.due([T0 - timedelta(days=3)]) is None  # an old event does not move the day back
    assert compactor.due([T0 + timedelta(days=1, seconds=1)]) == (d0 + 1 - 7, d0 + 1)
    assert compactor.due([]) is None


async def test_a_failed_rewrite_changes_nothing_and_does_not_fail_the_batch(
    store: AnalyticsStore, caplog: pytest.LogCaptureFixture
) -> None:
    sink = DuckDBSink(store)
    d0 = day_number(T0)
    sink._compactor.due = lambda created: None  # type: ignore[method-assign]
    await sink.apply(day_of_events(0))
    before = await tenants_in_storage_order(store, d0)
    await store.run(lambda c: c.execute("DROP TABLE compacted_days"))  # the rewrite's last step fails

    with pytest.raises(duckdb.CatalogException):
        await store.run(lambda c: compact_day(c, d0))
    assert await tenants_in_storage_order(store, d0) == before  # rolled back whole, rows in place

    sink._compactor = DayCompactor()
    await sink.apply(day_of_events(1))  # the day change tries again: logged, the batch is applied
    assert "rewriting closed days" in caplog.text
    assert await tenants_in_storage_order(store, d0) == before
    assert (await store.fetchall("SELECT count(*) FROM usage_facts"))[0][0] == 48
