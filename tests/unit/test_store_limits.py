"""The analytics store's memory and thread bounds (``LLM_GATEWAY_DUCKDB_MEMORY_LIMIT``,
``LLM_GATEWAY_DUCKDB_THREADS``): applied to DuckDB, spilled past, refused when unreadable."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from analytics.store import AnalyticsStore, StoreError
from consumers.pipeline import build_pipeline
from gateway.settings import Settings

BIG_AGGREGATE = (
    "SELECT count(*), sum(n) FROM (SELECT i % 3000000 AS k, count(*) AS n FROM range(6000000) t(i) GROUP BY k)"
)


def settings_of(store: AnalyticsStore) -> tuple[float, int]:
    limit, threads = store.connection.execute(
        "SELECT current_setting('memory_limit'), current_setting('threads')"
    ).fetchone() or ("", 0)
    number, unit = str(limit).split()
    return float(number) * {"KiB": 1 / 1024, "MiB": 1.0, "GiB": 1024.0}[unit], int(threads)


def test_the_limits_reach_duckdb(tmp_path: Path) -> None:
    store = AnalyticsStore(tmp_path / "a.duckdb", memory_limit="64MB", threads=1)
    store.open_sync()
    try:
        mib, threads = settings_of(store)
        assert 55 <= mib <= 64 and threads == 1  # DuckDB prints 64 MB as 61.0 MiB
    finally:
        store.close_sync()


def test_without_limits_duckdb_keeps_its_defaults(tmp_path: Path) -> None:
    store = AnalyticsStore(tmp_path / "a.duckdb")
    store.open_sync()
    try:
        mib, _ = settings_of(store)
        assert mib > 256  # 80% of the machine's RAM
    finally:
        store.close_sync()


@pytest.mark.parametrize("on_disk", [False, True])
def test_a_query_bigger_than_the_limit_spills_and_answers(tmp_path: Path, on_disk: bool) -> None:
    # 3,000,000 groups need far more than 32 MB of hash table: DuckDB must spill, not fail
    store = AnalyticsStore(tmp_path / "a.duckdb" if on_disk else ":memory:", memory_limit="32MB", threads=1)
    store.open_sync()
    try:
        assert store.connection.execute(BIG_AGGREGATE).fetchall() == [(3_000_000, 6_000_000)]
        if not on_disk:  # an in-memory store spills into its own scratch directory
            [(temp,)] = store.connection.execute("SELECT current_setting('temp_directory')").fetchall()
            assert Path(temp) == store.scratch_dir
    finally:
        store.close_sync()


def test_an_unreadable_limit_is_refused_with_the_setting_named(tmp_path: Path) -> None:
    with pytest.raises(ValidationError, match="duckdb_memory_limit"):
        Settings(duckdb_memory_limit="lots")
    with pytest.raises(ValidationError, match="duckdb_threads"):
        Settings(duckdb_threads=0)
    store = AnalyticsStore(tmp_path / "a.duckdb", memory_limit="lots")
    with pytest.raises(StoreError, match="memory_limit"):
        store.open_sync()


def test_serve_and_consume_open_the_store_with_the_settings(tmp_path: Path) -> None:
    default = build_pipeline(Settings(data_dir=tmp_path / "d1"))
    assert default.store.config == {"memory_limit": "128MB", "max_temp_directory_size": "4GB"}
    tuned = build_pipeline(Settings(data_dir=tmp_path / "d2", duckdb_memory_limit="1GB", duckdb_threads=1))
    assert tuned.store.config == {"memory_limit": "1GB", "threads": 1, "max_temp_directory_size": "4GB"}


def test_queries_spill_at_most_max_spill_to_disk() -> None:
    """DuckDB lets queries spill up to 90% of the free disk, the disk the event log is on: an
    analyst's query wrote 5.6 GB in 25 s in a review."""
    from analytics.store import MAX_SPILL, AnalyticsStore

    store = AnalyticsStore()
    store.open_sync()
    try:
        (limit,) = store.connection.execute("SELECT current_setting('max_temp_directory_size')").fetchone() or ("",)
    finally:
        store.close_sync()
    assert MAX_SPILL == "4GB" and limit == "3.7 GiB"
