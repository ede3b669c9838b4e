"""A DuckDB connection invalidated by a fatal error (a checkpoint on a full disk) is opened
again at the next use; every call failed on it until a restart (a storage review)."""

from __future__ import annotations

from pathlib import Path

import duckdb
import pytest

from analytics.store import AnalyticsStore


async def test_a_store_invalidated_by_a_fatal_error_is_opened_again(tmp_path: Path) -> None:
    store = AnalyticsStore(tmp_path / "analytics.duckdb")
    await store.open()
    try:
        await store.run(
            lambda conn: conn.execute("CREATE TABLE kept (n INTEGER)").execute("INSERT INTO kept VALUES (7)")
        )

        def fatal(conn: duckdb.DuckDBPyConnection) -> None:
            conn.close()  # as DuckDB leaves it: every later call on it fails
            raise duckdb.FatalException("FATAL Error: Failed to create checkpoint: No space left on device")

        with pytest.raises(duckdb.FatalException):
            await store.run(fatal)
        assert await store.fetchall("SELECT n FROM kept") == [(7,)]  # the file, opened again
    finally:
        await store.close()
