"""The health-history sink on a real (in-memory) DuckDB: transition and snapshot rows, exact."""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import duckdb
import pytest

from analytics.store import AnalyticsStore
from consumers.sinks.base import SinkError
from consumers.sinks.health_history import TABLE, VALUES_ROWS, HealthHistorySink, write_rows
from gateway.events import UsageEvent
from gateway.health.transitions import HealthHistoryRow

T0 = datetime(2026, 1, 1, tzinfo=UTC)  # a multiple of 60 s: snapshot boundaries at T0 + k*60
_ids = itertools.count(1)


def ev(outcome: str, seconds: float, provider: str = "openai", latency: float = 100.0) -> UsageEvent:
    n = next(_ids)
    return UsageEvent(
        event_id=f"hh-{n}",
        request_id=f"req-{n}",
        attempt=1,
        created_at=T0 + timedelta(seconds=seconds),
        tenant_id="t",
        provider=provider,
        requested_model="gpt-4",
        provider_model="gpt-4",
        outcome=outcome,  # type: ignore[arg-type]
        latency_ms=latency,
    )


EVENTS = [
    *[ev("timeout", s) for s in (1, 2, 3, 4, 5)],
    ev("success", 10, provider="azure", latency=250.0),
    ev("success", 70, latency=120.0),  # after the 30 s cool-down: the probe that closes the circuit
    ev("success", 130, provider="azure", latency=300.0),
]


@pytest.fixture
async def store() -> AsyncIterator[AnalyticsStore]:
    store = AnalyticsStore()
    await store.open()
    tables = await store.fetchall("SELECT table_name FROM information_schema.tables WHERE table_name = ?", [TABLE])
    assert tables, "the analytics migrations create the health history table"
    yield store
    await store.close()


async def history(store: AnalyticsStore) -> list[tuple[Any, ...]]:
    return await store.fetchall(
        f"SELECT provider, model, window_end, attempts, failures, rate_limited, timeouts, p50_ms, p95_ms, state, "
        f"circuit, reason FROM {TABLE} ORDER BY window_end, provider, model"
    )


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


async def test_rows_for_transitions_and_snapshots(store: AnalyticsStore) -> None:
    sink = HealthHistorySink(store)
    await sink.start()
    await sink.apply(EVENTS)
    rows = await history(store)
    summary = [(r[0], r[1], r[2], r[3], r[4], r[6], r[9], r[10]) for r in rows]
    assert summary == [
        # the 5th timeout in a row opens the circuit: one row for both transitions at that instant
        ("openai", "*", at(5), 5, 5, 5, "down", "open"),
        ("openai", "gpt-4", at(5), 5, 5, 5, "down", None),
        ("openai", "*", at(35), 5, 5, 5, "down", "half_open"),
        # the snapshot at T0+60 (written once an event after it arrived)
        ("azure", "*", at(60), 1, 0, 0, "healthy", "closed"),
        ("azure", "gpt-4", at(60), 1, 0, 0, "healthy", None),
        ("openai", "*", at(60), 5, 5, 5, "down", "half_open"),
        ("openai", "gpt-4", at(60), 5, 5, 5, "down", None),
        # the probe succeeds; the timeouts (T0+1..5) have left the window [T0+10, T0+70]
        ("openai", "*", at(70), 1, 0, 0, "healthy", "closed"),
        ("openai", "gpt-4", at(70), 1, 0, 0, "healthy", None),
        # T0+120: azure's only attempt (T0+10) is out of the window: no azure row
        ("openai", "*", at(120), 1, 0, 0, "healthy", "closed"),
        ("openai", "gpt-4", at(120), 1, 0, 0, "healthy", None),
    ]
    by_key = {(r[0], r[1], r[2]): r for r in rows}
    opened = by_key[("openai", "*", at(5))][11]
    assert opened.startswith("circuit openai: closed -> open (5 consecutive failures: timeout, timeout")
    assert "; health openai: healthy -> down (circuit open" in opened
    assert by_key[("openai", "*", at(35))][11].startswith("circuit openai: open -> half_open (cool-down of 30s")
    assert by_key[("openai", "*", at(70))][11] == (
        "circuit openai: half_open -> closed (probe succeeded after 65s); "
        "health openai: down -> healthy (within thresholds (1 attempts in the last 60s))"
    )
    assert by_key[("openai", "*", at(60))][11] is None  # a periodic snapshot
    assert by_key[("azure", "*", at(60))][7:9] == (250.0, 250.0)
    assert by_key[("openai", "*", at(120))][7:9] == (120.0, 120.0)


async def test_a_model_named_like_the_providers_rows_leaves_them_as_they_are(store: AnalyticsStore) -> None:
    """Model names are the clients': a model named "*" wrote its rows under the provider's key,
    which then showed no open circuit (a review)."""

    def star(e: UsageEvent) -> UsageEvent:
        return e.model_copy(update={"requested_model": "*", "provider_model": "*"})

    sink, control = HealthHistorySink(store), HealthHistorySink(store)
    await sink.start()
    await sink.apply([star(e) for e in EVENTS])
    starred = await history(store)
    await store.run(lambda conn: conn.execute(f"DELETE FROM {TABLE}"))
    await control.apply([e.model_copy(update={"event_id": e.event_id + "-c"}) for e in EVENTS])
    provider_rows = [r for r in await history(store) if r[1] == "*"]
    assert starred == provider_rows  # the provider's rows, exactly; the "*" model has none


async def test_a_quiet_spell_behind_an_open_circuit_writes_a_window_of_rows_not_one_per_boundary(
    store: AnalyticsStore,
) -> None:
    """Every boundary of a gap was written while the circuit was not closed: 60 quiet days made
    86,403 rows in one INSERT (4 GB), and an event stamped in year 9999 an endless loop."""
    sink = HealthHistorySink(store)
    await sink.start()
    failures = [ev("timeout", s) for s in (1, 2, 3, 4, 5)]  # the circuit opens at T0+5
    await sink.apply(failures)
    await sink.apply([ev("success", 60 * 86_400.0)])  # 60 days later
    rows = await history(store)
    assert len(rows) < 20
    assert max(r[2] for r in rows) == at(60 * 86_400)  # the success's own transition row
    # the first boundary after the failures is written, then the quiet spell is jumped over
    assert ("openai", "*", at(60)) in {(r[0], r[1], r[2]) for r in rows}


async def test_redelivery_and_batching_give_the_same_rows(store: AnalyticsStore) -> None:
    sink = HealthHistorySink(store)
    await sink.start()
    await sink.apply(EVENTS)
    expected = await history(store)
    await sink.apply(EVENTS)  # redelivered batch: nothing changes
    assert await history(store) == expected

    await sink.reset()
    assert await history(store) == []
    for event in EVENTS:  # one event per batch
        await sink.apply([event])
    assert await history(store) == expected

    fresh = HealthHistorySink(store)  # a rebuild from the beginning upserts the same rows
    await fresh.apply(list(reversed(EVENTS)))  # order within a batch does not matter
    assert await history(store) == expected


async def test_rows_survive_an_unavailable_store(store: AnalyticsStore, monkeypatch: pytest.MonkeyPatch) -> None:
    sink = HealthHistorySink(store)
    real_run = store.run
    calls = {"n": 0}

    async def flaky(fn: Any) -> Any:
        calls["n"] += 1
        if calls["n"] == 1:
            raise duckdb.IOException("disk went away")
        return await real_run(fn)

    monkeypatch.setattr(store, "run", flaky)
    with pytest.raises(SinkError):
        await sink.apply(EVENTS[:5])
    await sink.apply(EVENTS[:5])  # the projector retries the same batch
    rows = await history(store)
    assert [(r[0], r[1], r[2], r[10]) for r in rows] == [
        ("openai", "*", at(5), "open"),
        ("openai", "gpt-4", at(5), None),
    ]


async def test_a_large_batch_lets_the_event_loop_run_and_gives_the_same_rows(store: AnalyticsStore) -> None:
    """In the embedded serve this sink shares the loop with the gateway's requests: a batch
    of thousands must not hold them all behind it (APPLY_SLICE events between two turns)."""
    import asyncio

    from consumers.sinks.health_history import APPLY_SLICE

    events = [ev(("success", "timeout", "success", "rate_limited")[n % 4], n / 10) for n in range(3000)]
    turns: list[int] = []
    seen = 0

    async def ticker() -> None:
        while True:
            turns.append(seen)
            await asyncio.sleep(0)

    sink = HealthHistorySink(store)
    await sink.start()
    real_apply = sink._view.apply

    def counting(event: UsageEvent) -> bool:
        nonlocal seen
        seen += 1
        return real_apply(event)

    sink._view.apply = counting  # type: ignore[method-assign]
    ticking = asyncio.create_task(ticker())
    await asyncio.sleep(0)
    await sink.apply(events)
    ticking.cancel()
    during = sorted({n for n in turns if 0 < n < len(events)})
    # the loop ran after every slice: never more than APPLY_SLICE events between two turns
    assert during and during[0] <= APPLY_SLICE
    assert all(b - a <= APPLY_SLICE for a, b in itertools.pairwise([0, *during, len(events)]))
    expected = await history(store)

    await sink.reset()
    one_by_one = HealthHistorySink(store)
    for event in events:
        await one_by_one.apply([event])
    assert await history(store) == expected and len(expected) >= 10  # 5 minutes: snapshots, transitions


async def test_the_sink_logs_no_transition_the_live_view_logs_already(
    store: AnalyticsStore, caplog: pytest.LogCaptureFixture
) -> None:
    """In the embedded ``serve`` the live view (routing) and this sink's view both see every
    event: each transition was logged twice. The sink writes its rows and logs nothing; a
    view left at its default still logs."""
    from gateway.health.view import HealthView

    caplog.set_level("INFO", logger="gateway.health")
    sink = HealthHistorySink(store)
    await sink.start()
    await sink.apply(EVENTS)
    assert await history(store)
    assert [r for r in caplog.records if r.name == "gateway.health"] == []
    view = HealthView(clock=lambda: at(6))
    for event in EVENTS[:5]:
        view.apply(event)
    assert any("closed -> open" in r.getMessage() for r in caplog.records if r.name == "gateway.health")


class _Recording:
    """A DuckDB connection that remembers the statements it ran."""

    def __init__(self, conn: duckdb.DuckDBPyConnection) -> None:
        self.conn, self.statements = conn, []

    def execute(self, sql: str, params: Any = None) -> Any:
        self.statements.append(sql)
        return self.conn.execute(sql, params)


async def write_recorded(store: AnalyticsStore, rows: list[HealthHistoryRow], through_files: bool) -> list[str]:
    """``write_rows``, with the store's scratch directory or none; the statements it ran."""
    scratch = store.scratch_dir if through_files else None

    def write(conn: duckdb.DuckDBPyConnection) -> list[str]:
        recording = _Recording(conn)
        write_rows(recording, rows, scratch)  # type: ignore[arg-type]
        return recording.statements

    return await store.run(write)


async def test_many_rows_go_through_a_file_and_store_what_a_values_list_stores() -> None:
    """A replay or a catch-up of sparse history makes a row per provider and model for every
    minute of it: as one parameterised VALUES list DuckDB took about 250 µs of CPU a row (0.66 s
    for a batch's 2,874 rows, more than the health view itself). Many rows now go through a JSON
    file and read_json; both ways store the same values, and a transition's reason stays when a
    snapshot of the same instant comes after it."""
    base = datetime(2026, 3, 1, 0, 0, 0, 123456, tzinfo=UTC)
    rows = [
        HealthHistoryRow(
            provider=("openai", 'o\'brien \\ "llm"', "prov-ü-😀")[i % 3],
            model=("*", "gpt-4o", "m'odel\nline", "ünï")[i % 4],
            window_end=base + timedelta(minutes=i, microseconds=i),
            window_seconds=60.0,
            attempts=2**40 + i,
            failures=i,
            rate_limited=i % 7,
            timeouts=i % 3,
            p50_ms=None if i % 5 == 0 else 0.1 + 0.2 * i,
            p95_ms=None if i % 5 == 0 else 1e-300 * i + 123456789.123,
            p50_ttft_ms=None if i % 2 else 20.5,
            state=("healthy", "degraded", "down")[i % 3],
            circuit=None if i % 4 else "half_open",
            reason=None if i % 2 else f"state degraded: p95 {i} ms > 100 ms, 'quoted' \"twice\" \\n",
        )
        for i in range(3 * VALUES_ROWS)
    ]
    later = [replace(row, reason=None, attempts=row.attempts + 1) for row in rows]  # snapshots after
    stored, statements = [], []
    for through_files in (False, True):
        store = AnalyticsStore()
        await store.open()
        try:
            statements += await write_recorded(store, rows, through_files)
            statements += await write_recorded(store, later, through_files)
            stored.append(await store.fetchall(f"SELECT * FROM {TABLE} ORDER BY ALL"))
            if through_files:  # a few rows: one VALUES list all the same
                assert ["VALUES" in s for s in await write_recorded(store, rows[:VALUES_ROWS], True)] == [True]
        finally:
            await store.close()
    assert stored[0] == stored[1]
    assert len(stored[0]) == len(rows) and sum(r[-1] is not None for r in stored[0]) == len(rows) // 2
    assert ["VALUES" in s for s in statements] == [True, True, False, False]  # the file: read_json
