"""The projector loop over the in-memory log: commit only after every sink applied a batch,
pause and retry on an unavailable sink, dead-letter poison, survive a crash mid-batch."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from analytics.store import AnalyticsStore, StoreError
from consumers.deadletter import DuckDBDeadLetters, LogDeadLetters, MemoryDeadLetters
from consumers.projector import Projector, ProjectorStats
from consumers.sinks.base import RejectedEvents, SinkError, latest_by_id
from consumers.sinks.duckdb import DuckDBSink
from gateway.eventlog.base import LogRecord
from gateway.eventlog.memory import MemoryEventLog
from gateway.events import UsageEvent
from gateway.ids import uuid7
from tests.support.fakes import ManualClock

START = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


def make_event(i: int, cost: Decimal | None = Decimal("0.0000025")) -> UsageEvent:
    return UsageEvent(
        event_id=str(uuid7()),
        request_id=f"req_{i}",
        attempt=1,
        created_at=START + timedelta(seconds=i),
        tenant_id="acme",
        provider="openai",
        requested_model="gpt-4o",
        provider_model="gpt-4o",
        outcome="success",
        latency_ms=10.0,
        prompt_tokens=10,
        completion_tokens=5,
        total_tokens=15,
        cost_usd=cost,
        price_version="v1",
        billable=True,
    )


class RestartableLog(MemoryEventLog):
    """The in-memory log, plus what a consumer restart does: read again from the last commit."""

    def __init__(self, journal: list[str] | None = None, poison: dict[str, bytes] | None = None) -> None:
        super().__init__()
        self.journal = journal if journal is not None else []
        self.poison = poison or {}
        self.commits: list[str] = []

    def restart(self) -> None:
        self._cursor = self._committed

    async def fetch(self, max_records: int, timeout: float) -> list[LogRecord]:
        records = await super().fetch(max_records, timeout)
        if records:
            self.journal.append(f"fetch {records[0].position}-{records[-1].position}")
        return [r._replace(value=self.poison[r.position]) if r.position in self.poison else r for r in records]

    async def commit(self, records: Sequence[LogRecord]) -> None:
        await super().commit(records)
        self.commits.append(records[-1].position)
        self.journal.append(f"commit {records[-1].position}")


class RecordingSink:
    """A sink keeping events by id (idempotent), journaling each call."""

    def __init__(self, name: str, journal: list[str] | None = None) -> None:
        self.name = name
        self.journal = journal if journal is not None else []
        self.events: dict[str, UsageEvent] = {}
        self.applies = 0

    async def start(self) -> None:
        return None

    async def apply(self, events: Sequence[UsageEvent]) -> None:
        self.applies += 1
        self.events.update((e.event_id, e) for e in events)
        self.journal.append(f"{self.name} applied {len(events)}")

    async def reset(self) -> None:
        self.events.clear()

    async def close(self) -> None:
        return None


class FlakySink(RecordingSink):
    """Unavailable for its first ``failures`` calls (a database that is down)."""

    def __init__(self, name: str, failures: int, journal: list[str] | None = None, error: Exception | None = None):
        super().__init__(name, journal)
        self.failures = failures
        self.error = error or SinkError(name, "connection refused")

    async def apply(self, events: Sequence[UsageEvent]) -> None:
        if self.failures > 0:
            self.failures -= 1
            self.journal.append(f"{self.name} failed")
            raise self.error
        await super().apply(events)


class SleepRecorder:
    def __init__(self) -> None:
        self.delays: list[float] = []

    async def __call__(self, delay: float) -> None:
        self.delays.append(delay)


async def until(check: Callable[[], bool], seconds: float = 5.0) -> None:
    async with asyncio.timeout(seconds):
        while not check():  # noqa: ASYNC110 - polling the projector's counters
            await asyncio.sleep(0.01)


async def publish(log: MemoryEventLog, count: int, start: int = 0) -> list[UsageEvent]:
    events = [make_event(i) for i in range(start, start + count)]
    for event in events:
        log.publish(event)
    return events


# --- the happy path -----------------------------------------------------------------------------
async def test_applies_every_batch_to_every_sink_then_commits() -> None:
    journal: list[str] = []
    log = RestartableLog(journal)
    a, b = RecordingSink("a", journal), RecordingSink("b", journal)
    events = await publish(log, 25)
    projector = Projector(log, [a, b], MemoryDeadLetters(), batch_size=10)

    assert await projector.run_until_idle() == 25

    assert set(a.events) == set(b.events) == {e.event_id for e in events}
    # each batch reaches every sink before it is committed, in log order ...
    applied = [line for line in journal if not line.startswith("fetch")]
    assert applied == [
        *("a applied 10", "b applied 10", "commit 10"),
        *("a applied 10", "b applied 10", "commit 20"),
        *("a applied 5", "b applied 5", "commit 25"),
    ]
    # ... while the next batch is read (and decoded) ahead, as the sinks work on the current one
    assert journal.index("fetch 11-20") < journal.index("commit 10")
    assert log.commits == ["10", "20", "25"]
    assert await log.lag() == 0
    stats = projector.stats
    assert (stats.events_applied, stats.batches_committed, stats.lag, stats.paused) == (25, 3, 0, False)
    assert stats.last_batch_size == 5
    assert stats.last_batch_at is not None


class BatchKeepingSink(RecordingSink):
    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.batches: list[Sequence[UsageEvent]] = []

    async def apply(self, events: Sequence[UsageEvent]) -> None:
        self.batches.append(events)
        await super().apply(events)


async def test_the_sinks_get_one_event_per_id_the_last_copy_deduplicated_once_for_all() -> None:
    log = RestartableLog()
    first, second = make_event(0), make_event(1)
    repriced = first.model_copy(update={"cost_usd": Decimal("0.0000031"), "price_version": "v2"})
    for event in (first, second, first, repriced):  # a producer retry, then a re-priced copy
        log.publish(event)
    a, b = BatchKeepingSink("a"), BatchKeepingSink("b")
    projector = Projector(log, [a, b], MemoryDeadLetters(), batch_size=10)

    assert await projector.run_until_idle() == 4  # records applied, as before

    [got] = a.batches
    assert [(e.event_id, e.cost_usd) for e in got] == [
        (first.event_id, Decimal("0.0000031")),  # the last copy, in the place of the first
        (second.event_id, Decimal("0.0000025")),
    ]
    assert b.batches == [got] and b.batches[0] is got  # made once, for every sink
    assert latest_by_id(got) is got  # no sink checks it again
    assert projector.stats.sink_events == {"a": 4, "b": 4}


class GatedSink(RecordingSink):
    """Applies a batch only once ``gate`` is set (a store slow to answer)."""

    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.gate = asyncio.Event()

    async def apply(self, events: Sequence[UsageEvent]) -> None:
        await self.gate.wait()
        await super().apply(events)


async def test_each_sink_counts_its_events_as_it_finishes_a_batch_before_the_commit() -> None:
    """``sink_events`` shows the sink ahead while another still works on the same batch (the
    consumer's /healthz serves it): the batch is not committed until both are done."""
    log = RestartableLog()
    fast, slow = RecordingSink("fast"), GatedSink("slow")
    await publish(log, 10)
    projector = Projector(log, [fast, slow], MemoryDeadLetters(), batch_size=10)
    running = asyncio.create_task(projector.run_until_idle())
    await until(lambda: projector.stats.sink_events.get("fast") == 10)
    assert projector.stats.sink_events == {"fast": 10}
    assert (projector.stats.events_applied, log.commits) == (0, [])
    slow.gate.set()
    assert await running == 10
    assert projector.stats.sink_events == {"fast": 10, "slow": 10} and log.commits == ["10"]


async def test_sink_names_must_be_unique() -> None:
    with pytest.raises(ValueError, match="unique"):
        Projector(MemoryEventLog(), [RecordingSink("a"), RecordingSink("a")], MemoryDeadLetters())


# --- an unavailable sink pauses the projector ---------------------------------------------------
async def test_unavailable_sink_pauses_retries_the_same_batch_then_commits() -> None:
    journal: list[str] = []
    log = RestartableLog(journal)
    healthy, flaky = RecordingSink("healthy", journal), FlakySink("flaky", 3, journal)
    events = await publish(log, 15)
    sleep = SleepRecorder()
    projector = Projector(log, [healthy, flaky], MemoryDeadLetters(), batch_size=10, sleep=sleep)

    await projector.run_until_idle()

    # paused on the first batch: no commit until the sink came back, and nothing fetched but
    # the one batch read ahead
    assert [line for line in journal if not line.startswith("fetch")][:6] == [
        "healthy applied 10",
        "flaky failed",
        "flaky failed",
        "flaky failed",
        "flaky applied 10",
        "commit 10",
    ]
    assert [line for line in journal[: journal.index("commit 10")] if line.startswith("fetch")] == [
        "fetch 1-10",
        "fetch 11-15",
    ]
    assert healthy.applies == 2  # the healthy sink was not asked again for the retried batch
    assert sleep.delays == [0.5, 1.0, 2.0]
    assert set(flaky.events) == set(healthy.events) == {e.event_id for e in events}
    assert log.commits == ["10", "15"]
    assert projector.stats.retries == 3
    assert projector.stats.paused is False
    assert "connection refused" in (projector.stats.last_error or "")
    # resumed: the error stays, with its time, so "ok" next to it reads as one recovered from
    health = projector.stats.health()
    assert health["status"] == "ok" and health["lastErrorAt"] is not None
    assert datetime.fromisoformat(str(health["lastErrorAt"])) <= datetime.now(UTC)


@pytest.mark.parametrize("failures", [6, 1100])
async def test_backoff_is_capped_and_driver_errors_count_as_unavailable(failures: int) -> None:
    """1,100 failures: 2 ** 1024 overflows a float, and the 1,025th retry of a database down for
    8.5 hours (at the 30 s cap) crashed the projector with OverflowError instead of waiting on."""
    log = RestartableLog()
    flaky = FlakySink("pg", failures, error=ConnectionRefusedError("connect call failed"))
    await publish(log, 3)
    sleep = SleepRecorder()
    projector = Projector(log, [flaky], MemoryDeadLetters(), retry_initial=0.25, retry_max=1.0, sleep=sleep)

    await projector.run_until_idle()

    assert sleep.delays == [0.25, 0.5] + [1.0] * (failures - 2)
    assert len(flaky.events) == 3 and projector.stats.paused is False


async def test_paused_state_is_visible_while_waiting() -> None:
    log = RestartableLog()
    await publish(log, 2)
    seen: list[bool] = []
    projector: Projector

    async def sleep(delay: float) -> None:
        seen.append(projector.stats.paused)

    projector = Projector(log, [FlakySink("pg", 2)], MemoryDeadLetters(), sleep=sleep)
    await projector.run_until_idle()
    assert seen == [True, True]
    assert projector.stats.paused is False


async def test_a_sink_unavailable_at_start_is_in_health_before_any_event() -> None:
    """An idle gateway whose Postgres was down at start showed ``ok`` and no error until its
    first call (a review)."""

    class DownAtStart(RecordingSink):
        async def start(self) -> None:
            raise SinkError(self.name, "connection refused")

    projector = Projector(RestartableLog(), [DownAtStart("postgres")], MemoryDeadLetters())
    await projector.start()
    health = projector.stats.health()
    assert health["lastError"] == "sink postgres not available at start: postgres: connection refused"
    assert health["lastErrorAt"] is not None


async def test_the_lag_is_measured_while_paused() -> None:
    """A store down for a while: the backlog grows and the lag shows it (it read 0 throughout a
    22 s Postgres outage, then jumped once the store was back)."""
    log = RestartableLog()
    await publish(log, 2)
    lags: list[int | None] = []
    projector: Projector

    async def sleep(delay: float) -> None:
        await publish(log, 10, start=100 + len(lags) * 10)  # traffic goes on meanwhile
        lags.append(projector.stats.lag)

    projector = Projector(log, [FlakySink("pg", 3)], MemoryDeadLetters(), sleep=sleep, lag_interval=0)
    await projector.run_until_idle()
    assert lags[0] == 2 and lags[1] == 12 and lags[2] == 22  # measured at each failed attempt
    assert projector.stats.lag == 0


class LagFailingLog(RestartableLog):
    """A log that cannot say its lag while ``down`` (a broker unreachable)."""

    down = False

    async def lag(self) -> int:
        if self.down:
            raise ConnectionError("Unable to bootstrap from [('kafka', 9092)]")
        return await super().lag()


async def test_a_lag_the_log_cannot_say_is_unknown_not_the_last_value() -> None:
    """With the broker down the consumer's health and metrics said "lag 0" (the last value it
    measured) for as long as the outage lasted; now the lag is unknown (None, with why and
    when) until the log answers again."""
    log = LagFailingLog()
    await publish(log, 3)
    projector = Projector(log, [RecordingSink("s")], MemoryDeadLetters(), lag_interval=0)
    await projector.run_until_idle()
    assert (projector.stats.lag, projector.stats.lag_error) == (0, None)
    log.down = True
    await publish(log, 2, start=10)
    await projector.run_until_idle()
    stats = projector.stats
    assert stats.lag is None and stats.lag_error is not None and "Unable to bootstrap" in stats.lag_error
    assert stats.lag_at is not None
    log.down = False
    await projector.run_until_idle()
    assert (stats.lag, stats.lag_error) == (0, None)


async def test_a_lag_measurement_that_hangs_is_unknown_within_the_timeout() -> None:
    """With the broker just gone, Kafka's offset requests wait out a 30 s request timeout: the
    lag stayed at its last value (0) for those 30 s, in /healthz and the metric."""

    class HangingLog(RestartableLog):
        async def lag(self) -> int:
            await asyncio.sleep(60)
            return 0

    log = HangingLog()
    await publish(log, 2)
    projector = Projector(log, [RecordingSink("s")], MemoryDeadLetters(), lag_interval=0)
    projector.lag_timeout = 0.05
    started = asyncio.get_running_loop().time()
    await projector.run_until_idle()
    assert asyncio.get_running_loop().time() - started < 5
    assert projector.stats.lag is None and "did not say its lag within 0.05s" in (projector.stats.lag_error or "")


async def test_a_lag_unsaid_names_the_latest_refusal_of_the_cluster() -> None:
    """A password rotated while ``consume`` ran: /healthz said ``ok`` with "the log did not say
    its lag within 5s" for as long as it lasted, and nothing said why (a review); aiokafka's own
    line names a broker's refusal."""
    import logging

    from aiokafka.errors import SaslAuthenticationFailed

    from gateway.eventlog import log_errors

    class HangingLog(RestartableLog):
        async def lag(self) -> int:
            await asyncio.sleep(60)
            return 0

    log_errors.remember_causes()
    log_errors._causes.clear()
    refusal = SaslAuthenticationFailed("Authentication failed due to invalid credentials with SASL mechanism PLAIN")
    logging.getLogger("aiokafka").error("Unable connect to node with id %s: %s", 1, refusal)
    projector = Projector(HangingLog(), [RecordingSink("s")], MemoryDeadLetters(), lag_interval=0)
    projector.lag_timeout = 0.05
    try:
        await projector.run_until_idle()
    finally:
        log_errors._causes.clear()  # no other test's lag error names it
    assert projector.stats.lag_error == (
        "the log did not say its lag within 0.05s (the latest refusal: broker 1: [Error 58] "
        "SaslAuthenticationFailed: Authentication failed due to invalid credentials with SASL mechanism PLAIN)"
    )


async def test_a_lag_not_measured_again_for_long_is_unknown_in_health() -> None:
    """Under load, a commit to a broker gone hung the projector's loop: /healthz showed the last
    lag (150), no error and ok for the whole 42 s outage, as did the metric."""

    class HangingCommitLog(RestartableLog):
        hang = False

        async def commit(self, records: Sequence[LogRecord]) -> None:
            if self.hang:
                await asyncio.sleep(60)
            await super().commit(records)

    log = HangingCommitLog()
    await publish(log, 3)
    projector = Projector(log, [RecordingSink("s")], MemoryDeadLetters(), lag_interval=0, poll_timeout=0.01)
    await projector.run_until_idle()
    assert projector.stats.health()["lag"] == 0
    projector.stats.lag_stale_after = 0.2
    log.hang = True
    await publish(log, 2, start=10)
    stop = asyncio.Event()
    task = asyncio.create_task(projector.run_forever(stop))
    await asyncio.sleep(0.5)
    health = projector.stats.health()
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    assert health["lag"] is None and "not measured for" in str(health["lagError"])
    assert health["status"] == "ok"  # not paused, not failing: only the lag is unknown


class HangingSink(RecordingSink):
    """A store that takes the statement and does not answer until ``release`` is set."""

    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.release = asyncio.Event()
        self.cancelled = False

    async def apply(self, events: Sequence[UsageEvent]) -> None:
        try:
            await self.release.wait()
        except asyncio.CancelledError:
            self.cancelled = True
            raise
        await super().apply(events)


async def test_a_sink_that_hangs_is_named_in_health_and_the_log(caplog: pytest.LogCaptureFixture) -> None:
    """A Postgres that hung (the proxy to it stopped) held its sink for the minute of its
    timeout while /healthz said ok and blamed the log, with no warning (review)."""
    log = RestartableLog()
    await publish(log, 3)
    projector = Projector(log, [RecordingSink("duckdb"), hanging := HangingSink("postgres")], MemoryDeadLetters())
    projector.stats.lag_stale_after = 0.2
    projector.stats.lag_at = datetime.now(UTC)
    stop = asyncio.Event()
    task = asyncio.create_task(projector.run_forever(stop))
    try:
        await until(lambda: "projector waits on sink(s) postgres" in caplog.text)
        health = projector.stats.health()
        assert health["status"] == "stalled" and list(health["stalledSinks"]) == ["postgres"]  # type: ignore[call-overload]
        assert "waiting on sink postgres" in str(health["lagError"])
        hanging.release.set()
        await until(lambda: projector.stats.events_applied == 3)
        assert projector.stats.health()["status"] == "ok" and "stalledSinks" not in projector.stats.health()
    finally:
        stop.set()
        await asyncio.wait_for(task, 2)


async def test_a_stop_while_a_sink_hangs_cancels_its_apply() -> None:
    log = RestartableLog()
    await publish(log, 3)
    hanging = HangingSink("postgres")
    projector = Projector(log, [hanging], MemoryDeadLetters())
    projector.stats.lag_stale_after = 0.05
    task = asyncio.create_task(projector.run_forever(asyncio.Event()))
    await until(lambda: bool(projector.stats.stalled()))
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    await asyncio.sleep(0)
    assert hanging.cancelled and log.commits == [] and projector.stats.applying == {}


async def test_a_pipeline_stop_cancels_a_batch_a_hung_store_holds(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A SIGTERM waited for a hung Postgres's statement timeout (68 s in a re-test), past an
    orchestrator's grace period: after ``stop_grace`` the batch is cancelled, uncommitted."""
    from analytics.costs import CostTrackingService
    from consumers.pipeline import Pipeline
    from gateway.eventlog.deadletter import SqliteDeadLetters

    log = RestartableLog()
    await publish(log, 3)
    hanging = HangingSink("postgres")
    store = AnalyticsStore(tmp_path / "a.duckdb")
    projector = Projector(log, [hanging], MemoryDeadLetters(), poll_timeout=0.01)
    letters = SqliteDeadLetters(tmp_path / "letters.sqlite3")
    pipeline = Pipeline(log, store, letters, projector, CostTrackingService(store), stop_grace=0.2)
    await pipeline.start()
    await until(lambda: bool(projector.stats.applying))
    started = asyncio.get_running_loop().time()
    await asyncio.wait_for(pipeline.stop(), 5)
    assert asyncio.get_running_loop().time() - started < 2
    assert hanging.cancelled and log.commits == []
    assert "still busy 0s after the stop, waiting on store postgres (a store that hangs?)" in caplog.text


class RefusedLog(RestartableLog):
    """A log whose start the cluster's ACLs refuse (a consumer group the user may not join)."""

    closed = False

    async def start(self) -> None:
        raise PermissionError("GroupAuthorizationFailedError: not-allowed")

    async def close(self) -> None:
        self.closed = True


async def test_a_start_refused_half_way_closes_what_it_opened(tmp_path: Path) -> None:
    """The ERRORs "Unclosed AIOKafkaProducer" and "Unclosed AIOKafkaConsumer" followed the one-line
    reason of a group the ACLs refused (a re-test): the dead letters had started, and nothing
    closed them, nor the store."""
    from analytics.costs import CostTrackingService
    from consumers.pipeline import Pipeline
    from gateway.eventlog.deadletter import SqliteDeadLetters

    log = RefusedLog()
    store = AnalyticsStore(tmp_path / "a.duckdb")
    letters = SqliteDeadLetters(tmp_path / "l.sqlite3")
    projector = Projector(log, [RecordingSink("a")], MemoryDeadLetters(), poll_timeout=0.01)
    pipeline = Pipeline(log, store, letters, projector, CostTrackingService(store), stop_grace=0.2)
    with pytest.raises(PermissionError):
        async with pipeline.running():
            pytest.fail("started")
    assert log.closed
    with pytest.raises(StoreError, match="not open"):
        store.connection  # noqa: B018


class StuckLog(RestartableLog):
    """A log whose commit never answers (a broker gone, a group rebalancing) and whose close
    fails inside the client (aiokafka's fetcher re-raising its cancelled fetch)."""

    async def commit(self, records: Sequence[LogRecord]) -> None:
        await asyncio.Event().wait()

    async def close(self) -> None:
        raise RuntimeError("the client's stop failed")


async def test_a_stop_waiting_on_the_log_says_so_and_closes_the_stores_whatever_the_reader_does(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A re-test's SIGTERM with the broker gone: the stop blamed "a store that hangs?", then the
    reader's close raised, and the analytics store was never closed (exit 1, a traceback)."""
    from analytics.costs import CostTrackingService
    from consumers.pipeline import Pipeline
    from gateway.eventlog.deadletter import SqliteDeadLetters

    log = StuckLog()
    await publish(log, 3)
    store = AnalyticsStore(tmp_path / "a.duckdb")
    projector = Projector(log, [RecordingSink("a")], MemoryDeadLetters(), poll_timeout=0.01, linger=0)
    pipeline = Pipeline(
        log, store, SqliteDeadLetters(tmp_path / "l.sqlite3"), projector, CostTrackingService(store), stop_grace=0.2
    )
    await pipeline.start()
    await until(lambda: projector.stats.events_applied == 0 and bool(projector.stats.sink_events))
    await asyncio.wait_for(pipeline.stop(), 5)
    assert "waiting on the log (a broker gone, or its consumer group rebalancing?)" in caplog.text
    assert "store that hangs" not in caplog.text
    assert "closing the log reader failed" in caplog.text
    with pytest.raises(StoreError, match="not open"):  # closed: the file is another process's to open
        store.connection  # noqa: B018


async def test_stop_while_paused_leaves_the_batch_uncommitted() -> None:
    log = RestartableLog()
    await publish(log, 5)
    down = FlakySink("pg", 10**9)
    projector = Projector(log, [down], MemoryDeadLetters(), poll_timeout=0.01, retry_initial=0.01)
    stop = asyncio.Event()
    task = asyncio.create_task(projector.run_forever(stop))
    await until(lambda: projector.stats.retries >= 3)
    assert projector.stats.paused
    stop.set()
    await asyncio.wait_for(task, 2)
    assert log.commits == []
    assert await log.lag() == 5


async def test_run_forever_follows_the_log_until_stopped() -> None:
    log = RestartableLog()
    sink = RecordingSink("a")
    projector = Projector(log, [sink], MemoryDeadLetters(), batch_size=50, poll_timeout=0.05)
    stop = asyncio.Event()
    task = asyncio.create_task(projector.run_forever(stop))
    first = await publish(log, 30)
    second = await publish(log, 30, start=30)
    await until(lambda: projector.stats.events_applied >= 60)
    stop.set()
    await asyncio.wait_for(task, 2)
    assert set(sink.events) == {e.event_id for e in first + second}
    assert await log.lag() == 0


# --- poison and refused events ------------------------------------------------------------------
#: records no store can hold, each found to stall or crash-loop the projector (a review): each
#: is now unreadable, dead-lettered before any sink, the same way in every store
_UNSTORABLE = [
    (b'"http_status":null', b'"http_status":2147483648', "http_status"),  # DuckDB INTEGER: "paused"
    (b'"attempt":1,', b'"attempt":2147483648,', "attempt"),
    (b'"tenant_id":"acme"', b'"tenant_id":"' + b"t" * 2700 + b'"', "tenant_id"),  # Postgres b-tree row
    (b'"request_id":"req_0"', b'"request_id":"' + b"r" * 600 + b'"', "request_id"),
    (b'"tenant_id":"acme"', b'"tenant_id":"ac\\ud800me"', "tenant_id"),  # orjson: TypeError, restarts
    (b'"provider_model":"gpt-4o"', b'"provider_model":"gpt\\udc00"', "lone surrogate"),
    (b'"request_id":"req_0"', b'"request_id":"req\\u00000"', "NUL"),  # a key: Postgres refused it
    (b'"created_at":"2026-03-01T12:00:00Z"', b'"created_at":"0001-01-01T00:30:00+01:00"', "year 1"),
    (b'"total_tokens":15', b'"total_tokens":9223372036854775807', "total_tokens"),  # the day's rollup
    (b'"prompt_tokens":10', b'"prompt_tokens":2147483648', "prompt_tokens"),  # Postgres INTEGER
    (b'"ttft_ms":null', b'"ttft_ms":NaN', "ttft_ms"),  # NULL in DuckDB, NaN in Postgres
    (b'"latency_ms":10.0', b'"latency_ms":"Infinity"', "latency_ms"),
    (b'"cost_usd":"0.0000025"', b'"cost_usd":"1E+30"', "cost_usd"),  # replay: InvalidOperation
    (b'"cost_usd":"0.0000025"', b'"cost_usd":"12345678901234567890.5"', "cost_usd"),
    # 10 digits before the point, and 10**10 once rounded to the stores' 10 decimals (a re-test)
    (b'"cost_usd":"0.0000025"', b'"cost_usd":"9999999999.99999999995"', "cost_usd"),
    (b'"cost_usd":"0.0000025"', b'"cost_usd":"-9999999999.99999999999"', "cost_usd"),
]


def _unstorable(good: bytes, bad: bytes) -> bytes:
    raw = make_event(0).to_json()
    assert good in raw
    return raw.replace(good, bad)


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (b"not json", "undecodable"),
        (b'{"schema_version": 99, "event_id": "x"}', "schema_version"),
        (b"[1, 2]", "JSON object"),
        (b'{"schema_version": 1, "event_id": "x"}', "validation error"),
        (b'{"schema_version": 1, "x": ' + b"[" * 3000 + b"]" * 3000 + b"}", "nested too deep"),
        *((_unstorable(good, bad), reason) for good, bad, reason in _UNSTORABLE),
    ],
)
async def test_poison_is_dead_lettered_and_the_rest_applied(raw: bytes, reason: str) -> None:
    log = RestartableLog(poison={"3": raw})
    events = await publish(log, 6)
    sink = RecordingSink("a")
    dead = MemoryDeadLetters()
    projector = Projector(log, [sink], dead, batch_size=10)

    await projector.run_until_idle()

    assert set(sink.events) == {e.event_id for i, e in enumerate(events) if i != 2}
    [letter] = dead.letters.values()
    assert (letter.raw, letter.position) == (raw, "3")
    assert reason in letter.reason
    assert log.commits == ["6"]
    assert (projector.stats.events_applied, projector.stats.events_dead_lettered) == (5, 1)


async def test_poison_with_a_float_cost_or_a_naive_time_is_dead_lettered() -> None:
    good = make_event(0)
    float_cost = good.to_json().replace(b'"cost_usd":"0.0000025"', b'"cost_usd":0.0000025')
    naive = good.to_json().replace(b'"2026-03-01T12:00:00Z"', b'"2026-03-01T12:00:00"')
    assert float_cost != good.to_json() != naive
    log = RestartableLog(poison={"1": float_cost, "2": naive})
    await publish(log, 3)
    dead = MemoryDeadLetters()
    await Projector(log, [RecordingSink("a")], dead).run_until_idle()
    assert sorted(letter.position for letter in dead.letters.values()) == ["1", "2"]


@pytest.mark.parametrize("tokens", [2**70, 2**64 - 1, 2**63, -(2**63)])
async def test_token_counts_no_store_can_hold_are_poison_not_a_stalled_projector(tmp_path: Path, tokens: int) -> None:
    """A record no gateway wrote (the gateway takes upstream counts up to 2**62): before, such a
    count reached the DuckDB sink's batch file, whose TypeError restarted the projector forever."""
    good = make_event(0)
    assert b'"prompt_tokens":10,' in good.to_json()
    bad = good.to_json().replace(b'"prompt_tokens":10,', b'"prompt_tokens":%d,' % tokens)
    log = RestartableLog(poison={"2": bad})
    events = await publish(log, 3)
    store = AnalyticsStore(tmp_path / "a.duckdb")
    dead = MemoryDeadLetters()
    projector = Projector(log, [DuckDBSink(store), RecordingSink("b")], dead)
    await projector.start()
    try:
        assert await projector.run_until_idle() == 2
        rows = await store.fetchall("SELECT event_id FROM usage_facts ORDER BY event_id")
    finally:
        await store.close()
    assert [r[0] for r in rows] == sorted(e.event_id for i, e in enumerate(events) if i != 1)
    [letter] = dead.letters.values()
    assert letter.position == "2" and "prompt_tokens" in letter.reason
    assert log.commits == ["3"]


async def test_negative_counts_an_older_gateway_wrote_are_projected_not_dead_lettered(tmp_path: Path) -> None:
    """Gateways before c1a6653 recorded an upstream's ``prompt_tokens: -5`` as it came and billed
    the call; a later version refused the record as undecodable and the billed call vanished
    from the stores after an upgrade (review finding)."""
    old = make_event(0).to_json().replace(b'"prompt_tokens":10,', b'"prompt_tokens":-5,')
    log = RestartableLog(poison={"1": old})
    await publish(log, 2)
    store = AnalyticsStore(tmp_path / "a.duckdb")
    dead = MemoryDeadLetters()
    projector = Projector(log, [DuckDBSink(store)], dead)
    await projector.start()
    try:
        assert await projector.run_until_idle() == 2
        rows = await store.fetchall("SELECT prompt_tokens, cost_usd FROM usage_facts ORDER BY prompt_tokens")
    finally:
        await store.close()
    assert dead.letters == {} and rows[0][0] == -5 and rows[0][1] == make_event(0).cost_usd


async def test_dead_letters_go_to_the_duckdb_table_once() -> None:
    store = AnalyticsStore()
    await store.open()
    try:
        dead = DuckDBDeadLetters(store)
        log = RestartableLog(poison={"2": b"\xff garbage"})
        await publish(log, 3)
        sink = DuckDBSink(store)
        await Projector(log, [sink], dead, batch_size=2).run_until_idle()
        await log.seek_to_beginning()  # a replay: the poison comes again
        await Projector(log, [sink], dead, batch_size=2).run_until_idle()
        rows = await store.fetchall("SELECT position, raw, reason FROM dead_letters")
        assert [(r[0], r[1]) for r in rows] == [("2", b"\xff garbage")]
        assert "undecodable" in rows[0][2]
        assert await store.fetchall("SELECT count(*) FROM usage_facts") == [(2,)]
    finally:
        await store.close()


class PickySink(RecordingSink):
    """Refuses any batch holding one given event (a value its column cannot hold)."""

    def __init__(self, name: str, refused: str) -> None:
        super().__init__(name)
        self.refused = refused

    async def apply(self, events: Sequence[UsageEvent]) -> None:
        if any(e.event_id == self.refused for e in events):
            raise RejectedEvents(self.name, "numeric field overflow")
        await super().apply(events)


async def test_an_event_a_sink_refuses_is_isolated_and_dead_lettered() -> None:
    log = RestartableLog()
    events = await publish(log, 9)
    bad = events[4]
    picky, other = PickySink("picky", bad.event_id), RecordingSink("other")
    dead = MemoryDeadLetters()
    projector = Projector(log, [picky, other], dead, batch_size=100)

    await projector.run_until_idle()

    assert set(picky.events) == {e.event_id for e in events} - {bad.event_id}
    assert set(other.events) == {e.event_id for e in events}
    [letter] = dead.letters.values()
    assert letter.position == "5"
    assert UsageEvent.from_json(letter.raw) == bad
    assert "refused by sink picky" in letter.reason
    assert log.commits == ["9"]
    assert (projector.stats.events_applied, projector.stats.events_dead_lettered) == (8, 1)


# --- a crash mid-batch --------------------------------------------------------------------------
class CrashingSink:
    """The real DuckDB sink, but the process "dies" half-way through the second batch."""

    name = "duckdb"

    def __init__(self, inner: DuckDBSink) -> None:
        self.inner = inner
        self.batches = 0

    async def start(self) -> None:
        await self.inner.start()

    async def apply(self, events: Sequence[UsageEvent]) -> None:
        self.batches += 1
        if self.batches == 2:
            await self.inner.apply(events[: len(events) // 2])
            raise RuntimeError("killed")
        await self.inner.apply(events)

    async def reset(self) -> None:
        await self.inner.reset()

    async def close(self) -> None:
        await self.inner.close()


async def test_crash_mid_batch_then_restart_from_the_last_commit_has_no_duplicates() -> None:
    store = AnalyticsStore()
    await store.open()
    try:
        log = RestartableLog()
        events = [make_event(i, cost=Decimal("0.0000025") * (i + 1)) for i in range(50)]
        for event in events:
            log.publish(event)
        sink = DuckDBSink(store)
        with pytest.raises(RuntimeError, match="killed"):
            await Projector(log, [CrashingSink(sink)], MemoryDeadLetters(), batch_size=20).run_until_idle()
        assert log.commits == ["20"]
        assert await store.fetchall("SELECT count(*) FROM usage_facts") == [(30,)]  # 20 + half of 20

        log.restart()  # a new consumer resumes after the last commit: 21..50 again
        await Projector(log, [sink], MemoryDeadLetters(), batch_size=20).run_until_idle()

        rows = await store.fetchall("SELECT count(*), count(DISTINCT event_id), sum(cost_usd) FROM usage_facts")
        assert rows == [(50, 50, sum((e.cost_usd or Decimal(0) for e in events), Decimal(0)))]
        assert await log.lag() == 0
    finally:
        await store.close()


# --- odds and ends ------------------------------------------------------------------------------
class FailingCommitLog(RestartableLog):
    async def commit(self, records: Sequence[LogRecord]) -> None:
        raise ConnectionError("coordinator unavailable")


async def test_a_failed_commit_is_counted_not_fatal() -> None:
    log = FailingCommitLog()
    await publish(log, 4)
    sink = RecordingSink("a")
    projector = Projector(log, [sink], MemoryDeadLetters(), batch_size=2)
    await projector.run_until_idle()
    assert len(sink.events) == 4
    assert projector.stats.commit_failures == 2


async def test_start_tolerates_an_unavailable_sink() -> None:
    class Down(RecordingSink):
        async def start(self) -> None:
            raise SinkError(self.name, "connection refused")

    log = RestartableLog()
    await publish(log, 1)
    sink = Down("pg")
    projector = Projector(log, [sink], MemoryDeadLetters())
    await projector.start()
    await projector.run_until_idle()
    await projector.close()
    assert len(sink.events) == 1


def test_stats_are_plain_values() -> None:
    projector = Projector(MemoryEventLog(), [], MemoryDeadLetters())
    stats: Any = projector.stats
    assert stats.events_applied == 0 and stats.lag is None


class BrokenDlq:
    def __init__(self, failures: int) -> None:
        self.failures = failures
        self.published: list[tuple[bytes, str, str]] = []

    async def start(self) -> None:
        return None

    async def close(self) -> None:
        return None

    async def dead_letter(self, raw: bytes, reason: str, source_position: str) -> None:
        if self.failures:
            self.failures -= 1
            raise RuntimeError("KafkaConnectionError: broker down")
        self.published.append((raw, reason, source_position))


async def test_the_log_dead_letter_adapters_plug_in_and_their_outages_pause() -> None:
    log = RestartableLog(poison={"2": b"{oops"})
    await publish(log, 3)
    dlq = BrokenDlq(failures=2)
    sleep = SleepRecorder()
    projector = Projector(log, [RecordingSink("a")], LogDeadLetters(dlq), sleep=sleep)
    await projector.run_until_idle()
    assert [(raw, position) for raw, _, position in dlq.published] == [(b"{oops", "2")]
    assert sleep.delays == [0.5, 1.0]
    assert log.commits == ["3"]


async def test_batches_start_at_most_once_per_linger_and_a_small_one_waits_for_company() -> None:
    log = MemoryEventLog()
    clock = ManualClock()
    sleeps: list[float] = []

    async def sleep(seconds: float) -> None:
        sleeps.append(seconds)
        clock.advance(seconds)
        await publish(log, 4, start=10)  # more events arrive while the second batch lingers

    await publish(log, 1)
    projector = Projector(log, [], MemoryDeadLetters(), linger=0.5, sleep=sleep, poll_timeout=0.01, clock=clock)
    stop = asyncio.Event()
    batches: list[int] = []

    class StopAfterTwoBatches(RecordingSink):
        async def apply(self, events: Sequence[UsageEvent]) -> None:
            await super().apply(events)
            batches.append(len(events))
            clock.advance(0.1)  # the batch took 100 ms
            if len(batches) == 1:
                await publish(log, 1, start=5)  # one more event, 100 ms after the first batch
            else:
                stop.set()

    projector.sinks = [StopAfterTwoBatches("a")]
    await asyncio.wait_for(projector.run_forever(stop), 5)
    # the first event after a quiet spell goes at once; the next one, 100 ms later, waits the
    # rest of the 500 ms interval and goes with what arrived meanwhile
    assert batches == [1, 5]
    assert sleeps[0] == pytest.approx(0.4)
    assert projector.stats.batches_committed == 2 and projector.stats.events_applied == 6


async def test_a_wall_clock_stepped_back_neither_stalls_the_linger_nor_the_lag() -> None:
    """The clock was a day ahead for the previous batch, then corrected: the linger waited a day
    (the cost store stood still, /healthz said ok) and the lag was not measured for a day."""
    log = MemoryEventLog()
    clock = ManualClock()
    sleeps: list[float] = []

    async def sleep(seconds: float) -> None:
        sleeps.append(seconds)

    projector = Projector(log, [RecordingSink("a")], MemoryDeadLetters(), linger=0.5, sleep=sleep, clock=clock)
    await publish(log, 1)
    clock.advance(86_400)  # a day ahead
    assert await projector.run_until_idle() == 1
    measured = projector.stats.lag_at
    clock.advance(-86_400)  # corrected
    await publish(log, 1, start=5)
    assert await projector.run_until_idle() == 1
    assert max(sleeps, default=0) <= 0.5
    assert projector.stats.lag_at is not None and measured is not None and projector.stats.lag_at < measured


async def test_a_batch_is_decoded_in_slices_between_which_the_loop_runs() -> None:
    """In the embedded serve the projector shares the event loop with the requests: decoding a
    big batch gives the loop back every DECODE_SLICE records, and decodes what the one-go
    decode does (events in order, poison kept aside)."""
    from consumers.projector import DECODE_SLICE

    log = RestartableLog(poison={"5": b"{not json", "700": b'{"schema_version": 99}'})
    events = await publish(log, 1000)
    projector = Projector(log, [RecordingSink("a")], MemoryDeadLetters(), batch_size=1000)
    turns = 0

    async def ticker() -> None:
        nonlocal turns
        while True:
            turns += 1
            await asyncio.sleep(0)

    task = asyncio.ensure_future(ticker())
    await asyncio.sleep(0)
    before = turns
    batch = await projector._next_batch(0.1)
    during = turns - before
    task.cancel()
    assert batch is not None
    assert during >= 1000 // DECODE_SLICE - 1  # the loop ran between the slices
    whole = projector._decode(batch.records)
    assert [e.event_id for e in batch.events] == [e.event_id for e in whole.events]
    assert [e.event_id for e in batch.events] == [
        e.event_id for i, e in enumerate(events, start=1) if i not in (5, 700)
    ]
    assert [r.position for r, _ in batch.poison] == ["5", "700"] == [r.position for r, _ in whole.poison]


async def test_a_catch_up_ends_once_the_log_is_read_again_though_traffic_never_stops() -> None:
    """The catch-up of a new store ended only on a fetch that found nothing, which steady traffic
    never gives: ``catching_up`` for minutes after the member was level with the others (a
    review). It ends once the reader has read again all the group had committed."""
    log = RestartableLog()
    await publish(log, 60)
    await log.commit(await log.fetch(60, 0))  # projected before; the new store holds none
    await log.seek_to_beginning()
    sink = RecordingSink("duckdb")
    projector = Projector(log, [sink], MemoryDeadLetters(), batch_size=10, poll_timeout=0.05)
    caught_up: list[int] = []

    async def level() -> None:
        caught_up.append(len(sink.events))

    projector.on_caught_up = level
    stop = asyncio.Event()
    running = asyncio.create_task(projector.run_forever(stop))

    async def traffic() -> None:  # an event every 2 ms: no fetch ever comes back empty
        i = 60
        while not stop.is_set():
            log.publish(make_event(i))
            i += 1
            await asyncio.sleep(0.002)

    sending = asyncio.create_task(traffic())
    try:
        await until(lambda: bool(caught_up), seconds=5.0)
    finally:
        stop.set()
        await asyncio.gather(running, sending)
    assert 60 <= caught_up[0] < 120


async def test_the_stores_reach_the_logs_end_only_once_it_has_been_read_to_it() -> None:
    """A new store filled from the log's start with no position of its group to catch up to is
    partial until the log is read to its end: an export then answered 200 with part of its days
    (a re-test). A batch smaller than the batch size, or a fetch of nothing, is that end."""
    log = RestartableLog()
    await publish(log, 12)
    sink = RecordingSink("s")
    projector = Projector(log, [sink], MemoryDeadLetters(), batch_size=5, poll_timeout=0.01)
    seen: list[tuple[int, bool]] = []
    apply = sink.apply

    async def watching(events: Sequence[UsageEvent]) -> None:
        seen.append((len(sink.events), projector.stats.reached_end))
        await apply(events)

    sink.apply = watching  # type: ignore[method-assign]
    stop = asyncio.Event()
    running = asyncio.create_task(projector.run_forever(stop))
    async with asyncio.timeout(5):
        while not projector.stats.reached_end:  # noqa: ASYNC110
            await asyncio.sleep(0.01)
    stop.set()
    await running
    assert seen[:3] == [(0, False), (5, False), (10, False)] and len(sink.events) == 12


async def test_a_store_is_not_whole_before_its_projector_reached_the_logs_end() -> None:
    """What costs, SQL and the Parquet export wait for (``ReplayService.answers_whole``: ``whole``,
    and ``read_to_the_end`` for a store being filled); the retention trim waits for ``whole``
    only (it deletes what every reader has projected)."""
    from analytics.store import AnalyticsStore
    from consumers import catch_up
    from consumers.replay_http import ReplayService
    from gateway.api.auth import Authenticator
    from gateway.settings import Settings

    store = AnalyticsStore()
    await store.open()
    await store.run(lambda conn: conn.execute(f"DELETE FROM {catch_up.TABLE}"))  # a new store's mark: its start's
    stats = ProjectorStats()
    service = ReplayService(Settings(_env_file=None), store, Authenticator([], "d"), "g", stats=stats)  # type: ignore[call-arg]
    assert await service.whole() and not service.read_to_the_end()
    stats.reached_end = True
    assert await service.whole() and service.read_to_the_end()
    stats.catching_up = True
    assert not await service.whole()
    # costs and SQL: a new store filled from the log's start with no position of its group is
    # partial until it reached the end (it answered short totals: a diff review)
    stats.catching_up, stats.reached_end, stats.filling = False, False, True
    assert await service.whole() and not await service.answers_whole()
    stats.reached_end = True
    assert await service.answers_whole()
    await store.close()
