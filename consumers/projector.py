"""The consumer loop: read usage events from the log, apply them to every sink, then commit.

One batch at a time::

    fetch -> decode (poison -> dead letters) -> apply to EVERY sink -> commit the batch

- The log position is committed only after every sink applied the batch. Sinks are idempotent
  on the event id, so a batch applied again (after a crash before the commit, a redelivery, a
  replay) never double-counts.
- A sink that is unavailable (``SinkError``, ``OSError``, ``TimeoutError``: database down,
  disk error) PAUSES the projector: nothing is committed and nothing more is fetched; the same
  batch is retried with capped exponential backoff until it succeeds. Sinks that already
  applied the batch are not asked again. Counts end equal: no gap, no duplicate.
- A record that cannot be decoded (bad JSON, failed validation, too new a schema) is poison:
  its raw bytes, the reason and its position go to the dead letters; the rest of the batch is
  applied. An event a sink refuses (``RejectedEvents``: a value out of the column's range) is
  isolated by bisecting the batch and dead-lettered the same way.
- Any other exception is a bug and propagates, uncommitted: the batch is redelivered to the
  next projector started from the last commit.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from consumers.sinks.base import DeadLetters, DistinctEvents, Sink, SinkError, latest_by_id
from gateway.backoff import doubling
from gateway.event_json import UNDECODABLE, decode_event
from gateway.eventlog.base import LogReader, LogRecord
from gateway.eventlog.log_errors import describe, latest_refusal
from gateway.events import UsageEvent
from gateway.ids import Clock, utcnow

log = logging.getLogger(__name__)

Sleep = Callable[[float], Awaitable[None]]

#: errors that mean "the sink is unavailable for now" when a sink did not translate them
_TRANSIENT = (SinkError, OSError, TimeoutError)
#: records decoded between two turns of the event loop (~5 µs each)
DECODE_SLICE = 64
#: seconds a lag measurement may take before the lag is unknown: with the broker down, Kafka's
#: offset requests wait out their 30 s request timeout, and the last lag (0) was shown meanwhile
LAG_TIMEOUT = 5.0


@dataclass
class ProjectorStats:
    """Progress counters, for metrics and health."""

    events_applied: int = 0
    events_dead_lettered: int = 0
    batches_committed: int = 0
    #: failed attempts to apply a batch (each one followed by a backoff)
    retries: int = 0
    #: a sink is unavailable: the projector waits and retries the current batch
    paused: bool = False
    paused_since: datetime | None = None
    last_error: str | None = None
    #: when ``last_error`` happened: a status ``ok`` next to an old error is one recovered from
    last_error_at: datetime | None = None
    last_batch_at: datetime | None = None
    last_batch_size: int = 0
    last_batch_seconds: float = 0.0
    #: commits the log refused (the batch is delivered again; sinks are idempotent)
    commit_failures: int = 0
    #: records on the log not yet committed (None until first measured, and while the log
    #: cannot say: a broker down; ``lag_error`` says why)
    lag: int | None = None
    #: when ``lag`` was last measured (or failed to be): a stale time is a projector stuck
    #: in a call to the log
    lag_at: datetime | None = None
    lag_error: str | None = None
    #: seconds after which a lag not measured again is unknown (the projector stuck in a call to
    #: the log, e.g. a commit to a broker gone under load: the last lag showed for 42 s)
    lag_stale_after: float = 15.0
    #: sink name -> events of the batches it finished applying (committed or not yet): which
    #: sink is behind while a batch is in flight, or paused on a failing store
    sink_events: dict[str, int] = field(default_factory=dict)
    #: sink name -> since when it has been applying the current batch (a store that hangs: a
    #: Postgres that takes the statement and never answers holds a sink up to its timeout)
    applying: dict[str, datetime] = field(default_factory=dict)
    #: a full rebuild found cut short and being run again by this process (see
    #: consumers/replay_http.py): until it ends the stores miss part of the log
    rebuild: dict[str, object] | None = None
    #: a new cost store is being filled from the beginning of the log (``consumers.catch_up``):
    #: until the projector reaches the log's end the store misses part of it
    catching_up: bool = False
    #: the stores hold the log as far as its end was when first read to it (a fetch that found
    #: less than a batch): a new store filled from the log's start, with no position of its group
    #: to catch up to, is not ``catching_up`` but partial until then (an export answered 200
    #: with 122,500 of 200,000 rows: a re-test)
    reached_end: bool = False
    #: a new cost store filled from the log's start with no position of its group (a first
    #: ``consume`` on a topic that has history): partial until ``reached_end``
    filling: bool = False
    #: runs that ended in an unexpected error (a bug) and were restarted from the last commit
    restarts: int = 0
    #: the last run ended in such an error and no batch has been committed since: projection is
    #: stuck (the same batch fails again) until it is, which health checks must show
    failing: bool = False

    #: the event log could not be reached at start: nothing is projected until it can
    waiting_for_log: bool = False

    def log_unreachable(self, error: BaseException) -> None:
        self.waiting_for_log = True
        self.lag, self.lag_at = None, utcnow()
        self.lag_error = f"the event log cannot be reached: {describe(error)[:500]}"
        self.note_error(self.lag_error)

    def log_reached(self) -> None:
        self.waiting_for_log = False
        self.lag_error = None

    @property
    def status(self) -> str:
        """``failing`` (stuck on a bug), ``waiting_for_log`` (the log could not be reached at
        start: a broker down), ``paused`` (waiting for a store), ``rebuilding`` (a full
        rebuild cut short is run again: the stores miss part of the log until it ends; ``rebuild``
        says how far, or why it failed), ``catching_up`` (a new cost store filled from the log's
        beginning) or ``ok``."""
        if self.failing:
            return "failing"
        if self.waiting_for_log:
            return "waiting_for_log"
        if self.paused:
            return "paused"
        if self.stalled():
            return "stalled"
        if self.rebuild is not None:
            return "rebuilding"
        return "catching_up" if self.catching_up else "ok"

    def stalled(self, now: datetime | None = None) -> dict[str, float]:
        """The sinks applying the current batch for longer than :attr:`lag_stale_after`, with
        their seconds so far (a store that hangs: ``/healthz`` said ``ok`` for the minute of the
        sink's timeout, and blamed the log: review)."""
        if not self.applying:
            return {}
        now = now or utcnow()
        ages = {name: (now - since).total_seconds() for name, since in self.applying.items()}
        return {name: round(age, 1) for name, age in sorted(ages.items()) if age > self.lag_stale_after}

    def current_lag(self, now: datetime | None = None) -> tuple[int | None, str | None]:
        """The lag and why it is unknown, as of ``now``: None once the last measure is older than
        :attr:`lag_stale_after`."""
        if self.waiting_for_log:
            return None, self.lag_error
        if self.lag_at is not None:
            age = ((now or utcnow()) - self.lag_at).total_seconds()
            if age > self.lag_stale_after:
                stalled = self.stalled(now)
                waits_on = f"sink {', '.join(stalled)}" if stalled else "the log"
                return None, f"not measured for {age:.0f}s: the projector is waiting on {waits_on}"
        return self.lag, self.lag_error

    def health(self) -> dict[str, object]:
        """What ``/healthz`` shows of the projector (the embedded ``serve`` and ``consume``)."""
        lag, lag_error = self.current_lag()
        return {
            "status": self.status,
            "eventsApplied": self.events_applied,
            "deadLettered": self.events_dead_lettered,
            "lag": lag,
            "lagAt": self.lag_at.isoformat() if self.lag_at else None,
            "lagError": lag_error,
            "lastError": self.last_error,
            "lastErrorAt": self.last_error_at.isoformat() if self.last_error_at else None,
            "restarts": self.restarts,
            "sinkEvents": dict(self.sink_events),
            **({"stalledSinks": stalled} if (stalled := self.stalled()) else {}),
            **({"rebuild": dict(self.rebuild)} if self.rebuild is not None else {}),
        }

    def failed(self, error: BaseException) -> None:
        """A run ended in an unexpected error (see :attr:`failing`)."""
        self.restarts += 1
        self.failing = True
        self.note_error(_one_line(error))

    def note_error(self, text: str) -> None:
        self.last_error, self.last_error_at = text, utcnow()


@dataclass
class _Batch:
    records: Sequence[LogRecord]
    events: list[UsageEvent] = field(default_factory=list)
    #: event_id -> the (last) record it came from, to dead-letter an event a sink refuses
    sources: dict[str, LogRecord] = field(default_factory=dict)
    poison: list[tuple[LogRecord, str]] = field(default_factory=list)
    #: steps already done for this batch ("dead-letters", sink names): not repeated on retry
    done: set[str] = field(default_factory=set)
    #: events refused by some sink (already dead-lettered)
    rejected: set[str] = field(default_factory=set)
    #: ``events``, one per id (the last copy wins), made once for all the sinks
    _distinct: DistinctEvents | None = None

    def distinct(self) -> DistinctEvents:
        """The batch as the sinks take it: one event per id, so no sink checks again (a dict of
        the batch in each sink was 4.6% of the projector's event-loop thread, py-spy)."""
        if self._distinct is None:
            self._distinct = DistinctEvents(latest_by_id(self.events))
        return self._distinct


class Projector:
    def __init__(
        self,
        reader: LogReader,
        sinks: Sequence[Sink],
        dead_letters: DeadLetters,
        *,
        batch_size: int = 1000,
        poll_timeout: float = 1.0,
        idle_timeout: float = 0.05,
        retry_initial: float = 0.5,
        retry_max: float = 30.0,
        lag_interval: float = 5.0,
        linger: float = 0.0,
        clock: Clock = utcnow,
        sleep: Sleep = asyncio.sleep,
    ) -> None:
        """``poll_timeout``: how long ``run_forever`` waits on an empty log per fetch (also the
        longest it takes to notice ``stop``); ``idle_timeout``: the same for
        ``run_until_idle``, which returns on the first empty fetch. ``retry_*``: backoff of a
        paused projector, doubling from ``retry_initial`` up to ``retry_max`` seconds."""
        names = [s.name for s in sinks]
        if len(set(names)) != len(names):
            raise ValueError(f"sink names must be unique, got {names}")
        self.reader = reader
        self.sinks = list(sinks)
        self.dead_letters = dead_letters
        self.batch_size = batch_size
        self.poll_timeout = poll_timeout
        self.idle_timeout = idle_timeout
        self.retry_initial = retry_initial
        self.retry_max = retry_max
        self.lag_interval = timedelta(seconds=lag_interval)
        self.lag_timeout = LAG_TIMEOUT
        self.linger = linger
        self.stats = ProjectorStats(lag_stale_after=2 * lag_interval + LAG_TIMEOUT)
        self._last_batch_at: datetime | None = None
        self._clock = clock
        self._sleep = sleep
        #: called once, when the log is read to its end (a fetch that finds nothing) or the reader
        #: has applied again all the group had committed (``rewind_done``): a store catching up
        #: with the log (``consumers.catch_up``)
        self.on_caught_up: Callable[[], Awaitable[None]] | None = None

    # --- lifecycle of the sinks ---------------------------------------------------------------
    async def start(self) -> None:
        """Start every sink. A sink that is unavailable now is retried by the first batch."""
        for sink in self.sinks:
            try:
                await sink.start()
            except SinkError as e:
                log.warning("sink %s is not available yet (%s): will retry", sink.name, e)
                # /healthz said nothing of it until the first batch (a review)
                self.stats.note_error(f"sink {sink.name} not available at start: {e}")

    async def close(self) -> None:
        for sink in self.sinks:
            await sink.close()

    # --- loops ----------------------------------------------------------------------------------
    # Both loops read one batch ahead: while the sinks apply batch N (DuckDB in its thread,
    # Postgres in its server), the event loop fetches and decodes batch N+1. Commits stay in
    # order (N is committed before N+1 is applied); a batch read ahead and not applied when the
    # loop ends is simply not committed, so it is delivered again.
    async def run_until_idle(self) -> int:
        """Project until a fetch comes back empty (tests, replay); returns events applied."""
        before = self.stats.events_applied
        ahead: asyncio.Future[_Batch | None] | None = None
        try:
            while True:
                batch = await (ahead or self._next_batch(self.idle_timeout))
                ahead = None
                if batch is None:
                    await self._caught_up()
                    break
                ahead = asyncio.ensure_future(self._next_batch(self.idle_timeout))
                await self._process(batch)
        finally:
            await _discard(ahead)
        await self._refresh_lag(force=True)
        return self.stats.events_applied - before

    async def run_forever(self, stop: asyncio.Event) -> None:
        """Project until ``stop`` is set. A batch being applied is finished and committed; a
        batch waiting for an unavailable sink is abandoned uncommitted (redelivered later)."""
        ahead: asyncio.Future[_Batch | None] | None = None
        try:
            while not stop.is_set():
                try:
                    batch = await (ahead or self._next_batch(self.poll_timeout, stop))
                except (OSError, TimeoutError) as e:
                    log.warning("fetching from the event log failed (%s): retrying", e)
                    await self._wait(self.retry_initial, stop)
                    continue
                finally:
                    ahead = None
                if batch is not None:
                    ahead = asyncio.ensure_future(self._next_batch(self.poll_timeout, stop))
                    if not await self._process(batch, stop):
                        break
                    if len(batch.records) < self.batch_size:
                        self.stats.reached_end = True
                    if self.on_caught_up is not None and await self.reader.rewind_done():
                        await self._caught_up()  # read again up to where the group was
                elif not stop.is_set():
                    self.stats.reached_end = True
                    await self._caught_up()
                await self._refresh_lag()
        finally:
            await _discard(ahead)

    async def _caught_up(self) -> None:
        """The log is read to its end: once, tell who waits for that (``on_caught_up``)."""
        call, self.on_caught_up = self.on_caught_up, None
        if call is not None:
            await call()

    async def _next_batch(self, timeout: float, stop: asyncio.Event | None = None) -> _Batch | None:
        """The next batch, fetched and decoded; None when the log had nothing within ``timeout``."""
        records = await self.reader.fetch(self.batch_size, timeout)
        if records and self.linger and len(records) < self.batch_size and not (stop and stop.is_set()):
            records = [*records, *await self._linger(len(records))]
        if records:
            self._last_batch_at = self._clock()
        return await self._decode_cooperatively(records) if records else None

    async def _linger(self, have: int) -> list[LogRecord]:
        """Batches start at most once per ``linger`` seconds: a small batch that comes sooner
        than that after the previous one waits for the rest of the interval, for company. Each
        batch has a fixed cost in the sinks (DuckDB statements cost milliseconds whatever their
        size, a Postgres round trip), so under steady traffic that cost is paid ``1 / linger``
        times a second instead of once per few events; after a quiet spell the first event goes
        at once. Bounds the projection delay by ``linger``."""
        last = self._last_batch_at
        if last is None:
            return []
        # at most ``linger``: the wall clock stepped back a day (NTP, an operator) made this wait a
        # day, the cost store stood still and SIGTERM went unheard meanwhile
        wait = min(self.linger, self.linger - (self._clock() - last).total_seconds())
        if wait <= 0:
            return []
        every = getattr(self.reader, "read_while_lingering", None)  # a reader of another make: once
        reads = 1 if not every else max(1, math.ceil(wait / every))
        more: list[LogRecord] = []
        for _ in range(reads):
            await self._sleep(wait / reads)
            try:
                more += await self.reader.fetch(self.batch_size - have - len(more), 0.0)
            except (OSError, TimeoutError):
                break
            if have + len(more) >= self.batch_size:
                break
        return more

    # --- one batch ------------------------------------------------------------------------------
    async def process(self, records: Sequence[LogRecord], stop: asyncio.Event | None = None) -> bool:
        """Apply one batch to every sink, then commit it. Returns False if ``stop`` was set
        while waiting for an unavailable sink (nothing committed)."""
        return await self._process(self._decode(records), stop)

    async def _process(self, batch: _Batch, stop: asyncio.Event | None = None) -> bool:
        started = self._clock()
        records = batch.records
        attempt = 0
        while True:
            try:
                await self._apply(batch)
                break
            except _TRANSIENT as e:
                if isinstance(e, SinkError) and not e.retryable:
                    raise  # RejectedEvents outside a sink step: cannot happen, do not loop
                attempt += 1
                delay = doubling(self.retry_initial, attempt, self.retry_max)
                self._paused(e, attempt, delay)
                await self._refresh_lag()  # the backlog keeps growing while paused: show it
                if not await self._wait(delay, stop):
                    log.info("stopping while paused: batch of %d left uncommitted", len(records))
                    return False
        if self.stats.paused:
            self._resumed(attempt)
        await self._commit(records)
        self.stats.failing = False
        applied = len(batch.events) - len(batch.rejected)
        self.stats.events_applied += applied
        self.stats.batches_committed += 1
        self.stats.last_batch_at = now = self._clock()
        self.stats.last_batch_size = len(records)
        self.stats.last_batch_seconds = (now - started).total_seconds()
        return True

    async def _commit(self, records: Sequence[LogRecord]) -> None:
        try:
            await self.reader.commit(records)
        except Exception:  # an uncommitted batch is only delivered again: sinks are idempotent
            self.stats.commit_failures += 1
            log.exception("committing %d records failed: they will be delivered again", len(records))

    def _decode(self, records: Sequence[LogRecord]) -> _Batch:
        batch = _Batch(records)
        self._decode_into(batch, records)
        return batch

    async def _decode_cooperatively(self, records: Sequence[LogRecord]) -> _Batch:
        """:meth:`_decode`, letting the event loop run between slices of :data:`DECODE_SLICE`
        records (half a millisecond each): in the embedded ``serve`` the projector shares the
        loop with the gateway's requests, and a batch of thousands decoded in one go held every
        request behind it for several milliseconds (p99 at c=1: 14 ms with the projector in the
        process, 5 ms without). A request waits for the loop at each of its awaits, so it pays
        a slice several times; finer slices cost CPU at c=32 (see the health history sink's
        ``APPLY_SLICE``, measured together)."""
        batch = _Batch(records)
        for start in range(0, len(records), DECODE_SLICE):
            if start:
                await asyncio.sleep(0)
            self._decode_into(batch, records[start : start + DECODE_SLICE])
        return batch

    @staticmethod
    def _decode_into(batch: _Batch, records: Sequence[LogRecord]) -> None:
        for record in records:
            if not record.value:  # a Kafka tombstone, or an empty record
                batch.poison.append((record, "undecodable usage event: the record has no value"))
                continue
            try:
                event = decode_event(record.value)
            except UNDECODABLE as e:  # JSON, validation (a ValueError), version, None
                batch.poison.append((record, f"undecodable usage event: {_one_line(e)}"))
                continue
            batch.events.append(event)
            batch.sources[event.event_id] = record

    async def _apply(self, batch: _Batch) -> None:
        if "dead-letters" not in batch.done:
            for record, reason in batch.poison:
                await self.dead_letters.dead_letter(record.value, reason, record.position)
            batch.done.add("dead-letters")
            if batch.poison:
                record, reason = batch.poison[0]
                log.error(
                    "dead-lettered %d record(s) the projector cannot read (first at %s: %s)",
                    len(batch.poison),
                    record.position,
                    reason,
                )
                self.stats.events_dead_lettered += len(batch.poison)
        # the sinks apply the batch concurrently: DuckDB works in a thread, Postgres in its own
        # server, so their waits overlap; a sink that failed is retried alone with the batch
        pending = [sink for sink in self.sinks if sink.name not in batch.done]
        applying = asyncio.gather(*(self._apply_sink(sink, batch) for sink in pending), return_exceptions=True)
        try:
            outcomes = await asyncio.wait_for(asyncio.shield(applying), self.stats.lag_stale_after)
        except TimeoutError:  # a store that hangs: said once, then waited for (its own timeout ends it)
            log.warning(
                "projector waits on sink(s) %s: a batch of %d events not applied after %.0fs",
                ", ".join(sorted(self.stats.applying)),
                len(batch.events),
                self.stats.lag_stale_after,
            )
            outcomes = await applying
        except asyncio.CancelledError:  # the shield kept it from the sinks: a stop stops them too
            applying.cancel()
            applying.add_done_callback(_retrieve)  # nobody awaits it now: no "never retrieved" error
            raise
        failures = [outcome for outcome in outcomes if isinstance(outcome, BaseException)]
        if failures:
            raise failures[0]

    async def _apply_sink(self, sink: Sink, batch: _Batch) -> None:
        """One sink's step of a batch, counted as done the moment it is (the others may still work)."""
        applying = self.stats.applying
        applying[sink.name] = self._clock()
        try:
            await self._apply_isolating(sink, batch, batch.distinct())
        finally:
            del applying[sink.name]
        batch.done.add(sink.name)
        done = self.stats.sink_events
        done[sink.name] = done.get(sink.name, 0) + len(batch.events)

    async def _apply_isolating(self, sink: Sink, batch: _Batch, events: list[UsageEvent]) -> None:
        """Apply ``events``; if the sink refuses some, bisect down to them and dead-letter them."""
        if not events:
            return
        try:
            await sink.apply(events)
            return
        except SinkError as e:
            if e.retryable:
                raise
            if len(events) > 1:
                middle = len(events) // 2
                await self._apply_isolating(sink, batch, events[:middle])
                await self._apply_isolating(sink, batch, events[middle:])
                return
            event = events[0]
            if event.event_id in batch.rejected:
                return
            record = batch.sources[event.event_id]
            log.error("sink %s refused event %s at %s: %s", sink.name, event.event_id, record.position, e)
            await self.dead_letters.dead_letter(
                record.value, f"refused by sink {sink.name}: {_one_line(e)}", record.position
            )
            batch.rejected.add(event.event_id)
            self.stats.events_dead_lettered += 1

    # --- pause / resume -------------------------------------------------------------------------
    def _paused(self, error: BaseException, attempt: int, delay: float) -> None:
        stats = self.stats
        if not stats.paused:
            stats.paused = True
            stats.paused_since = self._clock()
        stats.retries += 1
        stats.note_error(_one_line(error))
        log.warning(
            "projector paused: %s (attempt %d failed; retrying the same batch in %.1fs)",
            stats.last_error,
            attempt,
            delay,
        )

    def _resumed(self, attempts: int) -> None:
        stats = self.stats
        since = stats.paused_since
        paused_for = (self._clock() - since).total_seconds() if since is not None else 0.0
        log.info("projector resumed after %d failed attempts (%.1fs paused)", attempts, paused_for)
        stats.paused = False
        stats.paused_since = None

    async def _wait(self, delay: float, stop: asyncio.Event | None) -> bool:
        """Sleep ``delay`` seconds, cut short by ``stop``; False if stopped."""
        if stop is None:
            await self._sleep(delay)
            return True
        if stop.is_set():
            return False
        sleeper = asyncio.ensure_future(self._sleep(delay))
        stopper = asyncio.ensure_future(stop.wait())
        try:
            await asyncio.wait({sleeper, stopper}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (sleeper, stopper):
                task.cancel()
            await asyncio.gather(sleeper, stopper, return_exceptions=True)
        return not stop.is_set()

    async def _refresh_lag(self, *, force: bool = False) -> None:
        now = self._clock()
        last = self.stats.lag_at
        # a clock stepped back (now before the last measure) measures again, not after the step
        if not force and last is not None and timedelta(0) <= now - last < self.lag_interval:
            return
        self.stats.lag_at = now
        try:
            self.stats.lag = await asyncio.wait_for(self.reader.lag(), self.lag_timeout)
        except TimeoutError:
            self.stats.lag = None
            refused = latest_refusal()  # a password rotated while it runs: the lag alone said nothing
            self.stats.lag_error = f"the log did not say its lag within {self.lag_timeout:g}s" + (
                f" (the latest refusal: {refused})" if refused else ""
            )
            return
        except Exception as e:  # noqa: BLE001 - the lag is informational; the log may be down
            # unknown, not the last value: a broker down showed "lag 0" for as long as it was down
            log.debug("could not measure the lag: %s", e)
            self.stats.lag, self.stats.lag_error = None, describe(e)[:500]
            return
        self.stats.lag_error = None


def _one_line(error: BaseException) -> str:
    text = " ".join(str(error).split())
    return text[:500] if text else type(error).__name__


async def _discard(ahead: asyncio.Future[_Batch | None] | None) -> None:
    """Drop a batch read ahead (not applied, not committed: it is delivered again)."""
    if ahead is not None:
        ahead.cancel()
        await asyncio.gather(ahead, return_exceptions=True)


def _retrieve(future: asyncio.Future[Any]) -> None:
    if not future.cancelled():
        future.exception()
