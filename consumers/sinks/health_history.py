"""The health-history sink: provider health over time, projected from the usage events into
DuckDB's ``provider_health_history`` (queryable with SQL next to ``usage_facts``).

It runs the same :class:`~gateway.health.view.HealthView` the gateways route on, with event time
as its clock (``now`` = the latest ``created_at`` seen), and writes a row per
(provider, model, window_end):

- at each **transition** (circuit closed/open/half_open, state healthy/degraded/down) of a
  provider (``model = '*'``) or a provider+model: ``reason`` says what changed and why;
- at each **snapshot** boundary (every ``snapshot_seconds`` of event time, aligned to multiples
  of it since the epoch) for every key with attempts in its window: ``reason`` is NULL.

A boundary is written once an event after it arrives. Idempotent: rows are upserted on their
key, so a redelivered batch rewrites the same values (the view also skips event ids it has
seen). Rows computed while the store was unavailable are kept and written with the next
successful batch. The view lives in memory: after a restart the first window is computed from
the events read since then (the rows of that first minute may under-count until the window
refills); ``reset`` + replay from the beginning rebuilds the whole history exactly.

The table is created by analytics/migrations/0002_provider_health_history.sql.
"""

from __future__ import annotations

import asyncio
import os
import tempfile
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path

import duckdb
import orjson

from analytics.store import AnalyticsStore, empty_tables, transaction
from consumers.sinks.base import SinkError, latest_by_id
from gateway.events import UsageEvent
from gateway.health.config import HealthSettings
from gateway.health.transitions import (
    ALL_MODELS,
    HealthHistoryRow,
    HealthTransition,
    history_row,
    merge_rows,
    transition_rows,
)
from gateway.health.view import HealthView

TABLE = "provider_health_history"

COLUMNS = (
    "provider", "model", "window_end", "window_seconds", "attempts", "failures", "rate_limited", "timeouts",
    "p50_ms", "p95_ms", "p50_ttft_ms", "state", "circuit", "reason",
)  # fmt: skip
_KEY = ("provider", "model", "window_end")
_UPSERT_TAIL = (
    " ON CONFLICT (provider, model, window_end) DO UPDATE SET "
    + ", ".join(f"{c} = excluded.{c}" for c in COLUMNS if c not in _KEY and c != "reason")
    + f", reason = coalesce(excluded.reason, {TABLE}.reason)"
)
#: the most rows written as one parameterised VALUES list (see write_rows)
VALUES_ROWS = 48
_TYPES = {
    "provider": "VARCHAR", "model": "VARCHAR", "window_end": "TIMESTAMPTZ", "window_seconds": "DOUBLE",
    "attempts": "BIGINT", "failures": "BIGINT", "rate_limited": "BIGINT", "timeouts": "BIGINT", "p50_ms": "DOUBLE",
    "p95_ms": "DOUBLE", "p50_ttft_ms": "DOUBLE", "state": "VARCHAR", "circuit": "VARCHAR", "reason": "VARCHAR",
}  # fmt: skip
_UPSERT_FROM_FILE = (
    f"INSERT INTO {TABLE} ({', '.join(COLUMNS)}) SELECT {', '.join(COLUMNS)} FROM read_json($1, format = 'array', "
    "records = true, columns = {" + ", ".join(f"'{c}': '{_TYPES[c]}'" for c in COLUMNS) + "})" + _UPSERT_TAIL
)
#: errors in our own SQL or rows (a bug, or the migration is missing): not retried
_BUGS: tuple[type[duckdb.Error], ...] = (
    duckdb.CatalogException,
    duckdb.BinderException,
    duckdb.ParserException,
    duckdb.DataError,
    duckdb.IntegrityError,
)
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
#: events applied to the view between two turns of the event loop (~8 µs each). In the embedded
#: ``serve`` this sink shares the loop with the gateway's requests. A live batch (half a second
#: of traffic, hundreds to thousands of events) applied in one go held every request behind it
#: for 10 to 20 ms; and a request waits for the loop at each of its 4 or 5 awaits, so it pays a
#: slice several times over. Embedded gateway under wrk, json, A/B in one run (with
#: DECODE_SLICE the same): c=1 p99 10 ms with slices of 128, 6.6 with 64, 5.1 to 5.5 with 32;
#: but the finer the slices, the less work each loop turn batches at c=32: server CPU per
#: request +5% with 32 against 64 or 128. 64 keeps the CPU and most of the p99 gain.
APPLY_SLICE = 64


class HealthHistorySink:
    name = "health_history"

    def __init__(
        self,
        store: AnalyticsStore,
        config: HealthSettings | None = None,
        *,
        snapshot_seconds: float | None = None,
    ) -> None:
        self._store = store
        self._config = config or HealthSettings()
        self._interval = timedelta(seconds=snapshot_seconds or self._config.window_seconds)
        self._window = timedelta(seconds=self._config.window_seconds)
        self._pending: dict[tuple[str, str, datetime], HealthHistoryRow] = {}
        self._fresh_view()

    def _fresh_view(self) -> None:
        self._now: datetime = _EPOCH
        self._next_snapshot: datetime | None = None
        self._view = HealthView(
            self._config, clock=lambda: self._now, listeners=[self._on_transition], log_transitions=False
        )

    # --- Sink -------------------------------------------------------------------------------------
    async def start(self) -> None:
        try:
            await self._store.open()
        except duckdb.Error as e:
            raise SinkError(self.name, f"cannot open {self._store.path}: {e}") from e

    async def apply(self, events: Sequence[UsageEvent]) -> None:
        ordered = sorted(latest_by_id(events), key=lambda e: (e.created_at, e.event_id))
        for start in range(0, len(ordered), APPLY_SLICE):
            if start:
                await asyncio.sleep(0)  # see APPLY_SLICE
            for event in ordered[start : start + APPLY_SLICE]:
                self._advance(event.created_at)
                self._view.apply(event)
        if self._pending:
            rows = list(self._pending.values())
            await self._execute(lambda conn: write_rows(conn, rows, self._store.scratch_dir))
            self._pending.clear()

    async def reset(self) -> None:
        await self._execute(_empty)
        self._pending.clear()
        self._fresh_view()

    async def close(self) -> None:
        return None  # the store belongs to whoever opened it

    # --- event time -----------------------------------------------------------------------------
    def _advance(self, t: datetime) -> None:
        """Move the clock to ``t`` (never back), writing the snapshot boundaries passed on the way."""
        if self._next_snapshot is None:
            self._next_snapshot = _boundary_after(t, self._interval)
        # the boundaries before ``t`` have no event after the last one (self._now): past one
        # window after it, each would repeat the last (an open circuit, nothing in the window).
        # Written, a 60-day quiet spell behind an open circuit made 86,403 rows in one go (4 GB)
        # and a far-future stamp an endless loop
        if self._next_snapshot < t:  # rarely: once a snapshot interval (not per event)
            quiet_after = self._now + self._window
            while self._next_snapshot < t:
                self._now = max(self._now, self._next_snapshot)
                wrote = self._snapshot()
                self._next_snapshot += self._interval
                if not wrote or self._next_snapshot > quiet_after:  # idle: jump over the empty boundaries
                    self._next_snapshot = max(self._next_snapshot, _boundary_after(t, self._interval))
        self._now = max(self._now, t)

    def _snapshot(self) -> bool:
        wrote = False
        for name, health in self._view.snapshot().items():
            if health.stats.attempts or health.circuit != "closed":
                self._add(history_row(name, None, health.stats, health.state, health.circuit))
                wrote = True
            for model in health.models.values():
                # a model named "*" (model names are the clients'): its rows would overwrite the
                # provider's, which are keyed by that model name (ALL_MODELS); it has none
                if model.stats.attempts and model.model != ALL_MODELS:
                    self._add(history_row(name, model.model, model.stats, model.state, None))
                    wrote = True
        return wrote

    def _on_transition(self, transition: HealthTransition) -> None:
        for row in transition_rows([transition]):
            self._add(row)

    def _add(self, row: HealthHistoryRow) -> None:
        self._pending[row.key] = merge_rows(self._pending.get(row.key), row)

    async def _execute(self, fn: Callable[[duckdb.DuckDBPyConnection], object]) -> None:
        try:
            await self._store.run(fn)
        except _BUGS:
            raise
        except duckdb.Error as e:
            raise SinkError(self.name, str(e)) from e


def write_rows(
    conn: duckdb.DuckDBPyConnection, rows: Sequence[HealthHistoryRow], scratch_dir: str | Path | None = None
) -> None:
    """Upsert ``rows`` (distinct keys) in one statement: a parameterised ``VALUES`` list for a few
    (DuckDB binds its parameters at about 250 µs of CPU a row), a JSON file read by ``read_json``
    for more (about 11 ms a statement, then 5 to 13 µs a row). A day of sparse history replayed
    or caught up makes a row per provider and model every minute: 2,874 rows from 60,000 events
    288 ms apart took 0.66 s of CPU as one ``VALUES`` list, 11 µs an event, more than the
    health view itself. ``scratch_dir``: where the store may read files (``AnalyticsStore``'s)."""
    if not rows:
        return
    if len(rows) <= VALUES_ROWS or scratch_dir is None:
        placeholders = "(" + ", ".join("?" for _ in COLUMNS) + ")"
        values = ", ".join(placeholders for _ in rows)
        params: list[object] = []
        for row in rows:
            params.extend(getattr(row, column) for column in COLUMNS)
        conn.execute(f"INSERT INTO {TABLE} ({', '.join(COLUMNS)}) VALUES {values}{_UPSERT_TAIL}", params)
        return
    payload = orjson.dumps([{column: getattr(row, column) for column in COLUMNS} for row in rows])
    fd, path = tempfile.mkstemp(prefix="health-rows-", suffix=".json", dir=scratch_dir)
    try:
        with os.fdopen(fd, "wb") as file:
            file.write(payload)
        conn.execute(_UPSERT_FROM_FILE, [path])
    finally:
        os.unlink(path)


def _empty(conn: duckdb.DuckDBPyConnection) -> None:
    with transaction(conn):
        empty_tables(conn, TABLE)


def _boundary_after(t: datetime, interval: timedelta) -> datetime:
    """The first multiple of ``interval`` since the epoch that is >= ``t``."""
    steps = -((_EPOCH - t) // interval)  # ceil((t - epoch) / interval)
    return _EPOCH + steps * interval
