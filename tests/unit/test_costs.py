"""CostTrackingService over a DuckDB store fed by the DuckDB sink: exact totals, time windows
(start inclusive, end exclusive), tenant isolation, unpriced usage reported apart; and the
store it reads (migrations, the read-only mode the CLI uses)."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path
from typing import Any

import duckdb
import pytest

from analytics.costs import CostTrackingService
from analytics.store import AnalyticsStore, StoreError, migrations
from consumers.sinks.duckdb import DuckDBSink
from gateway.events import UsageEvent
from gateway.pricing.base import money_text
from tests.support.events import usage_event

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


def event(
    tenant: str = "acme",
    cost: Decimal | None = Decimal("0.0000025"),
    at: datetime = T0,
    *,
    outcome: str = "success",
    billable: bool = True,
    tokens: tuple[int, int] = (100, 20),
    **changes: Any,
) -> UsageEvent:
    return usage_event(tenant, cost, at, outcome=outcome, billable=billable, tokens=tokens, **changes)


async def project(store: AnalyticsStore, *events: UsageEvent) -> CostTrackingService:
    await DuckDBSink(store).apply(list(events))
    return CostTrackingService(store)


async def test_totals_are_exact_decimals(store: AnalyticsStore) -> None:
    costs = [Decimal("0.1"), Decimal("0.2"), Decimal("0.0000025"), Decimal("0.0036751")] * 250
    service = await project(store, *(event(cost=c, at=T0 + timedelta(seconds=i)) for i, c in enumerate(costs)))

    result = await service.get_costs_for_tenant("acme")

    assert result.total_cost == Decimal("75.9194")  # as floats: 75.91940000000xxx
    assert isinstance(result.total_cost, Decimal)
    assert result.usage_count == 1000
    assert result.total_tokens == 120_000
    assert json.loads(result.to_json())["totalCost"] == "75.9194"


async def test_window_start_is_inclusive_end_exclusive(store: AnalyticsStore) -> None:
    at = [T0 - timedelta(microseconds=1), T0, T0 + timedelta(hours=1), T0 + timedelta(hours=2)]
    service = await project(store, *(event(cost=Decimal(i + 1), at=t) for i, t in enumerate(at)))

    window = await service.get_costs_for_tenant("acme", T0, T0 + timedelta(hours=2))
    assert [r.created_at for r in window.usage] == [T0, T0 + timedelta(hours=1)]
    assert window.total_cost == Decimal(2 + 3)

    only_start = await service.get_costs_for_tenant("acme", start=T0 + timedelta(hours=1))
    assert only_start.usage_count == 2
    only_end = await service.get_costs_for_tenant("acme", end=T0)
    assert only_end.usage_count == 1
    assert (await service.get_costs_for_tenant("acme", T0, T0)).usage_count == 0


async def test_window_bounds_in_other_time_zones_mean_the_same_instant(store: AnalyticsStore) -> None:
    service = await project(store, event(at=T0), event(at=T0 + timedelta(hours=1)))
    paris = timezone(timedelta(hours=1))
    result = await service.get_costs_for_tenant(
        "acme", start=T0.astimezone(paris), end=(T0 + timedelta(hours=1)).astimezone(paris)
    )
    assert result.usage_count == 1
    assert result.usage[0].created_at == T0
    assert result.to_dict()["start"] == "2026-03-01T12:00:00Z"


async def test_naive_bounds_are_refused(store: AnalyticsStore) -> None:
    service = CostTrackingService(store)
    with pytest.raises(ValueError, match="timezone-aware"):
        await service.get_costs_for_tenant("acme", start=datetime(2026, 3, 1))  # noqa: DTZ001
    with pytest.raises(ValueError, match="timezone-aware"):
        await service.get_costs_for_tenant("acme", end=datetime(2026, 3, 1))  # noqa: DTZ001


async def test_tenants_are_isolated(store: AnalyticsStore) -> None:
    service = await project(
        store,
        event("acme", Decimal("1.5")),
        event("acme", Decimal("0.25")),
        event("globex", Decimal("100")),
    )
    acme = await service.get_costs_for_tenant("acme")
    globex = await service.get_costs_for_tenant("globex")
    nobody = await service.get_costs_for_tenant("nobody")
    assert (acme.total_cost, acme.usage_count) == (Decimal("1.75"), 2)
    assert (globex.total_cost, globex.usage_count) == (Decimal(100), 1)
    assert (nobody.total_cost, nobody.usage_count, nobody.usage) == (Decimal(0), 0, [])
    assert json.loads(nobody.to_json())["totalCost"] == "0"


async def test_unpriced_usage_is_reported_apart_never_as_free(store: AnalyticsStore) -> None:
    service = await project(
        store,
        event(cost=Decimal("0.5"), tokens=(10, 5)),
        event(cost=None, tokens=(1000, 500), provider_model="brand-new-model", served_model=None),
        event(cost=None, outcome="stream_cut", incomplete=True, tokens=(0, 0)),
    )
    result = await service.get_costs_for_tenant("acme")
    assert result.total_cost == Decimal("0.5")
    assert result.usage_count == 3
    assert result.unpriced_count == 2
    assert result.unpriced_tokens == 1500
    assert result.total_tokens == 1515
    body = result.to_dict()
    unpriced = [row for row in body["usage"] if row["costUsd"] is None]
    assert {row["model"] for row in unpriced} == {"brand-new-model", "gpt-4o-2024-08-06"}
    assert [row["incomplete"] for row in unpriced if row["outcome"] == "stream_cut"] == [True]


async def test_failed_attempts_are_not_usage(store: AnalyticsStore) -> None:
    ok = event(cost=Decimal("0.01"), attempt=3)
    service = await project(
        store,
        event(cost=Decimal(0), outcome="rate_limited", billable=False, tokens=(0, 0), http_status=429),
        event(cost=Decimal(0), outcome="timeout", billable=False, tokens=(0, 0), attempt=2),
        ok,
    )
    result = await service.get_costs_for_tenant("acme")
    assert result.usage_count == 1
    assert [row.id for row in result.usage] == [ok.event_id]
    assert result.total_cost == Decimal("0.01")


async def test_repricing_changes_the_totals(store: AnalyticsStore) -> None:
    original = event(cost=None)
    service = await project(store, original)
    assert (await service.get_costs_for_tenant("acme")).unpriced_count == 1
    await DuckDBSink(store).apply(
        [original.model_copy(update={"cost_usd": Decimal("0.0000031"), "price_version": "v2"})]
    )
    result = await service.get_costs_for_tenant("acme")
    assert (result.total_cost, result.unpriced_count) == (Decimal("0.0000031"), 0)
    assert result.usage[0].price_version == "v2"


async def test_json_is_camel_case_with_money_as_text(store: AnalyticsStore) -> None:
    e = event(
        cost=Decimal("0.0000025"),
        cached_tokens=40,
        cache_creation_tokens=30,
        cache_creation_1h_tokens=10,
        reasoning_tokens=7,
        schema_version=4,
        metadata={"team": "search", "note": 'say "hi" ✓'},
    )
    service = await project(store, e)
    body = json.loads((await service.get_costs_for_tenant("acme", start=T0)).to_json(), parse_float=Decimal)
    assert body == {
        "tenantId": "acme",
        "start": "2026-03-01T12:00:00Z",
        "end": None,
        "totalCost": "0.0000025",
        "totalTokens": 120,
        "usageCount": 1,
        "unpricedCount": 0,
        "unpricedTokens": 0,
        "usage": [
            {
                "id": e.event_id,
                "requestId": "req_1",
                "attempt": 1,
                "provider": "openai",
                "model": "gpt-4o-2024-08-06",
                "requestedModel": "gpt-4o",
                "promptTokens": 100,
                "completionTokens": 20,
                "totalTokens": 120,
                "cachedTokens": 40,
                "cacheCreationTokens": 30,
                "cacheCreation1hTokens": 10,
                "reasoningTokens": 7,
                "costUsd": "0.0000025",
                "priceVersion": "v1",
                "outcome": "success",
                "incomplete": False,
                "stream": False,
                "createdAt": "2026-03-01T12:00:00Z",
                "metadata": {"team": "search", "note": 'say "hi" ✓'},
            }
        ],
    }


async def test_limit_caps_the_rows_not_the_totals(store: AnalyticsStore) -> None:
    service = await project(store, *(event(cost=Decimal(1), at=T0 + timedelta(seconds=i)) for i in range(5)))
    result = await service.get_costs_for_tenant("acme", limit=2)
    assert len(result.usage) == 2
    assert (result.usage_count, result.total_cost) == (5, Decimal(5))


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (Decimal("0.0000025000"), "0.0000025"),
        (Decimal("12.0000000000"), "12"),
        (Decimal("0E-10"), "0"),
        (Decimal("1E+1"), "10"),
        (Decimal("-0.50"), "-0.5"),
    ],
)
def test_money_text(value: Decimal, text: str) -> None:
    assert money_text(value) == text


# --- the store the service reads: migrations, read-only mode (the CLI) ---------------------------
async def test_costs_from_a_read_only_store_while_no_writer_runs(tmp_path: Path) -> None:
    path = tmp_path / "analytics.duckdb"
    writer = AnalyticsStore(path)
    await writer.open()
    await DuckDBSink(writer).apply([event(cost=Decimal("0.75")), event("globex", Decimal(3))])
    await writer.close()

    reader = AnalyticsStore(path, read_only=True)
    await reader.open()
    try:
        result = await CostTrackingService(reader).get_costs_for_tenant("acme")
        assert (result.total_cost, result.usage_count) == (Decimal("0.75"), 1)
        with pytest.raises(duckdb.Error):
            await reader.fetchall("DELETE FROM usage_facts")
    finally:
        await reader.close()


async def test_migrations_are_recorded_and_applied_once(tmp_path: Path) -> None:
    path = tmp_path / "analytics.duckdb"
    for _ in range(2):
        store = AnalyticsStore(path)
        await store.open()
        rows = await store.fetchall("SELECT version, name FROM schema_migrations")
        assert rows == [(m.version, m.name) for m in migrations()]
        assert await store.schema_version() == migrations()[-1].version
        await store.close()


async def test_read_only_refuses_a_missing_or_foreign_file(tmp_path: Path) -> None:
    with pytest.raises(StoreError, match="no analytics database"):
        await AnalyticsStore(tmp_path / "missing.duckdb", read_only=True).open()
    foreign = tmp_path / "foreign.duckdb"
    duckdb.connect(str(foreign)).close()
    with pytest.raises(StoreError, match="not an llm-gateway analytics database"):
        await AnalyticsStore(foreign, read_only=True).open()


async def test_a_database_from_a_newer_version_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "analytics.duckdb"
    store = AnalyticsStore(path)
    await store.open()
    await store.fetchall("INSERT INTO schema_migrations (version, name) VALUES (9999, 'future')")
    await store.close()
    with pytest.raises(StoreError, match="newer"):
        await AnalyticsStore(path).open()


#: keys JSONPath would read as paths unless quoted, and values of any text
ODD_KEYS = ("team", "$x", "/p", "a.b", 'q"k', "back\\slash", "[0]", "sp ace", "✓", "*")


async def test_metadata_filters_and_splits_equal_a_sum_over_the_events(store: AnalyticsStore) -> None:
    import random

    rng = random.Random(5)
    events = []
    for i in range(400):
        metadata = {k: rng.choice(["a", "b", 'c "q"', ""]) for k in rng.sample(ODD_KEYS, rng.randrange(0, 4))}
        cost = None if i % 17 == 0 else Decimal(rng.randrange(1, 10**6)) / 10**9
        at = T0 + timedelta(hours=rng.randrange(-48, 96), microseconds=rng.randrange(10**6))
        events.append(event(rng.choice(["acme", "globex"]), cost, at, schema_version=4, metadata=metadata))
    service = await project(store, *events)
    windows = [(None, None), (T0, None), (T0 - timedelta(hours=30), T0 + timedelta(days=2, minutes=7))]
    matched = 0
    for start, end in windows:
        inside = [
            e
            for e in events
            if e.tenant_id == "acme"
            and (start is None or e.created_at >= start)
            and (end is None or e.created_at < end)
        ]
        for key in ODD_KEYS:
            for value in ("a", 'c "q"', ""):
                pairs = {"team": "b", key: value}  # two pairs (one if key is team)
                got = await service.get_costs_for_tenant("acme", start, end, metadata=pairs)
                want = [e for e in inside if all(e.metadata.get(k) == v for k, v in pairs.items())]
                assert (got.usage_count, got.total_cost, got.unpriced_count) == (
                    len(want),
                    sum((e.cost_usd or 0 for e in want), Decimal(0)),
                    sum(e.cost_usd is None for e in want),
                ), (key, value)
                assert {r.id for r in got.usage} == {e.event_id for e in want}
                matched += len(want)
            split = await service.get_costs_for_tenant("acme", start, end, group_by=f"metadata.{key}", limit=0)
            assert split.groups is not None and split.usage == []
            by_value: dict[str | None, list[UsageEvent]] = {}
            for e in inside:
                by_value.setdefault(e.metadata.get(key), []).append(e)
            assert {g.value: (g.usage_count, g.total_cost, g.unpriced_count) for g in split.groups} == {
                v: (len(es), sum((e.cost_usd or 0 for e in es), Decimal(0)), sum(e.cost_usd is None for e in es))
                for v, es in by_value.items()
            }, key
            assert sum((g.total_cost for g in split.groups), Decimal(0)) == split.total_cost
            assert [g.total_cost for g in split.groups] == sorted((g.total_cost for g in split.groups), reverse=True)
        rows = (await service.get_costs_for_tenant("acme", start, end)).usage
        assert {r.id: r.metadata for r in rows} == {e.event_id: e.metadata for e in inside}
    assert matched > 50  # the filters did match calls


async def test_a_split_by_provider_model_or_day(store: AnalyticsStore) -> None:
    service = await project(
        store,
        event(cost=Decimal(1), at=T0),
        event(cost=Decimal(2), at=T0 + timedelta(days=1), provider="anthropic", served_model="claude"),
        event(cost=None, at=T0 + timedelta(days=1, hours=1)),
    )
    by = {}
    for group_by in ("provider", "model", "day"):
        result = await service.get_costs_for_tenant("acme", group_by=group_by)
        by[group_by] = {g.value: (g.usage_count, g.total_cost, g.unpriced_count) for g in result.groups or ()}
    assert by["provider"] == {"anthropic": (1, Decimal(2), 0), "openai": (2, Decimal(1), 1)}
    assert by["model"] == {"claude": (1, Decimal(2), 0), "gpt-4o-2024-08-06": (2, Decimal(1), 1)}
    assert by["day"] == {"2026-03-02": (2, Decimal(2), 1), "2026-03-01": (1, Decimal(1), 0)}
    days = await service.get_costs_for_tenant("acme", group_by="day")
    assert [g.value for g in days.groups or ()] == ["2026-03-01", "2026-03-02"]  # in order, not by cost
    with pytest.raises(ValueError, match="cannot group by"):
        await service.get_costs_for_tenant("acme", group_by="tenant")


async def test_a_split_lists_at_most_max_groups_and_says_so(
    store: AnalyticsStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A key with a value per call (a trace id) made one group per call: the whole history in
    one answer, in the process that serves the calls."""
    from analytics import costs

    monkeypatch.setattr(costs, "MAX_GROUPS", 3)
    events = [
        event(cost=Decimal(i + 1), at=T0 + timedelta(seconds=i), schema_version=4, metadata={"trace": str(i)})
        for i in range(5)
    ]
    service = await project(store, *events)
    split = await service.get_costs_for_tenant("acme", group_by="metadata.trace")
    assert [g.value for g in split.groups or ()] == ["4", "3", "2"] and split.groups_truncated
    assert split.to_dict()["groupsTruncated"] is True and split.total_cost == Decimal(15)
    whole = await service.get_costs_for_tenant("acme", group_by="metadata.trace", metadata={"trace": "1"})
    assert [g.value for g in whole.groups or ()] == ["1"] and not whole.groups_truncated
    # days: the newest kept (a re-test: the oldest were), listed oldest first
    await project(store, *(event(cost=Decimal(1), at=T0 + timedelta(days=d)) for d in range(1, 5)))
    days = await service.get_costs_for_tenant("acme", group_by="day")
    assert [g.value for g in days.groups or ()] == ["2026-03-03", "2026-03-04", "2026-03-05"]
    assert days.groups_truncated
