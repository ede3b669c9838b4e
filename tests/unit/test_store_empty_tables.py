"""Emptying a store's large tables for a rebuild (``replay --full``): dropped and made again as
they were, not row by row. A ``DELETE`` of a year of health history (2,005,924 rows) ran out of
the default 128MB memory limit after the facts had been emptied: the costs read $0, and the
resumed rebuild failed the same way at every try (a review). Here at 32MB with 600,000 rows,
which a ``DELETE`` cannot empty either."""

from __future__ import annotations

from pathlib import Path

import pytest

from analytics.store import AnalyticsStore
from consumers.sinks.duckdb import reset_facts
from consumers.sinks.health_history import HealthHistorySink

ROWS = 600_000


def described(store: AnalyticsStore, table: str) -> tuple[object, ...]:
    """The table as DuckDB describes it: its DDL, comment, column comments and indexes."""
    conn = store.connection
    ddl, comment = conn.execute("SELECT sql, comment FROM duckdb_tables() WHERE table_name = ?", [table]).fetchone()  # type: ignore[misc]
    columns = conn.execute(
        "SELECT column_name, data_type, is_nullable, comment FROM duckdb_columns() WHERE table_name = ? "
        "ORDER BY column_index",
        [table],
    ).fetchall()
    indexes = conn.execute("SELECT sql FROM duckdb_indexes() WHERE table_name = ?", [table]).fetchall()
    return ddl, comment, columns, indexes


def fill_health_history(store: AnalyticsStore, rows: int) -> None:
    conn = store.connection
    for low in range(0, rows, 100_000):
        conn.execute(
            "INSERT INTO provider_health_history SELECT 'openai', 'gpt-' || (i % 9)::VARCHAR, "
            "TIMESTAMPTZ '2025-12-01 00:00:00+00' + to_seconds(i // 9 * 15), 60, 10, 1, 0, 0, 100, 200, 50, "
            f"'healthy', 'closed', NULL FROM range({low}, {min(rows, low + 100_000)}) t(i)"
        )
        conn.execute("CHECKPOINT")  # as the projector's batches go in: the index kept on disk


async def test_a_large_health_history_is_emptied_within_the_memory_limit(tmp_path: Path) -> None:
    store = AnalyticsStore(tmp_path / "a.duckdb", memory_limit="32MB")
    store.open_sync()
    try:
        fill_health_history(store, ROWS)
        before = described(store, "provider_health_history")
        await HealthHistorySink(store).reset()
        conn = store.connection
        assert conn.execute("SELECT count(*) FROM provider_health_history").fetchone() == (0,)
        assert described(store, "provider_health_history") == before  # the same table, comments too
        assert conn.execute("SELECT count(*) FROM v_provider_health_history").fetchone() == (0,)  # views read it
        fill_health_history(store, 9)
        with pytest.raises(Exception, match=r"(?i)duplicate key|constraint"):  # its primary key holds
            fill_health_history(store, 9)
    finally:
        store.close_sync()


def test_the_facts_tables_come_back_as_they_were(tmp_path: Path) -> None:
    store = AnalyticsStore(tmp_path / "a.duckdb")
    store.open_sync()
    try:
        tables = ("usage_facts", "usage_daily", "compacted_days")
        before = [described(store, table) for table in tables]
        store.connection.execute("INSERT INTO compacted_days VALUES (20000, 5, now())")
        reset_facts(store.connection)
        assert [described(store, table) for table in tables] == before
        assert store.connection.execute("SELECT count(*) FROM compacted_days").fetchone() == (0,)
    finally:
        store.close_sync()
