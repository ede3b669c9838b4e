"""The DuckDB sink: every event field into ``usage_facts``, upserted on ``event_id``.

Fast path (no pandas, no Arrow): pydantic serialises the batch to one JSON array (in Rust),
the bytes go to a scratch file, and one ``INSERT ... SELECT ... FROM read_json(...)
ON CONFLICT`` statement parses and applies them inside DuckDB, with the column types given
(nothing is sniffed). Measured with ``python -m tests.bench.sinks --compare`` (100k events into
a file-backed store, 2 shared cores), batches of 5,000: ~60k events/s inserted, ~100k/s
re-delivered; batches of 10,000: ~80k/s. The same SQL over ``from_json`` of one VARCHAR
parameter: ~50k/s; binding Python lists per column: ~25k/s; ``executemany``: ~150/s.
Money travels as decimal text and is cast to DECIMAL(20,10) by DuckDB: exact.

The store (the DuckDB connection) is borrowed, not owned: whoever created it closes it.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path

import duckdb
from pydantic import TypeAdapter

from analytics.store import AnalyticsStore
from consumers.sinks.base import RejectedEvents, SinkError, latest_by_id
from gateway.events import UsageEvent

#: usage_facts columns, one per UsageEvent field, with the type ``from_json`` parses them as
#: (money is parsed as text, then cast to DECIMAL exactly)
FACT_COLUMNS: dict[str, str] = {
    "event_id": "VARCHAR",
    "schema_version": "INTEGER",
    "request_id": "VARCHAR",
    "attempt": "INTEGER",
    "created_at": "TIMESTAMPTZ",
    "tenant_id": "VARCHAR",
    "api_key_id": "VARCHAR",
    "endpoint": "VARCHAR",
    "stream": "BOOLEAN",
    "provider": "VARCHAR",
    "requested_model": "VARCHAR",
    "provider_model": "VARCHAR",
    "served_model": "VARCHAR",
    "outcome": "VARCHAR",
    "http_status": "INTEGER",
    "error_code": "VARCHAR",
    "error_message": "VARCHAR",
    "latency_ms": "DOUBLE",
    "ttft_ms": "DOUBLE",
    "prompt_tokens": "BIGINT",
    "completion_tokens": "BIGINT",
    "cached_tokens": "BIGINT",
    "cache_creation_tokens": "BIGINT",
    "reasoning_tokens": "BIGINT",
    "total_tokens": "BIGINT",
    "cost_usd": "VARCHAR",
    "price_version": "VARCHAR",
    "billable": "BOOLEAN",
    "incomplete": "BOOLEAN",
    "gateway_instance": "VARCHAR",
}
_CASTS = {"cost_usd": "DECIMAL(20, 10)"}
#: columns a re-delivered event may change: the cost, after a replay with a new price table
_REPRICED = ("cost_usd", "price_version")

_COLUMNS = "{" + ", ".join(f"'{name}': '{kind}'" for name, kind in FACT_COLUMNS.items()) + "}"
_SELECT = ", ".join(f"e.{name}::{_CASTS[name]}" if name in _CASTS else f"e.{name}" for name in FACT_COLUMNS)
_SELECT_AS = ", ".join(
    f"e.{name}::{_CASTS[name]} AS {name}" if name in _CASTS else f"e.{name}" for name in FACT_COLUMNS
)
_FACTS = ", ".join(FACT_COLUMNS)
_DISTINCT = " OR ".join(f"usage_facts.{c} IS DISTINCT FROM excluded.{c}" for c in _REPRICED)

#: the UTC calendar day of an attempt (as in v_cost_daily: independent of the session time zone)
_DAY = "CAST(timezone('UTC', {}) AS DATE)"
#: the batch file, parsed once into a temporary table (its columns are usage_facts' columns)
LOAD_BATCH = (
    f"CREATE OR REPLACE TEMP TABLE usage_batch AS SELECT {_SELECT_AS} "
    f"FROM read_json($1, format = 'array', records = true, columns = {_COLUMNS}) AS e"
)
#: new events are inserted; an existing event whose cost differs is "updated" to its own values
#: (a no-op), so that RETURNING gives, for each row it touched, the cost stored *before* this batch:
#: the batch's own cost for an inserted row, the old cost for a re-priced one. Unchanged
#: re-deliveries are not returned. The ART index on event_id finds the existing rows (no scan).
INSERT_NEW = (
    f"INSERT INTO usage_facts ({_FACTS}) SELECT {_FACTS} FROM usage_batch "
    "ON CONFLICT (event_id) DO UPDATE SET cost_usd = usage_facts.cost_usd "
    f"WHERE {_DISTINCT} RETURNING event_id, CAST(cost_usd AS VARCHAR), price_version"
)
#: what INSERT_NEW returned, back in DuckDB (``before``: the stored cost, NULL for unpriced)
LOAD_TOUCHED = (
    "CREATE OR REPLACE TEMP TABLE usage_touched AS "
    "SELECT unnest($1::VARCHAR[]) AS event_id, CAST(unnest($2::VARCHAR[]) AS DECIMAL(20, 10)) AS cost_before, "
    "unnest($3::VARCHAR[]) AS price_version_before"
)
#: the touched rows the batch re-prices (the others were inserted by INSERT_NEW)
REPRICED_IDS = (
    "SELECT t.event_id FROM usage_touched t JOIN usage_batch b USING (event_id) "
    "WHERE b.cost_usd IS DISTINCT FROM t.cost_before OR b.price_version IS DISTINCT FROM t.price_version_before"
)
#: apply the new cost of the re-priced rows (found through the ART index, like INSERT_NEW);
#: RETURNING gives the stored row after the update: its rollup key and its new cost
REPRICE = (
    f"INSERT INTO usage_facts ({_FACTS}) SELECT {_FACTS} FROM usage_batch "
    "WHERE event_id IN (SELECT unnest($1::VARCHAR[])) "
    "ON CONFLICT (event_id) DO UPDATE SET "
    + ", ".join(f"{c} = excluded.{c}" for c in _REPRICED)
    + f" WHERE {_DISTINCT} RETURNING event_id, tenant_id, "
    + _DAY.format("created_at")
    + ", provider, "
    "coalesce(served_model, provider_model), billable, total_tokens"
)
LOAD_REPRICED = (
    "CREATE OR REPLACE TEMP TABLE usage_repriced AS SELECT unnest($1::VARCHAR[]) AS event_id, "
    "unnest($2::VARCHAR[]) AS tenant_id, unnest($3::DATE[]) AS day, unnest($4::VARCHAR[]) AS provider, "
    "unnest($5::VARCHAR[]) AS model, unnest($6::BOOLEAN[]) AS billable, unnest($7::BIGINT[]) AS total_tokens"
)

_SUMS = ("calls", "incomplete_calls", "prompt_tokens", "completion_tokens", "tokens", "cost_usd", "unpriced_calls",
         "unpriced_tokens")  # fmt: skip
_ADD = "ON CONFLICT (tenant_id, day, provider, model) DO UPDATE SET " + ", ".join(
    f"{c} = usage_daily.{c} + excluded.{c}" for c in _SUMS
)
#: usage_daily += the billable rows INSERT_NEW inserted (stored as in the batch)
DAILY_INSERTED = f"""
INSERT INTO usage_daily (tenant_id, day, provider, model, {", ".join(_SUMS)})
SELECT b.tenant_id, {_DAY.format("b.created_at")}, b.provider,
       coalesce(b.served_model, b.provider_model),
       count(*), count(*) FILTER (WHERE b.incomplete), sum(b.prompt_tokens), sum(b.completion_tokens),
       sum(b.total_tokens), coalesce(sum(b.cost_usd), 0), count(*) FILTER (WHERE b.cost_usd IS NULL),
       coalesce(sum(b.total_tokens) FILTER (WHERE b.cost_usd IS NULL), 0)
FROM usage_batch b JOIN usage_touched t USING (event_id)
WHERE b.billable
  AND b.cost_usd IS NOT DISTINCT FROM t.cost_before AND b.price_version IS NOT DISTINCT FROM t.price_version_before
GROUP BY ALL
{_ADD}
"""
#: usage_daily += the cost differences of the re-priced rows, under their stored rollup key
DAILY_REPRICED = f"""
INSERT INTO usage_daily (tenant_id, day, provider, model, {", ".join(_SUMS)})
SELECT r.tenant_id, r.day, r.provider, r.model, 0, 0, 0, 0, 0,
       sum(coalesce(b.cost_usd, 0) - coalesce(t.cost_before, 0)),
       sum(CAST(b.cost_usd IS NULL AS INTEGER) - CAST(t.cost_before IS NULL AS INTEGER)),
       sum(r.total_tokens * (CAST(b.cost_usd IS NULL AS INTEGER) - CAST(t.cost_before IS NULL AS INTEGER)))
FROM usage_repriced r JOIN usage_touched t USING (event_id) JOIN usage_batch b USING (event_id)
WHERE r.billable
GROUP BY ALL
{_ADD}
"""
#: usage_daily recomputed from all the facts (the aggregate migration 0005 backfills with);
#: the incremental maintenance above must always equal it
REBUILD_DAILY = f"""
INSERT INTO usage_daily (tenant_id, day, provider, model, {", ".join(_SUMS)})
SELECT tenant_id, {_DAY.format("created_at")}, provider, coalesce(served_model, provider_model),
       count(*), count(*) FILTER (WHERE incomplete), coalesce(sum(prompt_tokens), 0),
       coalesce(sum(completion_tokens), 0), coalesce(sum(total_tokens), 0), coalesce(sum(cost_usd), 0),
       count(*) FILTER (WHERE cost_usd IS NULL), coalesce(sum(total_tokens) FILTER (WHERE cost_usd IS NULL), 0)
FROM usage_facts
WHERE billable
GROUP BY ALL
"""
_DROP_TEMP = "DROP TABLE IF EXISTS usage_batch; DROP TABLE IF EXISTS usage_touched; DROP TABLE IF EXISTS usage_repriced"


def upsert_batch(conn: duckdb.DuckDBPyConnection, path: str) -> None:
    """Upsert the batch file ``path`` into usage_facts and keep usage_daily equal to their
    aggregate, in one transaction (rolled back whole on any error)."""
    conn.execute("BEGIN TRANSACTION")
    try:
        conn.execute(LOAD_BATCH, [path])
        touched = conn.execute(INSERT_NEW).fetchall()
        if touched:
            conn.execute(LOAD_TOUCHED, [list(column) for column in zip(*touched, strict=True)])
            repriced = [row[0] for row in conn.execute(REPRICED_IDS).fetchall()]
            if repriced:
                stored = conn.execute(REPRICE, [repriced]).fetchall()
                conn.execute(LOAD_REPRICED, [list(column) for column in zip(*stored, strict=True)])
                conn.execute(DAILY_REPRICED)
            if len(repriced) < len(touched):
                conn.execute(DAILY_INSERTED)
        conn.execute(_DROP_TEMP)
        conn.execute("COMMIT")
    except BaseException:
        _rollback(conn)
        raise


def reset_facts(conn: duckdb.DuckDBPyConnection) -> None:
    """Empty usage_facts and usage_daily, in one transaction."""
    conn.execute("BEGIN TRANSACTION")
    try:
        conn.execute("DELETE FROM usage_facts")
        conn.execute("DELETE FROM usage_daily")
        conn.execute("COMMIT")
    except BaseException:
        _rollback(conn)
        raise


def _rollback(conn: duckdb.DuckDBPyConnection) -> None:
    with contextlib.suppress(duckdb.Error):  # e.g. no transaction left to roll back
        conn.execute("ROLLBACK")


#: the upsert of the facts alone, as one statement (no rollup): kept for tests/bench/sinks.py
UPSERT = (
    f"INSERT INTO usage_facts ({_FACTS}) "
    f"SELECT {_SELECT} FROM read_json($1, format = 'array', records = true, columns = {_COLUMNS}) AS e "
    "ON CONFLICT (event_id) DO UPDATE SET "
    + ", ".join(f"{c} = excluded.{c}" for c in _REPRICED)
    + f" WHERE {_DISTINCT}"
)

_BATCH = TypeAdapter(list[UsageEvent])

#: DuckDB errors caused by the data itself; any other DuckDB error is an availability problem
_DATA_ERRORS: tuple[type[duckdb.Error], ...] = (duckdb.DataError, duckdb.IntegrityError)


class DuckDBSink:
    name = "duckdb"

    def __init__(self, store: AnalyticsStore, *, scratch_dir: str | Path | None = None) -> None:
        """``scratch_dir``: where batch files are written (and removed at once); default: the
        store's private ``scratch_dir``, the one place the sandboxed store may read files from
        (another directory must be among the store's ``allowed_directories``)."""
        self._store = store
        self._scratch = None if scratch_dir is None else str(scratch_dir)

    async def start(self) -> None:
        try:
            await self._store.open()
        except duckdb.Error as e:
            raise SinkError(self.name, f"cannot open {self._store.path}: {e}") from e

    async def apply(self, events: Sequence[UsageEvent]) -> None:
        if not events:
            return
        payload = _BATCH.dump_json(latest_by_id(events))
        scratch = self._scratch

        def upsert(conn: duckdb.DuckDBPyConnection) -> None:
            directory = scratch if scratch is not None else self._store.scratch_dir
            fd, path = tempfile.mkstemp(prefix="usage-batch-", suffix=".json", dir=directory)
            try:
                with os.fdopen(fd, "wb") as file:
                    file.write(payload)
                upsert_batch(conn, path)
            finally:
                os.unlink(path)

        await self._run(upsert)

    async def reset(self) -> None:
        await self._run(reset_facts)

    async def close(self) -> None:
        return None  # the store belongs to whoever opened it

    async def _run(self, fn: Callable[[duckdb.DuckDBPyConnection], object]) -> None:
        try:
            await self._store.run(fn)
        except _DATA_ERRORS as e:
            raise RejectedEvents(self.name, str(e)) from e
        except (duckdb.Error, OSError) as e:  # OSError: the scratch file (disk full, ...)
            raise SinkError(self.name, f"{type(e).__name__}: {e}") from e
