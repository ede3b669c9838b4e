"""The embedded SQLite log and the Kafka spool: durability against ``kill -9``, publish cost,
checkpointing, positions, dead letters and the factory (no broker needed)."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sqlite3
import statistics
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import pytest

from gateway.eventlog.deadletter import KafkaDeadLetters, SqliteDeadLetters
from gateway.eventlog.factory import build_dead_letters, build_event_log, build_log_reader
from gateway.eventlog.kafka_producer import KafkaEventLog
from gateway.eventlog.kafka_reader import KafkaLogReader
from gateway.eventlog.sqlite import SqliteEventLog, SqliteLogReader, SqliteOutbox
from gateway.events import UsageEvent
from gateway.ids import uuid7
from gateway.settings import Settings

REPO = Path(__file__).resolve().parents[2]
#: nothing listens here: the Kafka adapter can only spool
UNREACHABLE_KAFKA = "127.0.0.1:9"


def make_event(i: int) -> UsageEvent:
    return UsageEvent(
        event_id=str(uuid7()),
        request_id=f"req_{i}",
        attempt=1,
        created_at=datetime(2026, 3, 1, tzinfo=UTC) + timedelta(milliseconds=i),
        tenant_id=f"tenant-{i % 7}",
        provider="anthropic",
        requested_model="claude-sonnet-4",
        provider_model="claude-sonnet-4-20250514",
        outcome="success",
        latency_ms=250.0,
        prompt_tokens=1000,
        completion_tokens=300,
        total_tokens=1300,
        cost_usd=Decimal("0.0075"),
        price_version="builtin-1",
        billable=True,
    )


def stored_ids(path: Path, table: str) -> list[str]:
    with sqlite3.connect(path) as conn:
        rows = conn.execute(f"SELECT value FROM {table} ORDER BY seq").fetchall()
    return [UsageEvent.from_json(value).event_id for (value,) in rows]


# --- durability -----------------------------------------------------------------------------

CHILD = """
import asyncio, sys
from pathlib import Path
from tests.unit.test_sqlite_eventlog import make_event, UNREACHABLE_KAFKA
from gateway.eventlog.sqlite import SqliteEventLog
from gateway.eventlog.kafka_producer import KafkaEventLog

CALLS = 8  # callers in flight together when events are staged (group commit)

async def main(kind, path, mode):
    if kind == "sqlite":
        log = SqliteEventLog(path, checkpoint_interval=0.05)
    else:
        log = KafkaEventLog(UNREACHABLE_KAFKA, "llm.usage", path, checkpoint_interval=0.05)
    await log.start()
    out = sys.stdout
    counter = iter(range(10**9))

    async def publishing():
        while True:
            for _ in range(50):
                event = make_event(next(counter))
                log.publish(event)
                out.write(event.event_id + "\\n")  # the client got its response
                out.flush()
            await asyncio.sleep(0)

    async def staging():
        while True:
            event = make_event(next(counter))
            log.stage(event)
            await log.settled(CALLS)
            out.write(event.event_id + "\\n")  # the client got its response
            out.flush()

    if mode == "publish":
        await publishing()
    else:
        await asyncio.gather(*(staging() for _ in range(CALLS)))

asyncio.run(main(sys.argv[1], Path(sys.argv[2]), sys.argv[3]))
"""


def acknowledged_until_sigkill(kind: str, path: Path, mode: str = "publish", count: int = 3000) -> list[str]:
    """Run ``CHILD`` (it prints an event id per acknowledged event; ``mode``: ``publish`` one by
    one, or ``stage`` with 8 callers in flight), ``kill -9`` it after ``count``
    acknowledgements; every id it printed."""
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, kind, str(path), mode],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    assert child.stdout is not None
    acknowledged: list[str] = []
    try:
        while len(acknowledged) < count:
            line = child.stdout.readline()
            if not line:
                pytest.fail(f"child exited early: {child.stderr.read() if child.stderr else ''}")
            acknowledged.append(line.strip())
        child.send_signal(signal.SIGKILL)
        child.wait(10)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait(10)
    acknowledged.extend(line.strip() for line in child.stdout.read().splitlines() if line.strip())
    child.stdout.close()
    if child.stderr is not None:
        child.stderr.close()
    assert child.returncode == -signal.SIGKILL
    return acknowledged


@pytest.mark.parametrize(("kind", "table"), [("sqlite", "events"), ("kafka-spool", "spool")])
def test_sigkill_right_after_publish_loses_nothing(tmp_path: Path, kind: str, table: str) -> None:
    path = tmp_path / "log.sqlite3"
    acknowledged = acknowledged_until_sigkill(kind, path)
    stored = stored_ids(path, table)
    assert set(acknowledged) <= set(stored), f"{len(set(acknowledged) - set(stored))} acknowledged events lost"
    assert stored[: len(acknowledged)] == acknowledged  # in publish order, nothing in between


# --- publish cost and concurrency -------------------------------------------------------------


async def test_publish_is_fast_while_a_reader_consumes(tmp_path: Path) -> None:
    path = tmp_path / "events.sqlite3"
    log = SqliteEventLog(path)
    await log.start()
    reader = SqliteLogReader(path, "projector", poll_interval=0.001)
    await reader.start()
    events = [make_event(i) for i in range(5000)]
    read: list[str] = []

    async def consume() -> None:
        while len(read) < len(events):
            records = await reader.fetch(1000, 0.05)
            read.extend(UsageEvent.from_json(r.value).event_id for r in records)
            await reader.commit(records)

    consumer = asyncio.create_task(consume())
    costs = []
    for i, event in enumerate(events):
        started = time.perf_counter()
        log.publish(event)
        costs.append(time.perf_counter() - started)
        if i % 100 == 0:
            await asyncio.sleep(0)
    async with asyncio.timeout(30):
        await consumer
    await reader.close()
    await log.close()

    assert read == [e.event_id for e in events]
    median_us = statistics.median(costs) * 1e6
    logging.getLogger(__name__).info("publish median %.1f us", median_us)
    assert median_us < 100, f"publish takes {median_us:.0f} us (median)"


async def test_an_idle_reader_backs_off_and_polls_fast_again_once_records_come(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "events.sqlite3"
    log = SqliteEventLog(path)  # not started: no checkpoint task sleeping next to the reader
    reader = SqliteLogReader(path, "projector", poll_interval=0.01, max_poll_interval=0.08)
    await reader.start()
    waits: list[float] = []
    real_sleep = asyncio.sleep

    async def sleep(seconds: float) -> None:
        waits.append(round(seconds, 3))
        await real_sleep(0)

    monkeypatch.setattr(asyncio, "sleep", sleep)
    assert await reader.fetch(10, 0.5) == []  # idle: each empty poll doubles the wait, up to the cap
    assert waits[:6] == [0.01, 0.02, 0.04, 0.08, 0.08, 0.08]
    log.publish(make_event(1))
    assert len(await reader.fetch(10, 0.5)) == 1
    waits.clear()
    assert await reader.fetch(10, 0.02) == []
    assert waits[0] == 0.01  # records came: polling is fast again
    await reader.close()
    await log.close()


def test_publish_from_many_threads(tmp_path: Path) -> None:
    path = tmp_path / "events.sqlite3"
    log = SqliteEventLog(path)
    per_thread = 500
    batches = [[make_event(t * per_thread + i) for i in range(per_thread)] for t in range(4)]

    def publish_all(batch: list[UsageEvent]) -> None:
        for event in batch:
            log.publish(event)

    threads = [threading.Thread(target=publish_all, args=(batch,)) for batch in batches]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    asyncio.run(log.close())
    stored = stored_ids(path, "events")
    assert sorted(stored) == sorted(e.event_id for batch in batches for e in batch)
    for batch in batches:  # each thread's events in its order
        positions = [stored.index(e.event_id) for e in batch]
        assert positions == sorted(positions)


async def test_a_checkpoint_that_keeps_failing_is_logged_once_a_minute(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A disk that stays full logged a WARNING at every try (every 0.5 s: 7,200 lines an hour)."""
    outbox = SqliteOutbox(tmp_path / "events.sqlite3")
    tries = 0

    def full() -> None:
        nonlocal tries
        tries += 1
        raise sqlite3.OperationalError("database or disk is full")

    monkeypatch.setattr(outbox, "checkpoint", full)
    checkpoints = asyncio.create_task(outbox.run_checkpoints(0.005))
    while tries < 20:  # noqa: ASYNC110 - a counter, polled
        await asyncio.sleep(0.01)
    checkpoints.cancel()
    with pytest.raises(asyncio.CancelledError):
        await checkpoints
    outbox.close()
    warnings = [r for r in caplog.records if "checkpointing" in r.getMessage()]
    assert len(warnings) == 1 and "disk is full" in warnings[0].getMessage()


async def test_checkpoints_keep_the_wal_bounded_under_continuous_appends(tmp_path: Path) -> None:
    path = tmp_path / "events.sqlite3"
    outbox = SqliteOutbox(path, wal_limit_frames=500)
    checkpoints = asyncio.create_task(outbox.run_checkpoints(0.02))
    value = make_event(0).to_json()
    biggest = 0
    for i in range(20_000):
        outbox.append("t", value, i)
        if i % 200 == 0:
            # a moment for the checkpoint thread (a loaded 2-core machine let the WAL reach 60 MB
            # when the appends gave back only a loop turn)
            await asyncio.sleep(0.002)
            biggest = max(biggest, os.path.getsize(f"{path}-wal"))  # noqa: ASYNC240 - a stat
    checkpoints.cancel()
    with pytest.raises(asyncio.CancelledError):
        await checkpoints
    outbox.close()
    # 20k appends are ~20k WAL frames (80 MB) without checkpoints; the WAL restarts instead
    assert biggest < 40 * 1024 * 1024
    with sqlite3.connect(path) as conn:
        assert conn.execute("SELECT count(*) FROM events").fetchone()[0] == 20_000


# --- outbox, reader, publish failures -------------------------------------------------------


def test_outbox_count_survives_reopen_and_deletes_are_exact(tmp_path: Path) -> None:
    path = tmp_path / "spool.sqlite3"
    outbox = SqliteOutbox(path, table="spool")
    for i in range(2500):
        outbox.append("k", b"v%d" % i, i)
    assert outbox.count() == 2500
    assert outbox.delete_range(1, 2100, chunk=700) == 2100
    assert outbox.delete([2200, 2300, 9999]) == 2
    assert outbox.count() == 398
    outbox.close()
    reopened = SqliteOutbox(path, table="spool")
    assert reopened.count() == 398
    rows = reopened.read_after(0, 3)
    assert [r[0] for r in rows] == [2101, 2102, 2103]
    assert rows[0][1:] == ("k", b"v2100", 2100)
    reopened.close()


async def test_reader_positions_live_in_the_log_file(tmp_path: Path) -> None:
    path = tmp_path / "events.sqlite3"
    reader = SqliteLogReader(path, "projector")  # the log file does not exist yet
    await reader.start()
    log = SqliteEventLog(path)
    for i in range(5):
        log.publish(make_event(i))
    records = await reader.fetch(10, 1.0)
    assert [r.position for r in records] == ["1", "2", "3", "4", "5"]
    await reader.commit(records[:3])
    await reader.close()
    await log.close()
    with sqlite3.connect(path) as conn:
        assert conn.execute("SELECT group_id, position FROM positions").fetchall() == [("projector", 3)]


async def test_publish_after_close_does_not_raise(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    log = SqliteEventLog(tmp_path / "events.sqlite3")
    await log.start()
    await log.close()
    event = make_event(1)
    log.publish(event)
    assert event.event_id in caplog.text


def test_publish_failure_is_held_not_raised_and_logged_in_full_at_close(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "events.sqlite3"
    log = SqliteEventLog(path)
    with sqlite3.connect(path) as conn:
        conn.execute("DROP TABLE events")  # a storage failure that never heals
    event = make_event(1)
    log.publish(event)  # does not raise: the call it belongs to is answered
    assert log.pending() == 1 and "refuses usage events" in caplog.text
    asyncio.run(log.close())
    assert "usage event NOT stored" in caplog.text and event.model_dump_json() in caplog.text  # by hand


# --- Kafka adapter without a broker -------------------------------------------------------------


async def test_kafka_log_spools_when_the_broker_is_unreachable(tmp_path: Path) -> None:
    spool = tmp_path / "spool.sqlite3"
    log = KafkaEventLog(UNREACHABLE_KAFKA, "llm.usage", spool, backoff=(0.05, 0.2), request_timeout_ms=1000)
    await log.start()
    events = [make_event(i) for i in range(300)]
    slowest = 0.0
    for event in events:
        started = time.perf_counter()
        log.publish(event)
        slowest = max(slowest, time.perf_counter() - started)
    await asyncio.sleep(0.3)  # the forwarder fails to connect and backs off
    assert log.pending() == 300
    started = time.perf_counter()
    await log.close(timeout=0.5)
    assert time.perf_counter() - started < 5
    assert slowest < 0.5

    again = KafkaEventLog(UNREACHABLE_KAFKA, "llm.usage", spool)
    assert again.pending() == 300
    assert stored_ids(spool, "spool") == [e.event_id for e in events]
    await again.close(0.1)


# --- dead letters and factory ------------------------------------------------------------------


async def test_sqlite_dead_letters_keep_bytes_reason_and_position_once(tmp_path: Path) -> None:
    letters = SqliteDeadLetters(tmp_path / "events.sqlite3")
    await letters.start()
    await letters.dead_letter(b'{"schema_version": 99}', "unsupported schema_version 99", "17")
    await letters.dead_letter(b"\xff\x00", "not JSON", "18")
    await letters.dead_letter(b"\xff\x00", "not JSON", "18")  # redelivered: kept once
    stored = await letters.letters()
    await letters.close()
    assert [(d.value, d.reason, d.position) for d in stored] == [
        (b'{"schema_version": 99}', "unsupported schema_version 99", "17"),
        (b"\xff\x00", "not JSON", "18"),
    ]
    assert stored[0].created_at.tzinfo is not None


def test_factory_picks_the_embedded_log_without_kafka(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path / "data", kafka_bootstrap_servers=None)
    log = build_event_log(settings)
    assert isinstance(log, SqliteEventLog)
    assert log.path == tmp_path / "data" / "events.sqlite3"
    reader = build_log_reader(settings, "projector")
    assert isinstance(reader, SqliteLogReader)
    assert reader.path == log.path
    assert isinstance(build_dead_letters(settings), SqliteDeadLetters)
    asyncio.run(log.close())


def test_factory_picks_kafka_when_bootstrap_servers_are_set(tmp_path: Path) -> None:
    settings = Settings(
        data_dir=tmp_path, kafka_bootstrap_servers="k1:9092", topic="usage.v1", topic_partitions=6, instance_id="gw-2"
    )
    log = build_event_log(settings)
    assert isinstance(log, KafkaEventLog)
    assert (log.topic, log.bootstrap_servers) == ("usage.v1", "k1:9092")
    assert (tmp_path / "spool-gw-2.sqlite3").is_file()
    reader = build_log_reader(settings, "projector")
    assert isinstance(reader, KafkaLogReader)
    assert (reader.topic, reader.group_id) == ("usage.v1", "projector")
    letters = build_dead_letters(settings)
    assert isinstance(letters, KafkaDeadLetters)
    assert letters.topic == "usage.v1.dlq"
    asyncio.run(log.close(0.1))


def test_an_embedded_gateway_does_not_load_the_kafka_client(tmp_path: Path) -> None:
    """The embedded ``serve`` (gateway + in-process projector) never imports aiokafka: less memory
    and start-up for the default mode. A fresh interpreter, as ``llm-gateway serve`` starts."""
    code = (
        "import sys\n"
        "from gateway.app import create_app\n"
        "from gateway.server import server_installers\n"
        "from gateway.settings import Settings\n"
        f"s = Settings(data_dir={str(tmp_path)!r}, project=True)\n"
        "create_app(s, installers=server_installers(s))\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] == 'aiokafka'))\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "KAFKA_BOOTSTRAP_SERVERS"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    assert out.stdout.strip() == "[]", out.stdout


# --- a full disk ---------------------------------------------------------------------------------


def _fill(log: SqliteEventLog) -> sqlite3.Connection:
    """Make the log's file full for real: SQLite refuses to grow it (SQLITE_FULL, "database or
    disk is full"), as on a full disk; ``max_page_count`` raised again frees it."""
    writer = log._outbox._writer
    pages = writer.execute("PRAGMA page_count").fetchone()[0]
    writer.execute(f"PRAGMA max_page_count={pages}")
    return writer


async def test_a_full_disk_holds_the_events_and_writes_them_once_it_has_room(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Calls answered while the disk was full lost their events (424 of 448 in a black-box run):
    they are held in memory, in order, counted as pending, and written by the checkpoint loop
    once the file takes them, with none lost and none twice."""
    path = tmp_path / "events.sqlite3"
    log = SqliteEventLog(path, checkpoint_interval=0.02)
    await log.start()
    events = [make_event(i) for i in range(300)]
    for event in events[:5]:
        log.publish(event)
    writer = _fill(log)
    checkpoint, full = log._outbox.checkpoint, [True]

    def checkpoint_on_a_full_disk() -> None:  # on a real full disk the checkpoint fails too
        if full[0]:
            raise sqlite3.OperationalError("database or disk is full")
        checkpoint()

    log._outbox.checkpoint = checkpoint_on_a_full_disk  # type: ignore[method-assign]
    for event in events[5:150]:
        log.publish(event)
    for event in events[150:]:  # the group commit's path: every caller is released
        log.stage(event)
    await asyncio.wait_for(log.settled(), 5)
    assert log.pending() >= 290 and len(stored_ids(path, "events")) <= 10
    assert "refuses usage events (database or disk is full)" in caplog.text
    assert "NOT stored" not in caplog.text
    outage = log.outage()  # /healthz eventLog
    assert outage is not None and outage.error == f"{path} refuses writes: OperationalError: database or disk is full"
    await asyncio.sleep(0.1)  # the checkpoint loop fails a few times meanwhile, and lives on
    writer.execute("PRAGMA max_page_count=1073741823")  # room again
    full[0] = False
    for _ in range(250):
        if log.pending() == 0:
            break
        await asyncio.sleep(0.02)
    assert log.pending() == 0 and log.outage() is None
    assert stored_ids(path, "events") == [e.event_id for e in events]
    await log.close()


async def test_held_events_past_the_bound_are_logged_in_full(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    import gateway.eventlog.sqlite as sqlite_module

    monkeypatch.setattr(sqlite_module, "MAX_HELD_ROWS", 3)
    path = tmp_path / "events.sqlite3"
    log = SqliteEventLog(path)
    _fill(log)
    events = [make_event(i) for i in range(40)]
    for event in events:
        log.publish(event)
    stored = len(stored_ids(path, "events"))  # what fitted in the file's last page
    assert stored < 37 and log.pending() == 3
    for event in events[stored + 3 :]:  # dropped from memory: recoverable by hand from the log line
        assert f"usage event NOT stored in {path} (3 held already): {event.model_dump_json()}" in caplog.text
    assert events[stored + 2].model_dump_json() not in caplog.text  # held, not dropped
    await log.close()


async def test_an_event_stamped_past_datetimes_range_is_read_and_dead_lettered_not_a_stuck_batch(
    tmp_path: Path,
) -> None:
    """An event stamped 9999-12-31T23:00-05:00 (year 10000 in UTC): its log time raised in the
    reader and the batch never reached the projector; an event stamped 9999-12-31T23:59:30Z
    overflowed the health history and halted projection for good. Both are dead-lettered now,
    and the events around them projected."""
    from analytics.store import AnalyticsStore
    from consumers.projector import Projector
    from consumers.sinks.duckdb import DuckDBSink
    from consumers.sinks.health_history import HealthHistorySink
    from tests.unit.test_projector import MemoryDeadLetters

    path = tmp_path / "events.sqlite3"
    log = SqliteEventLog(path)
    await log.start()
    log.publish(make_event(1))
    await log.close(timeout=5)
    stamps = [(b"9999-12-31T23:00:00-05:00", 253402318800000), (b"9999-12-31T23:59:30Z", 253402300770000)]
    conn = sqlite3.connect(path)
    with conn:
        for i, (stamp, ts) in enumerate(stamps):
            value = make_event(10 + i).to_json()
            at = value.index(b'"created_at":"') + len(b'"created_at":"')
            value = value[:at] + stamp + value[value.index(b'"', at) :]
            conn.execute("INSERT INTO events (key, value, ts) VALUES (?, ?, ?)", ("t", value, ts))
        conn.execute("INSERT INTO events (key, value, ts) VALUES (?, ?, ?)", ("t", make_event(2).to_json(), 0))
    conn.close()
    store = AnalyticsStore(tmp_path / "a.duckdb")
    dead = MemoryDeadLetters()
    reader = SqliteLogReader(path, "projector")
    await reader.start()
    projector = Projector(reader, [DuckDBSink(store), HealthHistorySink(store)], dead)
    await projector.start()
    try:
        assert await asyncio.wait_for(projector.run_until_idle(), 30) == 2
    finally:
        await projector.close()
    assert sorted(letter.position for letter in dead.letters.values()) == ["2", "3"]
    assert all("created_at" in letter.reason for letter in dead.letters.values())


async def test_two_gateways_on_one_kafka_spool_are_refused_at_start(tmp_path: Path) -> None:
    """Two gateways on one data dir (no instance ids) both forwarded the one spool: each sent the
    other's records, and one said at its stop that it left records the other had sent (an
    upgrade review). The second is refused, in words saying what to do."""
    from gateway.eventlog.kafka_producer import KafkaEventLog

    spool = tmp_path / "spool.sqlite3"
    first = KafkaEventLog("127.0.0.1:1", "llm.usage", spool)
    with pytest.raises(OSError, match="LLM_GATEWAY_INSTANCE_ID"):
        KafkaEventLog("127.0.0.1:1", "llm.usage", spool)
    other = KafkaEventLog("127.0.0.1:1", "llm.usage", tmp_path / "spool-gw-2.sqlite3")  # its own spool
    await other.close(timeout=0.1)
    await first.close(timeout=0.1)
    again = KafkaEventLog("127.0.0.1:1", "llm.usage", spool)  # the first one's stop released it
    await again.close(timeout=0.1)


async def test_a_stop_on_a_full_disk_waits_for_room_then_counts_what_it_could_not_write(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The close gave up on its first try: a review's SIGTERM on a full disk lost the events of
    315 answered calls, and the stop line said they were on the log. It retries for its timeout
    (room made meanwhile: every event written), then counts what the file still refused."""
    path = tmp_path / "events.sqlite3"
    log = SqliteEventLog(path)
    await log.start()
    writer = _fill(log)
    events = [make_event(i) for i in range(20)]
    for event in events:
        log.publish(event)
    assert log.pending() > 0  # the file takes a few, then refuses the rest

    async def room_in_a_moment() -> None:
        await asyncio.sleep(0.3)
        writer.execute("PRAGMA max_page_count=1073741823")

    freeing = asyncio.create_task(room_in_a_moment())
    await log.close(timeout=5.0)
    await freeing
    assert stored_ids(path, "events") == [e.event_id for e in events] and log.lost() == 0
    assert "NOT stored" not in caplog.text
    # a file that refuses to the end: logged in full and counted, after the timeout
    other = SqliteEventLog(tmp_path / "other.sqlite3")
    await other.start()
    _fill(other)
    for event in events:
        other.publish(event)
    refused = other.pending()
    assert refused > 0
    started = time.monotonic()
    await other.close(timeout=0.5)
    assert 0.4 < time.monotonic() - started < 3 and other.lost() == refused
    assert f"usage event NOT stored in {tmp_path / 'other.sqlite3'}" in caplog.text


async def test_events_past_the_held_bound_count_as_lost_and_a_stop_writes_what_fits(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Past MAX_HELD_ROWS the events were logged "NOT stored" but not counted, so the stop said
    every event was on the log (a re-test); and the stop's last try was all or nothing."""
    import gateway.eventlog.sqlite as sqlite_log

    monkeypatch.setattr(sqlite_log, "MAX_HELD_ROWS", 5)
    log = SqliteEventLog(tmp_path / "events.sqlite3")
    await log.start()
    _fill(log)
    for i in range(40):
        log.publish(make_event(i))
    held = log._outbox.held()
    assert held == 5 and log.lost() > 0  # those past the bound, already
    lost_before = log.lost()
    await log.close(timeout=0.3)
    assert log.lost() == lost_before + held


def test_kafka_compression_is_one_of_the_codecs_kafka_knows(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("LLM_GATEWAY_KAFKA_COMPRESSION", "zstd")
    assert Settings().kafka_compression_type == "zstd"
    monkeypatch.setenv("LLM_GATEWAY_KAFKA_COMPRESSION", "none")
    assert Settings().kafka_compression_type is None
    monkeypatch.setenv("LLM_GATEWAY_KAFKA_COMPRESSION", "brotli")
    with pytest.raises(ValueError, match="kafka_compression"):
        Settings()
