"""Replay: rebuild the projections (DuckDB, Postgres ``"LLMUsage"``, health history) from the log,
optionally re-costing history with the current price table (backfill).

What it does, batch by batch (10,000 records)::

    read (own reader, no group) -> decode -> [reprice] -> look up what DuckDB holds for those ids
        -> apply to every sink (the projector's sinks, idempotent upserts) -> add to the diff

Semantics:

- **The log is immutable.** Events are never rewritten; the cost and ``price_version`` an event
  recorded at call time stay on the log for good. Repricing is a correction of the projections:
  the stores hold the new cost and the version of the price table that produced it
  (``usage_facts.price_version`` / ``"LLMUsage"."priceVersion"``).
- **Costs:** with ``reprice`` every event is re-costed by :func:`gateway.pricing.reprice.price_event`
  (the gateway's rules, at the event's ``created_at``): unpriced events become priced once a price
  exists; failed / non-billable attempts keep cost 0; a billable attempt without token counts
  stays unpriced; a recorded cost is never replaced by "unpriced".
  Without ``reprice`` the stores get the costs recorded on the log. **A later replay without
  --reprice therefore restores the recorded costs** (the summary warns when it does). That is
  deliberate: a projection is a pure function of the log, or of the log and the price table named
  by its version; nothing else is hidden state. The reprice decision is persisted where it
  belongs, in the operator's price file (which the gateway also prices new calls with): run
  rebuilds as ``replay --full --reprice`` to keep the corrections.
- **Idempotent.** Sinks upsert on the event id and rewrite only the cost columns, and only when
  they differ; replaying the same range with the same prices twice changes nothing the second
  time (``changed`` 0, empty diff). DuckDB rows already holding the replayed values are not even
  sent again; the other sinks get every event (their state is not looked up).
- **Range.** From the beginning (default), from a time (``since``) or from a log position, up to
  the last record on the log when the replay starts (see :mod:`consumers.replay_sources`). The
  replay reads with its own reader and commits nothing: the live projector's position is never
  touched.
- **The live projector** never changes an event the stores hold (its sinks are built with
  ``corrects=False``, see ``consumers.sinks.base``): when it projects, after the replay, events
  the replay already wrote (a group behind, a redelivery after a crash), they keep the replay's
  costs. Run through a service (``POST /v1/admin/replay``), the replay first waits
  (``wait_for_live`` seconds) until the service's projector has committed the whole range; the
  report's ``liveBehind`` says how many it had not.
- **Health history** is rebuilt by ``full`` (which empties it first) or when asked
  (``health=True``), and only from the beginning: a fresh health view needs the whole stream in
  order. Otherwise a replay leaves it alone: it does not depend on prices, the live projector
  keeps it, and the health view is by far the slowest sink (~10k events/s against ~30k for the
  rest of a replay).
- **full** empties every sink first (DuckDB facts, the health history; in Postgres
  ``"LLMUsage"``, which other gateways' logs may share, the rows of the events this DuckDB store
  held), then replays the whole log as it is once they are empty (so nothing a live projector
  wrote meanwhile is lost). Events the stores hold and the log does not (another log's, after a
  switch between the embedded log and Kafka; past Kafka's retention) make it refuse before
  anything changes, unless ``drop_missing``: then they are gone and listed as removed. Readers
  see incomplete totals until it ends. Before emptying anything it marks the DuckDB store
  (``rebuild_pending``) and clears the mark at the end: a rebuild cut short (a crash, a kill) is
  run again by the process that owns the store when it starts, and any other
  replay warns meanwhile. Not with ``since``/position.
- **dry_run** reads, reprices and diffs, writes nothing.
- **The diff** (per tenant and model; exact ``Decimal``, at the stores' scale of 10 decimals):
  old = the cost DuckDB held for each replayed event before (a snapshot of it with ``full``),
  new = the cost applied. DuckDB is the reference: Postgres receives the same rows.
- **Limits.** A replay sees what the log still holds: Kafka deletes records older than the
  topic's ``retention.ms`` (7 days by default; set it to -1 on the usage topic to keep history
  re-costable). Undecodable records are skipped (the live projector dead-letters them); events a
  sink refuses are skipped and counted. With several ``consume`` members each owning a DuckDB
  file, a replay through one of them writes the whole log into that one file.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from decimal import ROUND_HALF_UP, Decimal
from pathlib import Path
from typing import Any

import duckdb
import orjson

from analytics.store import AnalyticsStore
from consumers import catch_up
from consumers.replay_report import STORE_SCALE, KeyDiff, ProgressBar, ReplayReport, render_report, store_money
from consumers.replay_sources import ReplayRangeError, ReplaySource, ReplayStart
from consumers.sinks.base import DistinctEvents, SharedSink, Sink, SinkError
from gateway.event_json import UNDECODABLE, decode_event
from gateway.events import UsageEvent
from gateway.pricing.base import PriceBook, format_usd
from gateway.pricing.book import CompositePriceBook, book_from_document, load_price_book
from gateway.pricing.pricefile import price_document
from gateway.pricing.reprice import price_events

log = logging.getLogger(__name__)

__all__ = [
    "KeyDiff",
    "PendingRebuild",
    "ProgressBar",
    "ReplayError",
    "ReplayOptions",
    "ReplayReport",
    "Replayer",
    "decode",
    "pending_rebuild",
    "render_report",
    "store_money",
]

REFERENCE_SINK = "duckdb"
#: the marker of a full rebuild in progress (analytics/migrations/0007_rebuild_pending.sql)
REBUILD_TABLE = "rebuild_pending"
HEALTH_SINK = "health_history"

Progress = Callable[[int, int], None]
Sleep = Callable[[float], Awaitable[None]]


def rebuild_prices(book: PriceBook | None) -> str | None:
    """What a rebuild's mark records of the prices it reprices with: ``{"file": <the price file
    as a document>}``, or ``{"file": null}`` for the built-in tables alone; None for a book of
    another kind (the owner's configured file is used then)."""
    if not isinstance(book, CompositePriceBook):
        return None
    prices = book.file_prices
    return json.dumps({"file": None if prices is None else price_document(prices)})


@dataclass(frozen=True, slots=True)
class PendingRebuild:
    """A full rebuild that began and has not ended: the stores miss part of the log."""

    started_at: datetime
    reprice: bool
    #: the mark's record of its prices (:func:`rebuild_prices`), as stored
    prices: str | None

    def options(self) -> ReplayOptions:
        # the mark is set once the rebuild passed its check of the stored events the log does
        # not hold (or was told to drop them): running it again drops what that one would have
        return ReplayOptions(full=True, reprice=self.reprice, drop_missing=True)

    def price_book(self, configured: Path | None) -> PriceBook | None:
        """The book the rebuild began with. Raises ``PriceFileError`` or ``ValueError`` when the
        mark's prices no longer read (a hand edit, a stricter version)."""
        if not self.reprice:
            return None
        if self.prices is None:
            return load_price_book(configured)
        doc = json.loads(self.prices)
        if not isinstance(doc, dict) or "file" not in doc:
            raise ValueError(f"the mark's prices are not a price record: {self.prices[:200]!r}")
        return book_from_document(doc["file"], source="the rebuild's price file")


async def pending_rebuild(store: AnalyticsStore) -> PendingRebuild | None:
    rows = await store.fetchall(f"SELECT started_at, reprice, prices FROM {REBUILD_TABLE} LIMIT 1")
    if not rows:
        return None
    started_at, reprice, prices = rows[0]
    return PendingRebuild(started_at, bool(reprice), prices)


class ReplayError(Exception):
    """The replay cannot run as asked, or stopped; nothing is lost: run it again."""


@dataclass(frozen=True, slots=True)
class ReplayOptions:
    since: datetime | None = None
    from_position: str | None = None
    reprice: bool = False
    full: bool = False
    dry_run: bool = False
    #: rebuild the health history too; None: when it is useful (see :meth:`rebuilds_health`)
    health: bool | None = None
    #: ``full`` removes the stored events the log does not hold (without it, it refuses to)
    drop_missing: bool = False

    @property
    def rebuilds_health(self) -> bool:
        """The health history is rebuilt by ``full`` (which empties it) or when asked; only ever
        from the beginning."""
        if self.dry_run or not self.start.from_beginning:
            return False
        return self.health if self.health is not None else self.full

    @property
    def start(self) -> ReplayStart:
        return ReplayStart(self.since, self.from_position)

    def check(self) -> None:
        if self.since is not None and self.from_position is not None:
            raise ReplayError("give --since or --from-position, not both")
        if self.full and not self.start.from_beginning:
            raise ReplayError("--full rebuilds from the beginning: it cannot start at a time or position")
        if self.since is not None and (self.since.tzinfo is None or self.since.utcoffset() is None):
            raise ReplayError("'since' must carry a timezone")
        if self.health and not self.start.from_beginning:
            raise ReplayError("the health history can only be rebuilt by a replay from the beginning")
        if self.health is False and self.full:
            raise ReplayError("--full empties the health history too: it cannot leave it out")
        if self.drop_missing and not self.full:
            raise ReplayError("--drop-missing goes with --full (only a full rebuild removes events)")


# --- decoding -----------------------------------------------------------------------------------


def _event_ids(records: Sequence[bytes]) -> list[str]:
    """The ``event_id`` of each record that has one (an undecodable record is skipped, as the
    replay skips it)."""
    ids = []
    for record in records:
        with contextlib.suppress(ValueError, TypeError, AttributeError):
            event_id = orjson.loads(record).get("event_id")
            if isinstance(event_id, str):
                ids.append(event_id)
    return ids


#: ``UsageEvent.from_json``, fast for the records the gateway writes (gateway/event_json.py)
decode = decode_event


# --- the replayer -------------------------------------------------------------------------------


class Replayer:
    """Replays a range of the log into ``sinks``; ``store`` is the DuckDB the diff is read from
    (the store of the ``duckdb`` sink)."""

    def __init__(
        self,
        source: ReplaySource,
        store: AnalyticsStore,
        sinks: Sequence[Sink],
        *,
        price_book: PriceBook | None = None,
        batch_size: int = 10_000,
        progress: Progress | None = None,
        live_group: str | None = None,
        wait_for_live: float = 0.0,
        retries: int = 4,
        retry_initial: float = 0.5,
        sleep: Sleep = asyncio.sleep,
    ) -> None:
        self.source = source
        self.store = store
        self.sinks = list(sinks)
        self.price_book = price_book
        self.batch_size = batch_size
        self.progress = progress
        self.live_group = live_group
        self.wait_for_live = wait_for_live
        self.retries = retries
        self.retry_initial = retry_initial
        self._sleep = sleep
        self._table = "usage_facts"
        #: the table compared with was empty when the replay began: every event is new to it,
        #: so no batch is looked up (a first replay into a fresh store)
        self._nothing_stored = False
        self._refused: set[str] = set()

    async def run(self, options: ReplayOptions) -> ReplayReport:
        options.check()
        if options.reprice and self.price_book is None:
            raise ReplayError("--reprice needs a price book")
        self._refused = set()
        report = ReplayReport(dry_run=options.dry_run, full=options.full)
        if options.reprice and self.price_book is not None:
            report.price_version = self.price_book.version
        started = time.perf_counter()
        sinks = self.sinks
        if not options.rebuilds_health:
            sinks = [s for s in sinks if s.name != HEALTH_SINK]
        report.health_rebuilt = any(s.name == HEALTH_SINK for s in sinks)
        snapshot: str | None = None
        try:
            if options.full:
                await self._check_missing(options, report)
            await self.source.open(options.start)
            report.first, report.last = self.source.first, self.source.last
            if self.source.trimmed is not None:
                report.warnings.append(self.source.trimmed)
            await self._wait_for_live(report)
            for sink in sinks:
                await sink.start()
            if options.full and not options.dry_run:
                snapshot = await self._snapshot()
                await self._mark_rebuild(options)  # before anything is emptied
                for sink in sinks:
                    if isinstance(sink, SharedSink):  # other logs' rows too: only this store's go
                        await self._forget_stored(sink, sink.forget, snapshot)
                    else:
                        await self._retrying(sink, sink.reset)
                # the range ends where the log ends now that the stores are empty: an event a
                # live projector wrote after the range was first measured, and the reset then
                # deleted, is in it and written again (it would be lost from the stores otherwise)
                await self.source.close()
                await self.source.open(options.start)
                report.first, report.last = self.source.first, self.source.last
                await self._wait_for_live(report)
            self._nothing_stored = await self._is_empty(self._table)
            await self._replay(report, options, sinks)
            if snapshot is not None:
                await self._removed(report, snapshot)
            if options.full and not options.dry_run:
                # the whole log is in the stores: neither a rebuild nor a catch-up is left to run
                await self.store.run(
                    lambda conn: conn.execute(f"DELETE FROM {REBUILD_TABLE}; DELETE FROM {catch_up.TABLE}")
                )
            elif (pending := await pending_rebuild(self.store)) is not None:
                report.warnings.append(
                    f"a full rebuild (replay --full) begun {pending.started_at.isoformat()} was cut short: the "
                    "stores miss part of the log until it runs again (the gateway or consumer that owns them "
                    "runs it when it starts; or run replay --full)"
                )
        except ReplayRangeError as e:
            raise ReplayError(str(e)) from e
        except (SinkError, duckdb.Error, OSError, TimeoutError) as e:
            raise ReplayError(f"replay stopped: {e} (nothing is lost: run it again)") from e
        finally:
            if snapshot is not None:
                with contextlib.suppress(duckdb.Error):
                    await self.store.run(lambda conn: conn.execute(f"DROP TABLE IF EXISTS {snapshot}"))
            self._table = "usage_facts"
            for sink in sinks:
                try:
                    await sink.close()
                except Exception as e:  # noqa: BLE001 - closing must not hide how the replay ended
                    log.warning("replay: closing sink %s failed: %s", sink.name, e)
            await self.source.close()
            report.elapsed = time.perf_counter() - started
        self._summarise(report, options)
        return report

    # --- steps ----------------------------------------------------------------------------------
    async def _wait_for_live(self, report: ReplayReport) -> None:
        if self.live_group is None or self.source.total == 0:
            return
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.wait_for_live
        behind = await self.source.behind(self.live_group)
        while behind != 0 and loop.time() < deadline:
            await asyncio.sleep(0.05)
            behind = await self.source.behind(self.live_group)
        if behind is None:
            report.warnings.append(
                f"could not tell whether the projector group {self.live_group!r} covered the replayed range"
            )
        report.live_behind = behind or 0

    async def _mark_rebuild(self, options: ReplayOptions) -> None:
        """The mark records the prices themselves (a process that runs the rebuild again may be
        configured with another price file than the one that began it)."""
        document = rebuild_prices(self.price_book) if options.reprice else None

        def mark(conn: duckdb.DuckDBPyConnection) -> None:
            conn.execute("BEGIN")
            conn.execute(f"DELETE FROM {REBUILD_TABLE}")
            conn.execute(f"INSERT INTO {REBUILD_TABLE} VALUES (now(), ?, ?)", [options.reprice, document])
            conn.execute("COMMIT")

        await self.store.run(mark)

    async def _forget_stored(
        self, sink: Sink, forget: Callable[[Sequence[str]], Awaitable[None]], snapshot: str, chunk: int = 10_000
    ) -> None:
        """Have ``sink`` forget every event this store held (the snapshot), ``chunk`` ids at a time."""
        after = ""
        while True:
            rows = await self.store.fetchall(
                f"SELECT event_id FROM {snapshot} WHERE event_id > ? ORDER BY event_id LIMIT {chunk}", [after]
            )
            if not rows:
                return
            ids = [row[0] for row in rows]
            await self._retrying(sink, functools.partial(forget, ids))
            after = ids[-1]

    async def _is_empty(self, table: str) -> bool:
        rows = await self.store.fetchall(f"SELECT NOT EXISTS (SELECT 1 FROM {table})")
        return bool(rows[0][0])

    async def _snapshot(self) -> str:
        """Copy DuckDB's facts (for the diff) before ``full`` empties it."""
        name = f"replay_before_{uuid.uuid4().hex[:12]}"
        await self.store.run(
            lambda conn: conn.execute(
                f"CREATE TEMP TABLE {name} AS SELECT event_id, created_at, tenant_id, "
                "coalesce(served_model, provider_model) AS model, cost_usd, price_version, billable FROM usage_facts"
            )
        )
        self._table = name
        return name

    async def _replay(self, report: ReplayReport, options: ReplayOptions, sinks: Sequence[Sink]) -> None:
        """Two stages, one batch apart: reading, decoding and repricing batch n+1 (on the event
        loop's thread) overlaps with looking up and writing batch n (DuckDB and SQLite work in
        worker threads, Postgres over the network). Batches are written in log order."""
        total = self.source.total
        if self.progress is not None:
            self.progress(0, total)
        #: (records read, their events); None: the end; an exception: the reader failed
        ready: asyncio.Queue[tuple[int, list[UsageEvent]] | BaseException | None] = asyncio.Queue(maxsize=2)

        async def read() -> None:
            try:
                while records := await self.source.fetch(self.batch_size):
                    report.records_read += len(records)
                    events = self._decode(records, report, options)
                    if options.reprice and self.price_book is not None:
                        repriced = price_events(events, self.price_book)
                        report.repriced += sum(1 for old, new in zip(events, repriced, strict=True) if old is not new)
                        events = DistinctEvents(repriced)  # one per event: the ids stay distinct
                    await ready.put((len(records), events))
                await ready.put(None)
            except Exception as e:  # noqa: BLE001 - handed to the writer, which raises it
                await ready.put(e)

        reader = asyncio.create_task(read(), name="replay-read")
        try:
            written = 0
            while (item := await ready.get()) is not None:
                if isinstance(item, BaseException):
                    raise item
                count, events = item
                if events:
                    stale = await self._compare(events, report)
                    if not options.dry_run:
                        await self._apply(events, stale, sinks, options.full, report)
                written += count
                if self.progress is not None:
                    self.progress(written, max(total, written))
        finally:
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reader

    def _decode(self, records: Sequence[bytes], report: ReplayReport, options: ReplayOptions) -> list[UsageEvent]:
        events: list[UsageEvent] = []
        since = options.since
        for record in records:
            try:
                event = decode(record)
            except UNDECODABLE:
                report.undecodable += 1  # the live projector dead-letters it; a replay skips it
                continue
            if since is not None and event.created_at < since:
                continue
            events.append(event)
        unique = {e.event_id: e for e in events}  # the same event twice on the log: the last wins
        report.events += len(unique)
        return DistinctEvents(unique.values() if len(unique) != len(events) else events)

    async def _compare(self, events: list[UsageEvent], report: ReplayReport) -> list[UsageEvent]:
        """Add the batch to the diff; returns the events DuckDB does not hold as they are now.
        (One pass, the per-event work inlined: this runs on the event loop's thread for every
        replayed event.)"""
        stored = {} if self._nothing_stored else await self._stored(events)
        by_key = report.by_key
        stale = DistinctEvents()  # a part of the batch: distinct too
        for event in events:
            cost = event.cost_usd
            if cost is not None:
                cost = cost.quantize(STORE_SCALE, ROUND_HALF_UP)  # store_money, inlined
            tenant, model = event.tenant_id, event.served_model or event.provider_model
            key = by_key.get((tenant, model)) or report.key(tenant, model)
            key.events += 1
            if cost is None:
                if event.billable:
                    key.unpriced_after += 1
            else:
                key.new_cost += cost
            old = stored.get(event.event_id) if stored else None
            if old is None:
                key.added += 1
                key.changed += 1
                stale.append(event)
                continue
            old_cost, old_version = old
            if old_cost is None:
                if event.billable:
                    key.unpriced_before += 1
            else:
                key.old_cost += old_cost
            if old_cost != cost:
                report.cost_changed += 1
                key.changed += 1
                key.cost_changed += 1
                key.cost_delta += (cost or 0) - (old_cost or 0)
                stale.append(event)
            elif old_version != event.price_version:
                report.version_changed += 1
                key.changed += 1
                stale.append(event)
        return stale

    async def _stored(self, events: list[UsageEvent]) -> dict[str, tuple[Any, Any]]:
        """What DuckDB holds for the batch's events: id -> (cost, price version)."""
        table = self._table
        ids = [e.event_id for e in events]
        # an event's row has the event's created_at: the time range lets DuckDB skip every row
        # group outside it (min/max statistics), so a lookup costs the batch, not the table
        first, last = min(e.created_at for e in events), max(e.created_at for e in events)

        def lookup(conn: duckdb.DuckDBPyConnection) -> list[tuple[Any, ...]]:
            return conn.execute(
                f"SELECT f.event_id, f.cost_usd, f.price_version FROM {table} f "
                "JOIN (SELECT unnest($1::VARCHAR[]) AS id) b ON f.event_id = b.id "
                "WHERE f.created_at BETWEEN $2 AND $3",
                [ids, first, last],
            ).fetchall()

        return {row[0]: (row[1], row[2]) for row in await self.store.run(lookup)}

    async def _apply(
        self,
        events: list[UsageEvent],
        stale: list[UsageEvent],
        sinks: Sequence[Sink],
        full: bool,
        report: ReplayReport,
    ) -> None:
        """Every sink gets the batch at once (they are independent: DuckDB works in a thread,
        Postgres over the network); the first failure is raised once all are done."""
        steps = []
        for sink in sinks:
            batch = stale if sink.name == REFERENCE_SINK and not full else events
            if batch:
                steps.append(self._retrying(sink, _step(self._isolating, sink, batch)))
        for outcome in await asyncio.gather(*steps, return_exceptions=True):
            if isinstance(outcome, BaseException):
                raise outcome
        refused = sum(1 for e in events if e.event_id in self._refused) if self._refused else 0
        report.events_applied += len(events) - refused

    async def _isolating(self, sink: Sink, events: list[UsageEvent]) -> None:
        """Apply ``events``; events the sink refuses are found by bisection and skipped (the live
        projector dead-letters them)."""
        if not events:
            return
        try:
            await sink.apply(events)
        except SinkError as e:
            if e.retryable:
                raise
            if len(events) == 1:
                log.error("replay: sink %s refused event %s: %s", sink.name, events[0].event_id, e)
                self._refused.add(events[0].event_id)
                return
            middle = len(events) // 2
            await self._isolating(sink, events[:middle])
            await self._isolating(sink, events[middle:])

    async def _retrying(self, sink: Sink, step: Callable[[], Awaitable[None]]) -> None:
        for attempt in range(self.retries + 1):
            try:
                await step()
                return
            except SinkError as e:
                if not e.retryable or attempt == self.retries:
                    raise
                delay = self.retry_initial * 2**attempt
                log.warning("replay: %s unavailable (%s); retrying in %.1fs", sink.name, e, delay)
                await self._sleep(delay)

    async def _check_missing(self, options: ReplayOptions, report: ReplayReport) -> None:
        """Refuse a full rebuild that would remove events the stores hold and the log does not
        (another log's: the data dir's embedded log after a switch to Kafka or back; or past
        Kafka's retention) unless ``drop_missing``: a review's ``replay --full`` after a switch
        to Kafka took 1,860 events ($0.289788) out of DuckDB and the platform's ``"LLMUsage"``,
        said ``changed 0``, and exited 0. A dry run with ``drop_missing`` says what it would remove
        (the real run's report does). Reads the log's ids once, into a temporary table."""
        if (options.drop_missing and not options.dry_run) or await self._is_empty("usage_facts"):
            return
        suffix = uuid.uuid4().hex[:12]
        table, stored = f"replay_log_ids_{suffix}", f"replay_stored_{suffix}"
        # what the stores hold before the log's range is fixed: an event the live projector
        # stores meanwhile is on the log past that range (a diff review: a busy gateway's
        # --full was refused for the events it projected during the check)
        await self.store.run(
            lambda conn: conn.execute(
                f"CREATE TEMP TABLE {stored} AS SELECT event_id, cost_usd, billable FROM usage_facts;"
                f"CREATE TEMP TABLE {table} (event_id VARCHAR)"
            )
        )
        try:
            await self.source.open(options.start)
            try:
                while records := await self.source.fetch(self.batch_size):
                    await self.store.fetchall(f"INSERT INTO {table} SELECT unnest(?::VARCHAR[])", [_event_ids(records)])
            finally:
                await self.source.close()
            [(count, cost, unpriced)] = await self.store.fetchall(
                f"SELECT count(*), coalesce(sum(cost_usd), 0), count(*) FILTER (WHERE cost_usd IS NULL AND billable) "
                f"FROM {stored} f WHERE NOT EXISTS (SELECT 1 FROM {table} l WHERE l.event_id = f.event_id)"
            )
        finally:
            with contextlib.suppress(duckdb.Error):
                await self.store.run(
                    lambda conn: conn.execute(f"DROP TABLE IF EXISTS {table}; DROP TABLE IF EXISTS {stored}")
                )
        if not count:
            return
        what = f"{count} events (${format_usd(cost)}" + (f" and {unpriced} unpriced" if unpriced else "") + ")"
        if options.drop_missing:  # a dry run
            report.warnings.append(f"would remove {what} the log does not hold (--drop-missing)")
            return
        raise ReplayError(
            f"--full would remove {what} that the stores hold and the log does not: another log's (this data "
            "dir's embedded log after a switch to Kafka, or back) or past the log's retention (Kafka's, or "
            "log_retention_days). Nothing was changed. "
            "Replay without --full (it keeps them), or add --drop-missing ('dropMissing' in a request body) to "
            "remove them"
        )

    async def _removed(self, report: ReplayReport, snapshot: str) -> None:
        rows = await self.store.fetchall(
            f"SELECT b.tenant_id, b.model, count(*), coalesce(sum(b.cost_usd), 0), "
            "count(*) FILTER (WHERE b.cost_usd IS NULL AND b.billable) "
            f"FROM {snapshot} b ANTI JOIN usage_facts f ON f.event_id = b.event_id GROUP BY ALL"
        )
        for tenant, model, count, cost, unpriced in rows:
            key = report.key(tenant, model)
            key.removed += int(count)
            key.old_cost += cost
            key.unpriced_before += int(unpriced)
        removed, money = sum(int(row[2]) for row in rows), sum((row[3] for row in rows), Decimal(0))
        if removed:
            report.warnings.append(
                f"removed {removed} events (${format_usd(money)}) the log does not hold (--drop-missing)"
            )

    def _summarise(self, report: ReplayReport, options: ReplayOptions) -> None:
        report.refused = len(self._refused)
        report.changed = sum(d.changed for d in report.by_key.values())
        report.added = sum(d.added for d in report.by_key.values())
        report.unpriced_before = sum(d.unpriced_before for d in report.by_key.values())
        report.unpriced_after = sum(d.unpriced_after for d in report.by_key.values())
        if not options.reprice and report.cost_changed:
            report.warnings.append(
                f"{report.cost_changed} events {'would go' if options.dry_run else 'went'} back to the cost "
                "recorded on the log (a replay without --reprice); replay with --reprice to apply the "
                "current price table"
            )
        if report.undecodable:
            report.warnings.append(f"{report.undecodable} undecodable records skipped (see the dead letters)")
        if report.refused:
            report.warnings.append(f"{report.refused} events refused by a sink were skipped (see the logs)")


def _step(
    fn: Callable[[Sink, list[UsageEvent]], Awaitable[None]], sink: Sink, events: list[UsageEvent]
) -> Callable[[], Awaitable[None]]:
    return lambda: fn(sink, events)
