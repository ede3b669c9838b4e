"""The usage_daily rollup (migration 0005), kept by the DuckDB sink in the transaction of the
facts: after inserts, re-deliveries, re-pricing (priced <-> unpriced), resets and refused batches
it equals the aggregate of usage_facts; a file migrated from 0004 is backfilled; v_cost_daily
keeps the values of 0004's view; and the costs of GET /v1/costs (whole days from the rollup,
partial edge days from the facts) equal the totals over the facts for any window."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path
from typing import Any

import duckdb
import pytest

from analytics.costs import _ROWS, _TOTALS, CostTrackingService, UsageRow, _facts_window
from analytics.store import AnalyticsStore, apply_migrations, migrations
from consumers.sinks.base import RejectedEvents
from consumers.sinks.duckdb import REBUILD_DAILY, UPSERT, DuckDBSink
from gateway.events import UsageEvent
from tests.support.events import usage_event

T0 = datetime(2026, 3, 1, 0, 0, tzinfo=UTC)
_AGGREGATE = REBUILD_DAILY[REBUILD_DAILY.index("SELECT") :]
#: 0004's v_cost_daily, over the facts (the values the view must keep)
_VIEW_0004 = next(m.sql for m in migrations() if m.version == 4)
_VIEW_0004_SELECT = _VIEW_0004[_VIEW_0004.index("SELECT") : _VIEW_0004.index(";\n\nCOMMENT")]


def event(
    tenant: str = "acme",
    cost: Decimal | None = Decimal("0.0000025"),
    at: datetime = T0,
    *,
    billable: bool = True,
    **changes: Any,
) -> UsageEvent:
    return usage_event(tenant, cost, at, billable=billable, **changes)


def mixed_events(n: int, seed: int = 1) -> list[UsageEvent]:
    """Several tenants, days (UTC edges included), providers, models; unpriced, failed and
    incomplete attempts; costs with all 10 decimals."""
    rng = random.Random(seed)
    events = []
    for _ in range(n):
        served = rng.choice(["gpt-4o-2024-08-06", "claude-3-5-sonnet", None])
        events.append(
            event(
                tenant=rng.choice(["acme", "globex", "initech"]),
                cost=rng.choice([None, Decimal(rng.randrange(10**9)) / 10**10, Decimal("0")]),
                at=T0 + timedelta(seconds=rng.randrange(-86_400, 4 * 86_400), microseconds=rng.randrange(10**6)),
                billable=rng.random() < 0.85,
                provider=rng.choice(["openai", "anthropic"]),
                served_model=served,
                incomplete=rng.random() < 0.1,
                prompt_tokens=(p := rng.randrange(1000)),
                completion_tokens=(c := rng.randrange(500)),
                total_tokens=p + c,
            )
        )
    return events


def repriced(e: UsageEvent, cost: Decimal | None, version: str | None = "v2") -> UsageEvent:
    return e.model_copy(update={"cost_usd": cost, "price_version": version if cost is not None else None})


def rollup(conn: duckdb.DuckDBPyConnection) -> list[tuple[Any, ...]]:
    return sorted(conn.execute("SELECT * FROM usage_daily").fetchall())


def aggregate(conn: duckdb.DuckDBPyConnection) -> list[tuple[Any, ...]]:
    return sorted(conn.execute(_AGGREGATE).fetchall())


def assert_rollup_is_exact(store: AnalyticsStore) -> None:
    conn = store.connection
    assert rollup(conn) == aggregate(conn)
    view = sorted(conn.execute("SELECT * FROM v_cost_daily").fetchall())
    assert view == sorted(conn.execute(_VIEW_0004_SELECT).fetchall())


async def test_inserts_in_batches(store: AnalyticsStore) -> None:
    sink = DuckDBSink(store)
    events = mixed_events(600)
    for i in range(0, 600, 70):
        await sink.apply(events[i : i + 70])
        assert_rollup_is_exact(store)
    assert store.connection.execute("SELECT sum(calls) FROM usage_daily").fetchone() == (
        sum(e.billable for e in events),
    )


async def test_redelivery_changes_nothing(store: AnalyticsStore) -> None:
    sink = DuckDBSink(store)
    events = mixed_events(300)
    await sink.apply(events)
    before = rollup(store.connection)
    await sink.apply(events)
    await sink.apply(events[100:250] + mixed_events(1, seed=9))  # overlapping, plus one new event
    assert_rollup_is_exact(store)
    assert sum(r[4] for r in rollup(store.connection)) == sum(r[4] for r in before) + sum(
        e.billable for e in mixed_events(1, seed=9)
    )


async def test_repricing_moves_costs_and_unpriced_counts(store: AnalyticsStore) -> None:
    sink = DuckDBSink(store)
    events = mixed_events(400)
    await sink.apply(events)
    rng = random.Random(3)
    changed = []
    for e in events[::2]:
        if e.cost_usd is None:
            changed.append(repriced(e, Decimal("0.0000031")))  # unpriced -> priced
        elif rng.random() < 0.3:
            changed.append(repriced(e, None))  # priced -> unpriced (a price removed)
        elif rng.random() < 0.5:
            changed.append(e.model_copy(update={"price_version": "v3"}))  # same cost, new version
        else:
            changed.append(repriced(e, e.cost_usd * 3 + Decimal("0.0000000001")))
    # one batch mixing re-priced, unchanged re-deliveries and new events
    await sink.apply(changed + events[1::4] + mixed_events(50, seed=4))
    assert_rollup_is_exact(store)
    await sink.apply(events)  # and back to the first prices
    assert_rollup_is_exact(store)


async def test_totals_of_v_cost_daily_after_repricing(store: AnalyticsStore) -> None:
    sink = DuckDBSink(store)
    a, b = event(cost=Decimal("0.1")), event(cost=None)
    await sink.apply([a, b])
    await sink.apply([repriced(a, Decimal("0.25")), repriced(b, Decimal("0.0000001"))])
    row = store.connection.execute(
        "SELECT calls, cost_usd, unpriced_calls, unpriced_tokens FROM v_cost_daily"
    ).fetchall()
    assert row == [(2, Decimal("0.2500001"), 0, 0)]


async def test_reset_empties_the_rollup_and_a_rebuild_matches(store: AnalyticsStore) -> None:
    sink = DuckDBSink(store)
    events = mixed_events(200)
    await sink.apply(events)
    await sink.reset()
    assert store.connection.execute("SELECT count(*) FROM usage_daily").fetchone() == (0,)
    await sink.apply(events[:120])
    await sink.apply(events[80:])
    assert_rollup_is_exact(store)


async def test_a_refused_batch_changes_neither_table(store: AnalyticsStore) -> None:
    sink = DuckDBSink(store)
    await sink.apply(mixed_events(50))
    before = rollup(store.connection), store.connection.execute("SELECT count(*) FROM usage_facts").fetchone()
    # over DECIMAL(20, 10): refused by DuckDB (and by the schema since: made past its check)
    too_big = event().model_copy(update={"cost_usd": Decimal("12345678901.5")})
    with pytest.raises(RejectedEvents):
        await sink.apply([*mixed_events(20, seed=5), too_big])
    after = rollup(store.connection), store.connection.execute("SELECT count(*) FROM usage_facts").fetchone()
    assert after == before
    assert_rollup_is_exact(store)


async def test_an_existing_file_is_backfilled_by_the_migration(tmp_path: Path) -> None:
    path = tmp_path / "analytics.duckdb"
    conn = duckdb.connect(str(path))
    conn.execute("SET TimeZone = 'UTC'")
    apply_migrations(conn, [m for m in migrations() if m.version <= 4])
    batch = tmp_path / "batch.json"
    from pydantic import TypeAdapter

    batch.write_bytes(TypeAdapter(list[UsageEvent]).dump_json(mixed_events(500)))
    # the 0004-era sink: facts only, without the columns of later migrations
    old_upsert = (
        UPSERT.replace(" cache_creation_1h_tokens,", "")
        .replace(" e.cache_creation_1h_tokens,", "")
        .replace(", metadata)", ")")
        .replace(", e.metadata FROM", " FROM")
    )
    conn.execute(old_upsert, [str(batch)])
    old_view = sorted(conn.execute("SELECT * FROM v_cost_daily").fetchall())
    conn.close()

    store = AnalyticsStore(path)
    await store.open()
    try:
        assert await store.schema_version() >= 5
        assert_rollup_is_exact(store)
        assert sorted(store.connection.execute("SELECT * FROM v_cost_daily").fetchall()) == old_view
        await DuckDBSink(store).apply(mixed_events(100, seed=8))  # and it is kept from there
        assert_rollup_is_exact(store)
    finally:
        await store.close()


def _windows(rng: random.Random) -> list[tuple[datetime | None, datetime | None]]:
    day = timedelta(days=1)
    points = [
        T0 - day,
        T0,
        T0 + day,
        T0 + timedelta(hours=5, minutes=7, microseconds=3),
        T0 + 2 * day - timedelta(microseconds=1),
        T0 + 3 * day + timedelta(hours=23, minutes=59, seconds=59, microseconds=999_999),
    ]
    points += [
        T0 + timedelta(seconds=rng.randrange(-2 * 86_400, 5 * 86_400), microseconds=rng.randrange(10**6))
        for _ in range(20)
    ]
    windows: list[tuple[datetime | None, datetime | None]] = [(None, None)]
    for p in points:
        windows += [(p, None), (None, p), (p, p), (p, p + timedelta(hours=3)), (p - timedelta(days=2, hours=1), p)]
        windows.append(
            (p.astimezone(timezone(timedelta(hours=-7))), (p + day * 2).astimezone(timezone(timedelta(hours=9))))
        )
    return windows


async def test_costs_equal_the_totals_over_the_facts_for_any_window(store: AnalyticsStore) -> None:
    sink = DuckDBSink(store)
    events = mixed_events(800)
    await sink.apply(events)
    epoch = datetime(1970, 1, 1, tzinfo=UTC)
    await sink.apply([event(at=epoch - timedelta(hours=h), cost=Decimal(h)) for h in (1, 23, 25)])  # before 1970
    windows = [(epoch - timedelta(hours=30), epoch), (epoch - timedelta(hours=24), epoch + timedelta(hours=1))]
    await sink.apply([repriced(e, None) for e in events[:40]] + [repriced(e, Decimal("0.5")) for e in events[40:80]])
    service = CostTrackingService(store)
    rng = random.Random(11)
    for tenant in ("acme", "globex", "nobody"):
        for start, end in _windows(rng) + windows:
            result = await service.get_costs_for_tenant(tenant, start, end)
            condition, params = _facts_window(tenant, start, end)
            count, tokens, cost, unpriced, unpriced_tokens = store.connection.execute(
                _TOTALS.format(where=condition), params
            ).fetchone()
            assert (result.usage_count, result.total_tokens, result.unpriced_count, result.unpriced_tokens) == (
                count,
                tokens,
                unpriced,
                unpriced_tokens,
            ), (tenant, start, end)
            assert str(result.total_cost) == str(Decimal(cost)), (tenant, start, end)  # same value and exponent
            reference = store.connection.execute(_ROWS.format(where=condition), params).fetchall()
            assert [repr(row) for row in result.usage] == [repr(_reference_row(r)) for r in reference]


def _reference_row(r: tuple[Any, ...]) -> UsageRow:
    """A listed row as DuckDB converts it (DECIMAL -> Decimal, TIMESTAMPTZ -> datetime)."""
    return UsageRow(*r[:16], created_at=r[16].astimezone(UTC))  # type: ignore[misc]


async def test_listed_rows_keep_exact_values(store: AnalyticsStore) -> None:
    costs = [Decimal("9999999999.9999999999"), Decimal("0.0000000001"), Decimal("0"), Decimal("1.5"), None]
    times = [T0, T0 + timedelta(microseconds=1), datetime(1969, 12, 31, 23, 59, 59, 999_999, tzinfo=UTC)]
    events = [event(cost=c, at=t) for c in costs for t in times]
    await DuckDBSink(store).apply(events)
    result = await CostTrackingService(store).get_costs_for_tenant("acme")
    condition, params = _facts_window("acme", None, None)
    reference = store.connection.execute(_ROWS.format(where=condition), params).fetchall()
    assert [repr(row) for row in result.usage] == [repr(_reference_row(r)) for r in reference]
    assert len(result.usage) == len(events)


async def test_a_redelivered_event_with_another_time_is_found_and_repriced_under_its_stored_day(
    store: AnalyticsStore,
) -> None:
    """The lookup of existing events first reads only the batch's time range; an event whose
    stored created_at lies outside it (never expected: events are immutable) is still found."""
    sink = DuckDBSink(store)
    e = event(cost=Decimal("0.2"))
    await sink.apply([e, event(at=T0 + timedelta(days=9))])
    moved = e.model_copy(
        update={"created_at": T0 + timedelta(days=5), "cost_usd": Decimal("0.7"), "price_version": "v2"}
    )
    await sink.apply([moved, event(at=T0 + timedelta(days=5))])
    assert_rollup_is_exact(store)
    stored = store.connection.execute("SELECT created_at, cost_usd FROM usage_facts WHERE event_id = ?", [e.event_id])
    assert stored.fetchall() == [(T0, Decimal("0.7000000000"))]
