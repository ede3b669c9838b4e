"""The DuckDB sink: every event field into ``usage_facts``, upserted on ``event_id``.

Fast path (no pandas, no Arrow): the events' own JSON (the bytes of ``UsageEvent.to_json`` and
of pydantic's list dump) as one array, made by one orjson call over the batch (3.4 -> 2.2 -> 1.6
µs per event), the bytes go to a scratch file, and one ``INSERT ... SELECT ... FROM read_json(...)
ON CONFLICT`` statement parses and applies them inside DuckDB, with the column types given
(nothing is sniffed). Measured with ``python -m tests.bench.sinks --compare`` (100k events into
a file-backed store, 2 shared cores), batches of 5,000: ~60k events/s inserted, ~100k/s
re-delivered; batches of 10,000: ~80k/s. The same SQL over ``from_json`` of one VARCHAR
parameter: ~50k/s; binding Python lists per column: ~25k/s; ``executemany``: ~150/s.
Money travels as decimal text and is cast to DECIMAL(20,10) by DuckDB: exact.

The daily rollup ``usage_daily`` (migration 0005; what v_cost_daily and the cost totals read) is
kept in the same transaction as the facts (``upsert_batch``): new events are inserted with
``ON CONFLICT DO NOTHING RETURNING event_id`` and their billable sums added per (tenant, UTC day,
provider, model) from the batch file; for the events that already existed, the stored rows are
looked up (in the batch's time range first) and only those the batch re-prices change the rollup,
by their cost difference. ``RETURNING`` on ``DO UPDATE`` was not used: it scanned the table.
Cost of the rollup, same benchmark and run, CPU-bound events/s per CPU-second, batches of 5,000:
insert ~80k -> ~60k, re-delivery ~110k -> ~80k, re-pricing ~95k -> ~40k (the file is parsed
twice; re-pricing adds a lookup).

**Plain inserts while the table holds none of the events**: when ``usage_facts`` was empty at
start (or after :meth:`DuckDBSink.reset`), a batch is a plain ``INSERT`` (no ``ON CONFLICT``,
no ``RETURNING``) and the rollup adds the whole batch (``insert_batch``): about 2 µs less
DuckDB CPU per event (``RETURNING`` alone costs that). A plain insert differs from the upsert
only when a row with the same id exists, and then it fails whole (a constraint error): the
transaction is rolled back, the batch is upserted instead, and once the upsert finds rows that
already existed, so is every later batch.

The store (the DuckDB connection) is borrowed, not owned: whoever created it closes it.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable, Sequence
from decimal import Decimal
from pathlib import Path
from typing import Any

import duckdb
import orjson

from analytics.compaction import DayCompactor
from analytics.store import AnalyticsStore, empty_tables, transaction
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
    "cache_creation_1h_tokens": "BIGINT",
    "reasoning_tokens": "BIGINT",
    "total_tokens": "BIGINT",
    "cost_usd": "VARCHAR",
    "price_version": "VARCHAR",
    "billable": "BOOLEAN",
    "incomplete": "BOOLEAN",
    "gateway_instance": "VARCHAR",
    "metadata": "JSON",
}
_CASTS = {"cost_usd": "DECIMAL(20, 10)"}
#: columns a re-delivered event may change: the cost, after a replay with a new price table
_REPRICED = ("cost_usd", "price_version")

_COLUMNS = "{" + ", ".join(f"'{name}': '{kind}'" for name, kind in FACT_COLUMNS.items()) + "}"
_SELECT = ", ".join(f"e.{name}::{_CASTS[name]}" if name in _CASTS else f"e.{name}" for name in FACT_COLUMNS)
_FACTS = ", ".join(FACT_COLUMNS)
_DISTINCT = " OR ".join(f"usage_facts.{c} IS DISTINCT FROM excluded.{c}" for c in _REPRICED)

#: the UTC calendar day of an attempt (as in v_cost_daily: independent of the session time zone)
_DAY = "CAST(timezone('UTC', {}) AS DATE)"
_BATCH_FILE = f"read_json($1, format = 'array', records = true, columns = {_COLUMNS}) AS e"
_INSERT_FROM_FILE = f"INSERT INTO usage_facts ({_FACTS}) SELECT {_SELECT} FROM {_BATCH_FILE}"

#: 0. all the batch, when the table holds none of its events (fails whole on a duplicate id)
INSERT_ALL = _INSERT_FROM_FILE
#: 1. the new events, inserted; RETURNING names them (existing events are left alone here).
#: The ART index on event_id finds the existing rows: nothing is scanned.
INSERT_NEW = f"{_INSERT_FROM_FILE} ON CONFLICT (event_id) DO NOTHING RETURNING event_id"
#: 2. usage_daily += the billable events step 1 inserted (all of the batch, or those of ``$2``)
_SUMS = ("calls", "incomplete_calls", "prompt_tokens", "completion_tokens", "tokens", "cost_usd", "unpriced_calls",
         "unpriced_tokens")  # fmt: skip
_ADD = "ON CONFLICT (tenant_id, day, provider, model) DO UPDATE SET " + ", ".join(
    f"{c} = usage_daily.{c} + excluded.{c}" for c in _SUMS
)
_DAILY_OF_FILE = f"""
INSERT INTO usage_daily (tenant_id, day, provider, model, {", ".join(_SUMS)})
SELECT e.tenant_id, {_DAY.format("e.created_at")}, e.provider, coalesce(e.served_model, e.provider_model),
       count(*), count(*) FILTER (WHERE e.incomplete), sum(e.prompt_tokens), sum(e.completion_tokens),
       sum(e.total_tokens), coalesce(sum(CAST(e.cost_usd AS DECIMAL(20, 10))), 0),
       count(*) FILTER (WHERE e.cost_usd IS NULL), coalesce(sum(e.total_tokens) FILTER (WHERE e.cost_usd IS NULL), 0)
FROM {_BATCH_FILE}
WHERE e.billable @ONLY@
GROUP BY ALL
{_ADD}
"""
DAILY_ALL_INSERTED = _DAILY_OF_FILE.replace("@ONLY@", "")
DAILY_SOME_INSERTED = _DAILY_OF_FILE.replace("@ONLY@", "AND e.event_id IN (SELECT unnest($2::VARCHAR[]))")
#: 3. the batch's events that already existed (``$2``): how many are stored, and for those the
#: batch re-prices, the stored row (old cost, rollup key) and the new cost as DuckDB stores it.
#: ``@RANGE@`` is first the batch's time range (an event's row has the event's created_at, so
#: DuckDB skips every row group outside it: the lookup costs the batch, not the table); if fewer
#: rows than expected are found there, the lookup runs again over the whole table (exact).
_LOOKUP_EXISTING = f"""
SELECT count(*),
       list(struct_pack(id := f.event_id, old := CAST(f.cost_usd AS VARCHAR), new := CAST(e.cost AS VARCHAR),
                        tenant := f.tenant_id, day := {_DAY.format("f.created_at")}, provider := f.provider,
                        model := coalesce(f.served_model, f.provider_model), billable := f.billable,
                        tokens := f.total_tokens))
           FILTER (WHERE f.cost_usd IS DISTINCT FROM e.cost OR f.price_version IS DISTINCT FROM e.price_version)
FROM usage_facts f
JOIN (SELECT e.event_id, CAST(e.cost_usd AS DECIMAL(20, 10)) AS cost, e.price_version FROM {_BATCH_FILE}
      WHERE e.event_id IN (SELECT unnest($2::VARCHAR[]))) e ON f.event_id = e.event_id
WHERE @RANGE@
"""
LOOKUP_EXISTING_IN_RANGE = _LOOKUP_EXISTING.replace("@RANGE@", "f.created_at BETWEEN $3 AND $4")
LOOKUP_EXISTING = _LOOKUP_EXISTING.replace("@RANGE@", "true")
#: 4. the new costs applied (the one-statement upsert: it changes exactly the re-priced rows)
UPSERT = (
    f"{_INSERT_FROM_FILE} ON CONFLICT (event_id) DO UPDATE SET "
    + ", ".join(f"{c} = excluded.{c}" for c in _REPRICED)
    + f" WHERE {_DISTINCT}"
)
#: 5. usage_daily += the cost differences of the re-priced rows, per rollup key
DAILY_REPRICED = f"""
INSERT INTO usage_daily (tenant_id, day, provider, model, {", ".join(_SUMS)})
SELECT unnest($1::VARCHAR[]), unnest($2::DATE[]), unnest($3::VARCHAR[]), unnest($4::VARCHAR[]), 0, 0, 0, 0, 0,
       CAST(unnest($5::VARCHAR[]) AS DECIMAL(38, 10)), unnest($6::BIGINT[]), unnest($7::BIGINT[])
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


def insert_batch(conn: duckdb.DuckDBPyConnection, path: str) -> None:
    """Insert the batch file ``path`` into usage_facts and add it to usage_daily, in one
    transaction. Raises ``duckdb.ConstraintException`` (nothing changed) if any of its events
    is already stored: then :func:`upsert_batch` it."""
    with transaction(conn):
        conn.execute(INSERT_ALL, [path])
        conn.execute(DAILY_ALL_INSERTED, [path])


def upsert_batch(
    conn: duckdb.DuckDBPyConnection, path: str, batch: Sequence[UsageEvent], *, corrects: bool = True
) -> int:
    """Upsert the batch file ``path`` (the distinct events ``batch``) into usage_facts and keep
    usage_daily equal to their aggregate, in one transaction (rolled back whole on any error).
    Live batches (all new) take steps 1 and 2; re-deliveries add step 3; re-pricing 4 and 5.
    ``corrects`` False: the events already stored are left as they are (steps 1 and 2 only).
    Returns how many of the events were already stored."""
    with transaction(conn):
        inserted = [row[0] for row in conn.execute(INSERT_NEW, [path]).fetchall()]
        if len(inserted) == len(batch):
            conn.execute(DAILY_ALL_INSERTED, [path])
            return 0
        if inserted:
            conn.execute(DAILY_SOME_INSERTED, [path, inserted])
        if not corrects:
            return len(batch) - len(inserted)
        new = set(inserted)
        existing = [e for e in batch if e.event_id not in new]
        ids = [e.event_id for e in existing]
        first, last = min(e.created_at for e in existing), max(e.created_at for e in existing)
        found, changed = conn.execute(LOOKUP_EXISTING_IN_RANGE, [path, ids, first, last]).fetchone() or (0, None)
        if found != len(ids):
            found, changed = conn.execute(LOOKUP_EXISTING, [path, ids]).fetchone() or (0, None)
        if changed:
            conn.execute(UPSERT, [path])
            conn.execute(DAILY_REPRICED, _repricing_deltas(changed))
        return len(existing)


def _repricing_deltas(changed: list[dict[str, Any]]) -> list[list[Any]]:
    """Per rollup key: the cost difference (exact, from DuckDB's own decimal text), and the
    change of unpriced calls and tokens, of the billable re-priced rows (the columns of
    DAILY_REPRICED's parameters)."""
    deltas: dict[tuple[Any, ...], list[Any]] = {}
    for row in changed:
        if not row["billable"]:
            continue
        old, new = row["old"], row["new"]
        delta = deltas.setdefault((row["tenant"], row["day"], row["provider"], row["model"]), [Decimal(0), 0, 0])
        delta[0] += (Decimal(new) if new is not None else 0) - (Decimal(old) if old is not None else 0)
        unpriced = (new is None) - (old is None)
        delta[1] += unpriced
        delta[2] += unpriced * row["tokens"]
    keys = list(deltas)
    return [
        [k[0] for k in keys],
        [k[1] for k in keys],
        [k[2] for k in keys],
        [k[3] for k in keys],
        [format(deltas[k][0], "f") for k in keys],
        [deltas[k][1] for k in keys],
        [deltas[k][2] for k in keys],
    ]


def reset_facts(conn: duckdb.DuckDBPyConnection) -> None:
    """Empty usage_facts, usage_daily and the record of rewritten days, in one transaction
    (dropped and made again: ``empty_tables``)."""
    with transaction(conn):
        empty_tables(conn, "usage_facts", "usage_daily", "compacted_days")


def batch_json(events: Sequence[UsageEvent]) -> bytes:
    """The batch file: a JSON array of the events' own JSON (``UsageEvent.to_json``, the bytes of
    pydantic's list dump), made by one orjson call over the events' field dicts (money as the
    same decimal text): 2.6 -> 1.6 µs per event."""
    return orjson.dumps([event.__dict__ for event in events], default=_decimal_text, option=orjson.OPT_UTC_Z)


def _decimal_text(value: object) -> str:
    if isinstance(value, Decimal):
        return format(value, "f")  # as UsageEvent.to_json and its field serializer write money
    raise TypeError(f"{type(value).__name__} is not a usage event field type")


#: DuckDB errors caused by the data itself; any other DuckDB error is an availability problem
_DATA_ERRORS: tuple[type[duckdb.Error], ...] = (duckdb.DataError, duckdb.IntegrityError)


class DuckDBSink:
    name = "duckdb"

    def __init__(self, store: AnalyticsStore, *, scratch_dir: str | Path | None = None, corrects: bool = True) -> None:
        """``scratch_dir``: where batch files are written (and removed at once); default: the
        store's private ``scratch_dir``, the one place the sandboxed store may read files from
        (another directory must be among the store's ``allowed_directories``). ``corrects``: an
        event already stored takes the batch's cost (a replay's sinks); False: it is kept as
        stored (the live projector's, see ``consumers.sinks.base``)."""
        self._store = store
        self._corrects = corrects
        self._scratch = None if scratch_dir is None else str(scratch_dir)
        self._compactor = DayCompactor()
        #: plain inserts: the table holds none of the events yet (see the module docstring)
        self._direct = False

    @property
    def direct(self) -> bool:
        """Batches go in as plain inserts (the table held none of the events so far)."""
        return self._direct

    async def start(self) -> None:
        try:
            await self._store.open()
            rows = await self._store.fetchall("SELECT NOT EXISTS (SELECT 1 FROM usage_facts)")
        except duckdb.Error as e:
            raise SinkError(self.name, f"cannot open {self._store.path}: {e}") from e
        self._direct = bool(rows[0][0])

    async def apply(self, events: Sequence[UsageEvent]) -> None:
        if not events:
            return
        batch = latest_by_id(events)
        payload = batch_json(batch)
        scratch = self._scratch

        def upsert(conn: duckdb.DuckDBPyConnection) -> None:
            directory = scratch if scratch is not None else self._store.scratch_dir
            fd, path = tempfile.mkstemp(prefix="usage-batch-", suffix=".json", dir=directory)
            try:
                with os.fdopen(fd, "wb") as file:
                    file.write(payload)
                self._write(conn, path, batch)
            finally:
                os.unlink(path)
            # a day is over: rewrite it tenant by tenant (analytics/compaction.py)
            if (window := self._compactor.due([e.created_at for e in batch])) is not None:
                self._compactor.run(conn, window)

        await self._run(upsert)

    def _write(self, conn: duckdb.DuckDBPyConnection, path: str, batch: Sequence[UsageEvent]) -> None:
        if self._direct:
            try:
                insert_batch(conn, path)
                return
            except duckdb.ConstraintException:
                pass  # some event is stored already (or a NOT NULL refusal, which the upsert repeats)
        if upsert_batch(conn, path, batch, corrects=self._corrects):
            self._direct = False

    async def reset(self) -> None:
        await self._run(reset_facts)
        self._compactor = DayCompactor()
        self._direct = True

    async def close(self) -> None:
        return None  # the store belongs to whoever opened it

    async def _run(self, fn: Callable[[duckdb.DuckDBPyConnection], object]) -> None:
        try:
            await self._store.run(fn)
        except _DATA_ERRORS as e:
            raise RejectedEvents(self.name, str(e)) from e
        except (duckdb.Error, OSError) as e:  # OSError: the scratch file (disk full, ...)
            raise SinkError(self.name, f"{type(e).__name__}: {e}") from e
