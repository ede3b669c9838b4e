"""The Kafka event log against the real broker: topic creation, a broker outage while the
gateway keeps publishing, and a shutdown with the broker down."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections import defaultdict
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

import pytest
from aiokafka import AIOKafkaConsumer, ConsumerRecord
from aiokafka.admin import AIOKafkaAdminClient

from consumers.projector import Projector
from gateway.eventlog.base import EventLog, LogRecord
from gateway.eventlog.deadletter import KafkaDeadLetters
from gateway.eventlog.kafka_producer import KafkaEventLog
from gateway.eventlog.kafka_reader import KafkaLogReader
from gateway.events import UsageEvent
from tests.services.kafka import Broker
from tests.unit.test_sqlite_eventlog import make_event

pytestmark = pytest.mark.kafka


def new_topic() -> str:
    return f"it-usage-{uuid.uuid4().hex[:10]}"


def new_log(bootstrap: str, topic: str, spool: Path, **options: object) -> KafkaEventLog:
    defaults: dict[str, object] = {"partitions": 3, "linger_ms": 2, "backoff": (0.1, 1.0), "warn_interval": 1.0}
    return KafkaEventLog(bootstrap, topic, spool, **{**defaults, **options})  # type: ignore[arg-type]


async def wait_drained(log: KafkaEventLog, seconds: float) -> None:
    async with asyncio.timeout(seconds):
        while log.pending():  # noqa: ASYNC110 - pending() is a counter, polled
            await asyncio.sleep(0.05)


async def publish_all(log: EventLog, events: Sequence[UsageEvent]) -> None:
    """Start ``log``, publish ``events``, wait until Kafka has them all, close it."""
    await log.start()
    for event in events:
        log.publish(event)
    if isinstance(log, KafkaEventLog):
        await wait_drained(log, 30)
    await log.close()


async def read_all(bootstrap: str, topic: str, expected: int, seconds: float = 60.0) -> list[UsageEvent]:
    reader = KafkaLogReader(bootstrap, topic, f"check-{uuid.uuid4().hex[:6]}")
    await reader.start()
    events: list[UsageEvent] = []
    try:
        async with asyncio.timeout(seconds):
            while len(events) < expected:
                events.extend(UsageEvent.from_json(r.value) for r in await reader.fetch(1000, 0.5))
        events.extend(UsageEvent.from_json(r.value) for r in await reader.fetch(1000, 1.0))
    finally:
        await reader.close()
    return events


def assert_exactly_once_in_order(got: Sequence[UsageEvent], published: Sequence[UsageEvent]) -> None:
    ids = [e.event_id for e in got]
    assert len(ids) == len(set(ids)), f"{len(ids) - len(set(ids))} duplicates"
    assert set(ids) == {e.event_id for e in published}
    per_tenant_got: dict[str, list[str]] = defaultdict(list)
    per_tenant_published: dict[str, list[str]] = defaultdict(list)
    for event in got:
        per_tenant_got[event.tenant_id].append(event.event_id)
    for event in published:
        per_tenant_published[event.tenant_id].append(event.event_id)
    assert per_tenant_got == per_tenant_published


async def test_topic_is_created_with_the_configured_partitions(kafka_bootstrap: str, tmp_path: Path) -> None:
    topic = new_topic()
    log = new_log(kafka_bootstrap, topic, tmp_path / "spool.sqlite3", partitions=4)
    await log.start()
    log.publish(make_event(0))
    await wait_drained(log, 30)
    await log.close()

    admin = AIOKafkaAdminClient(bootstrap_servers=kafka_bootstrap)
    await admin.start()
    try:
        (described,) = await admin.describe_topics([topic])
    finally:
        await admin.close()
    assert len(described["partitions"]) == 4


async def test_broker_outage_spools_then_delivers_everything_once_in_order(
    kafka_bootstrap: str, kafka_broker_control: Broker, tmp_path: Path
) -> None:
    topic = new_topic()
    log = new_log(kafka_bootstrap, topic, tmp_path / "spool.sqlite3")
    await log.start()
    before = [make_event(i) for i in range(200)]
    for event in before:
        log.publish(event)
    await wait_drained(log, 30)

    await kafka_broker_control.astop()
    during = [make_event(i) for i in range(200, 1700)]
    slowest = 0.0
    for i, event in enumerate(during):
        started = time.perf_counter()
        log.publish(event)  # never blocks on the broker, never raises
        slowest = max(slowest, time.perf_counter() - started)
        if i % 100 == 0:
            await asyncio.sleep(0.02)  # the gateway keeps serving while the broker is down
    assert slowest < 0.25, f"publish blocked {slowest:.3f}s"
    assert log.pending() >= len(during) - 50  # at most a batch in flight when it went down

    await kafka_broker_control.astart()
    await wait_drained(log, 90)
    assert log.pending() == 0
    after = [make_event(i) for i in range(1700, 1800)]
    for event in after:
        log.publish(event)
    await wait_drained(log, 30)
    await log.close()

    published = before + during + after
    assert_exactly_once_in_order(await read_all(kafka_bootstrap, topic, len(published)), published)


async def test_a_full_spool_disk_holds_the_events_then_the_forwarder_delivers_them(
    kafka_bootstrap: str, tmp_path: Path
) -> None:
    """The spool's file refuses rows (SQLITE_FULL, as on a full disk): the events are held in
    memory, counted as pending, written once the file takes them again, and the forwarder is
    woken for them with no new event to wake it: every one reaches Kafka once, in order."""
    topic = new_topic()
    log = new_log(kafka_bootstrap, topic, tmp_path / "spool.sqlite3", checkpoint_interval=0.05)
    await log.start()
    writer = log._spool._writer
    pages = writer.execute("PRAGMA page_count").fetchone()[0]
    writer.execute(f"PRAGMA max_page_count={pages}")  # full
    published = [make_event(i) for i in range(300)]
    for event in published:
        log.publish(event)  # never raises
    assert log._spool.held() > 250 and log.pending() >= log._spool.held()
    async with asyncio.timeout(30):  # what fitted is forwarded: the forwarder waits for a wake-up
        while log.pending() > log._spool.held():  # noqa: ASYNC110 - counters, polled
            await asyncio.sleep(0.05)
    await asyncio.sleep(0.3)
    writer.execute("PRAGMA max_page_count=1073741823")  # room again; nothing else is published
    await wait_drained(log, 60)
    await log.close()
    assert_exactly_once_in_order(await read_all(kafka_bootstrap, topic, len(published)), published)


async def test_close_with_the_broker_down_keeps_the_spool_for_the_next_start(
    kafka_bootstrap: str, kafka_broker_control: Broker, tmp_path: Path
) -> None:
    topic = new_topic()
    spool = tmp_path / "spool.sqlite3"
    log = new_log(kafka_bootstrap, topic, spool)
    await log.start()
    first = [make_event(i) for i in range(50)]
    for event in first:
        log.publish(event)
    await wait_drained(log, 30)

    await kafka_broker_control.astop()
    stranded = [make_event(i) for i in range(50, 350)]
    for event in stranded:
        log.publish(event)
    started = time.perf_counter()
    await log.close(timeout=1.0)
    assert time.perf_counter() - started < 10  # a bounded wait, even with the broker gone

    await kafka_broker_control.astart()
    successor = new_log(kafka_bootstrap, topic, spool)
    assert successor.pending() == len(stranded)
    await successor.start()
    await wait_drained(successor, 60)
    await successor.close()

    published = first + stranded
    assert_exactly_once_in_order(await read_all(kafka_bootstrap, topic, len(published)), published)


async def test_what_kafka_acknowledged_is_never_sent_again_even_when_close_cuts_the_forwarder_short(
    kafka_bootstrap: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The spool's rows are deleted once Kafka acknowledges them (with the forwarder's next read,
    or by ``close`` when it cancels the forwarder in between): a successor on the same spool
    must find nothing to send again."""
    topic = new_topic()
    spool = tmp_path / "spool.sqlite3"
    log = new_log(kafka_bootstrap, topic, spool)
    forward_once = log._forward_once
    forwarded = asyncio.Event()

    async def then_stall(producer: object) -> bool:  # the forwarder held between two forwards
        sent = await forward_once(producer)  # type: ignore[arg-type]
        if sent:
            forwarded.set()
            await asyncio.Event().wait()  # until close() cancels it
        return sent

    monkeypatch.setattr(log, "_forward_once", then_stall)
    await log.start()
    events = [make_event(i) for i in range(40)]
    for event in events:
        log.publish(event)
    async with asyncio.timeout(30):
        await forwarded.wait()
    assert log.pending() == 0  # acknowledged: not pending, though its rows are still on the spool
    await log.close(timeout=0.5)

    successor = new_log(kafka_bootstrap, topic, spool)
    assert successor.pending() == 0
    await successor.start()
    await successor.close()
    assert_exactly_once_in_order(await read_all(kafka_bootstrap, topic, len(events)), events)


async def first_dead_letter(bootstrap: str, topic: str) -> ConsumerRecord[bytes, bytes]:
    consumer = AIOKafkaConsumer(
        f"{topic}.dlq", bootstrap_servers=bootstrap, auto_offset_reset="earliest", group_id=None
    )
    await consumer.start()
    try:
        return await asyncio.wait_for(consumer.getone(), 30)
    finally:
        await consumer.stop()


async def test_dead_letters_go_to_the_dlq_topic_with_reason_and_position(kafka_bootstrap: str) -> None:
    topic = new_topic()
    letters = KafkaDeadLetters(kafka_bootstrap, topic)
    await letters.start()
    await letters.dead_letter(b"\x00not json", "unreadable", "2:41")
    await letters.close()

    message = await first_dead_letter(kafka_bootstrap, topic)
    assert message.value == b"\x00not json"
    headers = {k: v.decode() for k, v in message.headers}
    assert headers == {"reason": "unreadable", "source_position": "2:41", "source_topic": topic}


async def test_the_projector_says_its_lag_is_unknown_while_the_broker_is_down(
    kafka_bootstrap: str, kafka_broker_control: Broker, tmp_path: Path
) -> None:
    """A consumer's health said "lag 0" for as long as a review's broker was down (the last
    value, kept when the log could not answer): it is unknown (None, with why) until the broker
    answers again, then measured again."""
    from consumers.deadletter import MemoryDeadLetters
    from tests.bench.pipeline import NullSink

    topic = new_topic()
    log = new_log(kafka_bootstrap, topic, tmp_path / "spool.sqlite3")
    await log.start()
    for i in range(20):
        log.publish(make_event(i))
    await wait_drained(log, 30)
    await log.close()
    reader = KafkaLogReader(kafka_bootstrap, topic, f"lag-{uuid.uuid4().hex[:8]}")
    projector = Projector(reader, [NullSink()], MemoryDeadLetters(), poll_timeout=0.5, idle_timeout=2.0, lag_interval=0)
    await reader.start()
    try:
        assert await projector.run_until_idle() == 20
        assert (projector.stats.lag, projector.stats.lag_error) == (0, None)
        await kafka_broker_control.astop()
        try:
            await asyncio.wait_for(projector._refresh_lag(force=True), 120)
            assert projector.stats.lag is None and projector.stats.lag_error
        finally:
            await kafka_broker_control.astart()
        await asyncio.wait_for(projector._refresh_lag(force=True), 120)
        assert (projector.stats.lag, projector.stats.lag_error) == (0, None)
    finally:
        await reader.close()


def ahead(i: int, hours: float) -> UsageEvent:
    """An event from a gateway whose clock ran ``hours`` ahead."""
    from datetime import UTC, datetime, timedelta

    return make_event(i).model_copy(update={"created_at": datetime.now(UTC) + timedelta(hours=hours)})


async def test_events_stamped_hours_ahead_reach_the_topic(kafka_bootstrap: str, tmp_path: Path) -> None:
    """The broker refuses a record stamped more than an hour ahead of its clock: a gateway whose
    clock ran 2 h ahead, then was corrected, left its spool stuck behind those records for good
    (a time review: 18 events pending 27 minutes later). They are sent again with the current
    time."""
    topic = new_topic()
    log = new_log(kafka_bootstrap, topic, tmp_path / "spool.sqlite3")
    await log.start()
    try:
        skewed = [ahead(i, 2) for i in range(3)]
        for event in skewed:
            log.publish(event)
        await wait_drained(log, 30)
        on_time = [make_event(i) for i in range(3, 6)]
        for event in on_time:
            log.publish(event)
        await wait_drained(log, 30)
    finally:
        await log.close()
    assert_exactly_once_in_order(await read_all(kafka_bootstrap, topic, 6), skewed + on_time)


class Collected:
    name = "collected"

    def __init__(self) -> None:
        self.ids: list[str] = []
        #: each batch's size
        self.batches: list[int] = []

    async def start(self) -> None: ...
    async def apply(self, events: Sequence[UsageEvent]) -> None:
        self.ids.extend(e.event_id for e in events)
        self.batches.append(len(events))

    async def reset(self) -> None: ...
    async def close(self) -> None: ...


async def project_topic(bootstrap: str, topic: str, expected: int) -> tuple[Collected, Projector]:
    """A projector of a new group over ``topic`` until idle, having taken ``expected`` records."""
    reader = KafkaLogReader(bootstrap, topic, f"it-{uuid.uuid4().hex[:8]}")
    letters = KafkaDeadLetters(bootstrap, topic)
    sink = Collected()
    projector = Projector(reader, [sink], letters, poll_timeout=0.5, idle_timeout=2.0)
    await reader.start()
    await letters.start()
    try:
        assert await asyncio.wait_for(projector.run_until_idle(), 60) == expected
    finally:
        await reader.close()
        await letters.close()
    return sink, projector


async def test_a_tombstone_on_the_topic_is_dead_lettered_and_projection_goes_on(
    kafka_bootstrap: str, tmp_path: Path
) -> None:
    """A record with a null value (a Kafka tombstone, which compaction tools and mistaken
    producers write) reached the dead-letter store as None: hashing it raised, and the projector
    retried the batch for good ("paused", every event behind it never stored: review)."""
    from aiokafka import AIOKafkaProducer

    topic = new_topic()
    log = new_log(kafka_bootstrap, topic, tmp_path / "spool.sqlite3", partitions=1)
    await log.start()
    events = [make_event(i) for i in range(6)]
    for event in events[:3]:
        log.publish(event)
    await wait_drained(log, 30)
    producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap)
    await producer.start()
    try:
        await producer.send_and_wait(topic, None, key=b"tenant", partition=0)
    finally:
        await producer.stop()
    for event in events[3:]:
        log.publish(event)
    await wait_drained(log, 30)
    await log.close()

    sink, projector = await project_topic(kafka_bootstrap, topic, 6)
    assert sink.ids == [e.event_id for e in events]
    assert projector.stats.events_dead_lettered == 1
    message = await first_dead_letter(kafka_bootstrap, topic)
    headers = {k: v.decode() for k, v in message.headers}
    assert not message.value and headers["source_position"] == "0:3"
    assert "no value" in headers["reason"]


async def test_a_consumer_started_while_the_broker_is_down_waits_for_it_then_projects(
    kafka_bootstrap: str, kafka_broker_control: Broker, tmp_path: Path
) -> None:
    """`consume` started before its broker (a deploy restarting both) exited at once, leaving
    projection to a supervisor's restart policy. It now waits, saying so in its health, and
    projects once the broker answers."""
    from consumers import pipeline as pipeline_module
    from consumers.pipeline import build_pipeline
    from gateway.settings import Settings

    topic = new_topic()
    settings = Settings(  # type: ignore[call-arg]
        data_dir=tmp_path / "data", kafka_bootstrap_servers=kafka_bootstrap, topic=topic, _env_file=None
    )
    pipeline = build_pipeline(settings, group_id=f"wait-{uuid.uuid4().hex[:8]}")
    stats = pipeline.projector.stats
    await kafka_broker_control.astop()
    try:
        pipeline_module.LOG_RETRY_FIRST = 0.2
        await asyncio.wait_for(pipeline.start(), 120)
        health = stats.health()
        assert health["status"] == "waiting_for_log"
        assert health["lag"] is None and "cannot be reached" in str(health["lagError"])
    finally:
        pipeline_module.LOG_RETRY_FIRST = 1.0
        await kafka_broker_control.astart()
    try:
        log = new_log(kafka_bootstrap, topic, tmp_path / "spool.sqlite3")
        await log.start()
        for i in range(5):
            log.publish(make_event(i))
        await wait_drained(log, 30)
        await log.close()
        async with asyncio.timeout(120):
            while stats.events_applied < 5:  # noqa: ASYNC110 - a counter, polled
                await asyncio.sleep(0.2)
        assert stats.status == "ok" and stats.health()["lagError"] is None
    finally:
        await pipeline.stop()


async def project_with_an_odd_middle_record(
    bootstrap: str, *, key: bytes = b"tenant", stamp: int | None = None
) -> tuple[list[UsageEvent], Collected, Projector, list[LogRecord]]:
    """Three events on a new topic (any timestamp allowed), the second with ``key`` and
    ``stamp``; a projector over them until idle, then the records as a second group reads them."""
    from aiokafka import AIOKafkaProducer
    from aiokafka.admin import NewTopic

    topic = new_topic()
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        config = {"message.timestamp.after.max.ms": str(2**63 - 1)}
        await admin.create_topics([NewTopic(topic, 1, 1, topic_configs=config)])
    finally:
        await admin.close()
    events = [make_event(i) for i in range(3)]
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap)
    await producer.start()
    try:
        for i, event in enumerate(events):
            odd = i == 1
            await producer.send_and_wait(
                topic,
                event.to_json(),
                key=key if odd else b"tenant",
                partition=0,
                timestamp_ms=stamp if odd and stamp is not None else int(event.created_at.timestamp() * 1000),
            )
    finally:
        await producer.stop()

    sink, projector = await project_topic(bootstrap, topic, 3)
    again = KafkaLogReader(bootstrap, topic, f"odd-{uuid.uuid4().hex[:8]}")
    await again.start()
    records: list[LogRecord] = []
    try:
        async with asyncio.timeout(30):
            while len(records) < 3:
                records.extend(await again.fetch(10, 1.0))
    finally:
        await again.close()
    return events, sink, projector, records


async def test_a_record_stamped_past_the_year_9999_is_projected_like_any_other(kafka_bootstrap: str) -> None:
    """A Kafka record's timestamp is its producer's to set (a broker before 4.0, or a topic with
    ``message.timestamp.after.max.ms`` raised, keeps any). The reader made every record's time a
    ``datetime`` as it read the batch: one stamped past the year 9999 raised there, so that
    batch never reached the projector, which fetched it again for good. The time is now read
    only when asked, as the latest time there is; the record's event is projected."""
    events, sink, projector, records = await project_with_an_odd_middle_record(kafka_bootstrap, stamp=2**62)
    assert sink.ids == [e.event_id for e in events]
    assert projector.stats.events_dead_lettered == 0
    assert [r.timestamp for r in records] == [
        events[0].created_at,
        datetime.max.replace(tzinfo=UTC),
        events[2].created_at,
    ]


async def test_a_record_whose_key_is_not_utf8_is_projected_like_any_other(kafka_bootstrap: str) -> None:
    """A record's key is its producer's bytes (the gateway writes the tenant). The reader
    decoded it strictly as it read the batch: a key that is not UTF-8 raised there, and the
    projector fetched that batch again for good. No consumer reads the key: it is decoded with
    replacement characters, and the record's event is projected."""
    events, sink, projector, records = await project_with_an_odd_middle_record(kafka_bootstrap, key=b"t\xff\xfe")
    assert sink.ids == [e.event_id for e in events]
    assert projector.stats.events_dead_lettered == 0
    assert [r.key for r in records] == ["tenant", "t\ufffd\ufffd", "tenant"]


async def test_a_lingering_batch_takes_what_comes_during_its_linger(kafka_bootstrap: str, tmp_path: Path) -> None:
    """A small batch waits out the projector's linger for company. aiokafka fetches ahead but
    holds one response a partition: read once at the linger's end, the batch took only what
    that response held, and every event after it waited a whole linger more (the live lag on
    Kafka was twice the embedded log's). Events published 0, 0.5 and 1 s into a 3 s linger all
    go in its batch."""
    from consumers.deadletter import MemoryDeadLetters

    topic = new_topic()
    log = new_log(kafka_bootstrap, topic, tmp_path / "spool.sqlite3", partitions=1)
    reader = KafkaLogReader(kafka_bootstrap, topic, f"linger-{uuid.uuid4().hex[:8]}")
    sink = Collected()
    projector = Projector(reader, [sink], MemoryDeadLetters(), poll_timeout=0.2, linger=3.0)
    await log.start()
    await reader.start()
    stop = asyncio.Event()
    running = asyncio.create_task(projector.run_forever(stop))
    try:
        log.publish(make_event(0))
        async with asyncio.timeout(30):
            while not sink.batches:  # noqa: ASYNC110 - the sink's list, polled
                await asyncio.sleep(0.01)
            for i in (1, 2, 3):  # the next batch starts with event 1, then lingers
                log.publish(make_event(i))
                await wait_drained(log, 5)
                await asyncio.sleep(0.5)
            while len(sink.ids) < 4:  # noqa: ASYNC110
                await asyncio.sleep(0.01)
    finally:
        stop.set()
        await asyncio.wait_for(running, 10)
        await reader.close()
        await log.close()
    assert sink.batches == [1, 3]


CODECS = ("gzip", "snappy", "lz4", "zstd")


@pytest.mark.parametrize("codec", CODECS)
async def test_a_topic_the_broker_compresses_is_read_whole(kafka_bootstrap: str, tmp_path: Path, codec: str) -> None:
    """A topic (or a cluster) whose ``compression.type`` names a codec has the broker store every
    batch in it, whatever the producer sent; many platforms set ``zstd`` for all topics. The
    readers had only gzip's library: every fetch of such a topic raised, so no event reached the
    stores, the health sync or a replay."""
    from aiokafka.admin import NewTopic

    topic = new_topic()
    admin = AIOKafkaAdminClient(bootstrap_servers=kafka_bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(topic, 3, 1, topic_configs={"compression.type": codec})])
    finally:
        await admin.close()
    published = [make_event(i) for i in range(50)]
    await publish_all(new_log(kafka_bootstrap, topic, tmp_path / "spool.sqlite3"), published)
    assert_exactly_once_in_order(await read_all(kafka_bootstrap, topic, len(published)), published)


@pytest.mark.parametrize("codec", CODECS)
async def test_the_gateway_publishes_compressed_batches(kafka_bootstrap: str, tmp_path: Path, codec: str) -> None:
    """``kafka_compression`` (``LLM_GATEWAY_KAFKA_COMPRESSION``): the gateway's batches go to the
    broker compressed with that codec, and read back whole. Without the codecs' library the
    producer refused to start with any but gzip."""
    topic = new_topic()
    published = [make_event(i) for i in range(50)]
    await publish_all(new_log(kafka_bootstrap, topic, tmp_path / "spool.sqlite3", compression_type=codec), published)
    assert_exactly_once_in_order(await read_all(kafka_bootstrap, topic, len(published)), published)


async def test_kafka_compression_has_the_gateway_store_its_events_in_fewer_bytes(
    kafka_bootstrap: str, kafka_broker_control: Broker, tmp_path: Path
) -> None:
    """``kafka_compression: zstd``: the same 500 events take a fraction of the broker's bytes
    (its partition's log file), and read back whole."""
    from gateway.eventlog.factory import build_event_log
    from gateway.settings import Settings

    published = [make_event(i) for i in range(500)]
    sizes = {}
    for codec in ("none", "zstd"):
        topic = new_topic()
        settings = Settings(
            data_dir=tmp_path / codec,
            kafka_bootstrap_servers=kafka_bootstrap,
            topic=topic,
            topic_partitions=1,
            kafka_compression=codec,
        )
        await publish_all(build_event_log(settings), published)
        assert_exactly_once_in_order(await read_all(kafka_bootstrap, topic, len(published)), published)
        sizes[codec] = sum(f.stat().st_size for f in (kafka_broker_control.data_dir / f"{topic}-0").glob("*.log"))
    assert 0 < sizes["zstd"] * 4 < sizes["none"], sizes


def record_embedded(data_dir: Path, events: Sequence[UsageEvent]) -> None:
    """``events`` on the embedded log of ``data_dir`` (the history ``export-log`` sends)."""
    from gateway.eventlog.factory import embedded_log_path
    from gateway.eventlog.sqlite import SqliteEventLog
    from gateway.settings import Settings

    asyncio.run(publish_all(SqliteEventLog(embedded_log_path(Settings(data_dir=data_dir, _env_file=None))), events))  # type: ignore[call-arg]


def test_export_log_sends_the_history_compressed_too(
    kafka_bootstrap: str, kafka_broker_control: Broker, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``export-log`` puts a data dir's whole history on the topic with the gateway's codec."""
    from gateway.cli import build_parser
    from gateway.commands import run_command
    from gateway.settings import Settings

    published = [make_event(i) for i in range(500)]
    record_embedded(tmp_path, published)
    topic = new_topic()
    kafka = Settings(  # type: ignore[call-arg]
        data_dir=tmp_path,
        kafka_bootstrap_servers=kafka_bootstrap,
        topic=topic,
        topic_partitions=1,
        kafka_compression="zstd",
        _env_file=None,
    )
    assert run_command(build_parser().parse_args(["export-log", "--timeout", "60"]), kafka) == 0
    assert f"exported {len(published)} events" in capsys.readouterr().out
    assert_exactly_once_in_order(asyncio.run(read_all(kafka_bootstrap, topic, len(published))), published)
    stored = sum(f.stat().st_size for f in (kafka_broker_control.data_dir / f"{topic}-0").glob("*.log"))
    assert 0 < stored * 4 < sum(len(e.to_json()) for e in published), stored
