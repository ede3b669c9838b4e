"""Assemble a projector from settings: the log reader, the sinks, the dead letters, the store.

Used by ``llm-gateway serve`` in the embedded mode (gateway and projector in one process) and by
``llm-gateway consume`` (a consumer-group member in the scaled-out mode). Same code path, only
the adapters behind the ports differ.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

from analytics.costs import CostTrackingService
from analytics.store import AnalyticsStore
from consumers import catch_up
from consumers.deadletter import LogDeadLetters
from consumers.projector import Projector
from consumers.sinks.base import Sink
from consumers.sinks.duckdb import DuckDBSink
from consumers.sinks.health_history import HealthHistorySink
from gateway.eventlog.base import LogReader
from gateway.eventlog.deadletter import DeadLetterStore
from gateway.eventlog.factory import build_dead_letters, build_log_reader
from gateway.eventlog.log_errors import describe
from gateway.settings import Settings

log = logging.getLogger(__name__)

ANALYTICS_FILE = "analytics.duckdb"
#: the Parquet export's default directory, in the data dir
EXPORT_DIR = "export"
#: seconds a stop lets the projector finish its batch before it cancels it (the batch is not
#: committed and comes again at the next start): a store that hangs (a Postgres that takes the
#: statement and never answers) held a SIGTERM for up to its statement timeout, 68 s in a
#: re-test, past an orchestrator's grace period
STOP_GRACE_SECONDS = 5.0
DEFAULT_GROUP = "llm-usage-projector"
#: seconds between tries to reach an event log that cannot be reached at start: the first wait,
#: doubled after each try, up to the last
LOG_RETRY_FIRST = 1.0
LOG_RETRY_MAX = 30.0
#: seconds the start gives the log to answer before it goes on waiting for it in the background
LOG_FIRST_TRY = 5.0


class LogUnanswered(Exception):
    """The log did not answer within :data:`LOG_FIRST_TRY` at start."""

    retriable = True


def _unreachable(exc: BaseException) -> bool:
    """The log cannot be reached for now (a broker down or restarting: aiokafka's retriable
    errors, or no answer within :data:`LOG_FIRST_TRY`), as opposed to refusing (a data dir it
    may not write, an unknown topic setting)."""
    return bool(getattr(exc, "retriable", False))


def analytics_path(settings: Settings) -> Path:
    return Path(settings.data_dir) / ANALYTICS_FILE


def export_path(settings: Settings) -> Path:
    """Where the Parquet export writes (``export_dir``, else ``<data_dir>/export``)."""
    return Path(settings.export_dir) if settings.export_dir is not None else Path(settings.data_dir) / EXPORT_DIR


@dataclass
class Pipeline:
    reader: LogReader
    store: AnalyticsStore
    dead_letters: DeadLetterStore
    projector: Projector
    costs: CostTrackingService
    _stop: asyncio.Event = field(default_factory=asyncio.Event)
    _task: asyncio.Task[None] | None = None
    stop_grace: float = STOP_GRACE_SECONDS

    async def start(self) -> None:
        await self.store.open()
        try:
            try:
                # bounded: a broker address that takes no connection held the start (no health
                # served) for aiokafka's whole timeout
                await asyncio.wait_for(self._connect_log(), LOG_FIRST_TRY)
            except TimeoutError as slow:
                raise LogUnanswered(f"no answer within {LOG_FIRST_TRY:g}s") from slow
            await self._begin()
        except Exception as exc:
            if not _unreachable(exc):
                raise
            # a broker restarting with its consumers (a deploy): the process waits for it, its
            # health served meanwhile, instead of exiting for a supervisor to start it again
            log.warning("the event log cannot be reached (%s): projecting once it can", describe(exc))
            self.projector.stats.log_unreachable(exc)
            self._task = asyncio.create_task(self._reach_then_run(), name="projector")
            return
        self._task = asyncio.create_task(self._run(), name="projector")

    async def _connect_log(self) -> None:
        """Connect what reads and writes the log (safe to call again after a failure)."""
        await self.dead_letters.start()
        await self.reader.start()

    async def _start_log(self) -> None:
        await self._connect_log()
        await self._begin()

    async def _begin(self) -> None:
        """Once the log answers: catch a new cost store up, and start the sinks."""
        if await catch_up.pending(self.store) or await catch_up.mark_if_behind(self.store, self.reader):
            behind = catch_up.CatchUp(self.store, self.reader)
            if await self.reader.has_committed():
                await behind.begin()
                stats = self.projector.stats
                stats.catching_up = True

                async def caught_up() -> None:
                    await behind.caught_up()
                    stats.catching_up = False

                self.projector.on_caught_up = caught_up
            else:  # a new group: it reads the log from its beginning anyway
                await behind.done()
                self.projector.stats.filling = await self._log_has_records()
        await self.projector.start()

    async def _log_has_records(self) -> bool:
        """Whether a new group has records to read (an empty log fills no store: costs were a
        503 for the first fetch's wait after a fresh start); yes when the log cannot say."""
        try:
            return await asyncio.wait_for(self.reader.lag(), 5.0) > 0
        except Exception:  # a broker that cannot say: the store is taken as partial until read
            log.debug("the log could not say its lag at start", exc_info=True)
            return True

    async def _reach_then_run(self) -> None:
        """Try :meth:`_start_log` until the log answers (backoff up to ``LOG_RETRY_MAX``), then run."""
        delay = LOG_RETRY_FIRST
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), delay)
            if self._stop.is_set():
                return
            try:
                await self._start_log()
                break
            except Exception as exc:
                if not _unreachable(exc):
                    raise
                self.projector.stats.log_unreachable(exc)
                delay = min(delay * 2, LOG_RETRY_MAX)
                log.warning("the event log still cannot be reached (%s): trying again in %gs", describe(exc), delay)
        self.projector.stats.log_reached()
        log.info("the event log answers: projecting")
        await self._run()

    async def _run(self) -> None:
        while not self._stop.is_set():
            try:
                await self.projector.run_forever(self._stop)
            except Exception as exc:  # a bug in one batch must not stop projection for good
                self.projector.stats.failed(exc)
                log.exception("projector failed; restarting from the last committed position")
                await self.reader.close()
                await asyncio.sleep(1.0)
                await self.reader.start()
                if self.projector.stats.catching_up:  # a new store: its log is read from the start
                    await self.reader.seek_to_beginning()

    async def stop(self) -> None:
        self._stop.set()
        if self._task is not None and self.projector.stats.waiting_for_log:
            self._task.cancel()  # no batch to finish: it was still trying to reach the log
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._task is not None:
            try:
                await asyncio.wait_for(asyncio.shield(self._task), self.stop_grace)
            except TimeoutError:
                log.warning(
                    "projector still busy %.0fs after the stop, waiting on %s: its batch is cancelled, "
                    "uncommitted, and comes again at the next start",
                    self.stop_grace,
                    self._waited_on(),
                )
                self._task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await self._task
            except asyncio.CancelledError:
                if not self._task.done():  # this stop was cancelled: the projector goes with it
                    self._task.cancel()
                    raise
        self._task = None
        # each closed whatever the one before did: a reader's failure left DuckDB unclosed
        for part, close in (
            ("projector", self.projector.close),
            ("log reader", self.reader.close),
            ("dead letters", self.dead_letters.close),
            ("analytics store", self.store.close),
        ):
            try:
                await close()
            except Exception:
                log.exception("closing the %s failed", part)

    def _waited_on(self) -> str:
        """What a projector busy after the stop waits on: the stores applying its batch, else
        the log (the stop blamed "a store that hangs?" when a broker was gone or its group was
        rebalancing: a re-test)."""
        applying = sorted(self.projector.stats.applying)
        if applying:
            return f"{'store' if len(applying) == 1 else 'stores'} {', '.join(applying)} (a store that hangs?)"
        return "the log (a broker gone, or its consumer group rebalancing?)"

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[Pipeline]:
        try:
            await self.start()
        except BaseException:
            # a start refused half-way (a group the ACLs refuse) left its Kafka clients open:
            # "Unclosed AIOKafkaProducer" ERRORs after the one-line reason (a re-test)
            await self.stop()
            raise
        try:
            yield self
        finally:
            await self.stop()


def build_sinks(settings: Settings, store: AnalyticsStore, *, live: bool) -> list[Sink]:
    """The product's sinks; ``live``: the projector's, which never change a stored event (a
    replay's correct them: ``consumers.sinks.base``)."""
    sinks: list[Sink] = [DuckDBSink(store, corrects=not live), HealthHistorySink(store, settings.health)]
    if settings.database_url:
        from consumers.sinks.postgres import PostgresSink

        sinks.append(PostgresSink(settings.database_url, corrects=not live))
    return sinks


def build_pipeline(
    settings: Settings,
    *,
    group_id: str = DEFAULT_GROUP,
    batch_size: int = 5000,
    poll_timeout: float = 0.2,
    linger: float = 0.5,
) -> Pipeline:
    store = AnalyticsStore(
        analytics_path(settings),
        memory_limit=settings.duckdb_memory_limit,
        threads=settings.duckdb_threads,
        allowed_directories=[export_path(settings)],
    )
    reader = build_log_reader(settings, group_id)
    dead_letters = build_dead_letters(settings)
    projector = Projector(
        reader,
        build_sinks(settings, store, live=True),
        LogDeadLetters(dead_letters),
        batch_size=batch_size,
        poll_timeout=poll_timeout,
        linger=linger,
    )
    return Pipeline(reader, store, dead_letters, projector, CostTrackingService(store))
