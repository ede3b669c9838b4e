"""Group commit: events staged within one loop turn are written together, no caller is released
before its events are written, and nothing staged is ever dropped (failures, cancellation,
close, ``kill -9``)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
from aiohttp import ClientSession

from gateway import errors
from gateway.app import create_app
from gateway.eventlog.group_commit import GroupCommit
from gateway.eventlog.kafka_producer import KafkaEventLog
from gateway.eventlog.memory import MemoryEventLog
from gateway.eventlog.sqlite import SqliteEventLog, SqliteOutbox
from gateway.events import UsageEvent
from gateway.settings import Settings
from tests.support.fakes import ScriptedProvider, ok
from tests.support.gateway import start_app
from tests.unit.test_sqlite_eventlog import UNREACHABLE_KAFKA, acknowledged_until_sigkill, make_event, stored_ids


class Recorder:
    def __init__(self, fail: bool = False) -> None:
        self.batches: list[list[str]] = []
        self.fail = fail

    def __call__(self, events: list[UsageEvent]) -> None:
        self.batches.append([e.event_id for e in events])
        if self.fail:
            raise RuntimeError("disk on fire")


# --- GroupCommit ------------------------------------------------------------------------------------


async def test_calls_finishing_in_one_turn_share_one_commit_and_wait_for_it() -> None:
    write = Recorder()
    commit = GroupCommit(write)
    events = [make_event(i) for i in range(5)]
    released: list[tuple[str, int]] = []

    async def call(event: UsageEvent) -> None:
        commit.stage(event)
        await commit.settled(callers=10)  # more calls in flight than staged: wait for the turn
        released.append((event.event_id, len(write.batches)))

    await asyncio.gather(*(call(e) for e in events))
    assert write.batches == [[e.event_id for e in events]]
    assert all(batches == 1 for _, batches in released)  # nobody was released before the write


async def test_when_every_call_in_flight_has_staged_the_commit_is_written_at_once() -> None:
    write = Recorder()
    commit = GroupCommit(write)
    loop = asyncio.get_running_loop()
    turns: list[str] = []
    loop.call_soon(turns.append, "next turn")
    commit.stage(make_event(1))
    await commit.settled(callers=1)
    assert len(write.batches) == 1
    assert turns == []  # written without waiting a loop turn (concurrency 1 pays nothing)


async def test_the_last_of_the_calls_in_flight_writes_for_all_of_them() -> None:
    write = Recorder()
    commit = GroupCommit(write)

    async def call(i: int) -> int:
        commit.stage(make_event(i))
        await commit.settled(callers=3)
        return len(write.batches)

    assert await asyncio.gather(call(1), call(2), call(3)) == [1, 1, 1]
    assert [len(b) for b in write.batches] == [3]


async def test_staged_events_are_written_on_the_next_turn_even_if_nobody_waits() -> None:
    write = Recorder()
    commit = GroupCommit(write)
    commit.stage(make_event(1))
    commit.stage(make_event(2))
    assert write.batches == [] and commit.staged() == 2
    await asyncio.sleep(0)
    assert [len(b) for b in write.batches] == [2] and commit.staged() == 0


def test_without_a_running_loop_stage_writes_at_once() -> None:
    write = Recorder()
    commit = GroupCommit(write)
    event = make_event(1)
    commit.stage(event)
    assert write.batches == [[event.event_id]]


async def test_a_cancelled_caller_does_not_hold_back_the_others() -> None:
    write = Recorder()
    commit = GroupCommit(write)

    async def call(i: int) -> None:
        commit.stage(make_event(i))
        await commit.settled(callers=10)

    first = asyncio.create_task(call(1))
    second = asyncio.create_task(call(2))
    await asyncio.sleep(0)  # both staged and waiting; the commit is the next callback
    first.cancel()
    await second
    assert first.cancelled()
    assert [len(b) for b in write.batches] == [2]  # the cancelled call's event is written too


async def test_a_failing_writer_is_logged_and_still_releases_its_callers(caplog: pytest.LogCaptureFixture) -> None:
    commit = GroupCommit(Recorder(fail=True))
    commit.stage(make_event(1))
    await asyncio.wait_for(commit.settled(callers=2), timeout=5)
    assert "group commit of 1 usage events failed" in caplog.text


# --- the durable adapters -----------------------------------------------------------------------------


def count_transactions(outbox: SqliteOutbox) -> list[int]:
    sizes: list[int] = []
    append_many, append = outbox.append_many, outbox.append

    def many(rows: Any) -> None:
        sizes.append(len(rows))
        append_many(rows)

    def one(*row: Any) -> None:
        sizes.append(1)
        append(*row)

    outbox.append_many = many  # type: ignore[method-assign]
    outbox.append = one  # type: ignore[method-assign]
    return sizes


def open_log(kind: str, path: Path) -> SqliteEventLog | KafkaEventLog:
    """The embedded log, or the Kafka log's spool in front of a broker nobody runs."""
    if kind == "sqlite":
        return SqliteEventLog(path)
    return KafkaEventLog(UNREACHABLE_KAFKA, "llm.usage", path, backoff=(5.0, 5.0), request_timeout_ms=500)


@pytest.mark.parametrize("kind", ["sqlite", "kafka-spool"])
async def test_events_of_one_turn_are_one_transaction_in_the_file(tmp_path: Path, kind: str) -> None:
    path = tmp_path / "log.sqlite3"
    log = open_log(kind, path)
    outbox, table = (log._outbox, "events") if isinstance(log, SqliteEventLog) else (log._spool, "spool")
    transactions = count_transactions(outbox)
    events = [make_event(i) for i in range(8)]

    async def call(event: UsageEvent) -> None:
        log.stage(event)
        await log.settled(callers=len(events) + 1)

    await asyncio.gather(*(call(e) for e in events))
    assert transactions == [8]
    assert stored_ids(path, table) == [e.event_id for e in events]  # stage order
    await log.close(timeout=0.5)


@pytest.mark.parametrize("kind", ["sqlite", "kafka-spool"])
async def test_staged_events_count_as_pending_until_written(tmp_path: Path, kind: str) -> None:
    path = tmp_path / "log.sqlite3"
    log = open_log(kind, path)  # Kafka: nothing forwards (not started), what is spooled stays pending
    log.stage(make_event(1))
    log.stage(make_event(2))
    assert log.pending() == 2  # accepted, not yet on the durable log (healthz, the spool gauge)
    await log.settled()
    assert log.pending() == (0 if kind == "sqlite" else 2)  # written; the spool still holds them
    await log.close(timeout=0.5)


async def test_a_failed_commit_logs_every_event_in_full_and_releases_the_callers(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    import sqlite3

    path = tmp_path / "events.sqlite3"
    log = SqliteEventLog(path)
    with sqlite3.connect(path) as conn:
        conn.execute("DROP TABLE events")  # any storage failure
    events = [make_event(i) for i in range(3)]

    async def call(event: UsageEvent) -> None:
        log.stage(event)
        await log.settled(callers=5)

    await asyncio.wait_for(asyncio.gather(*(call(e) for e in events)), timeout=5)
    assert log.pending() == 3  # held in memory, retried while the gateway runs
    await log.close()  # the file still refuses them: each is logged in full
    for event in events:
        assert event.model_dump_json() in caplog.text  # recoverable by hand


async def test_when_the_batch_transaction_fails_each_event_is_tried_alone(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    import sqlite3

    path = tmp_path / "events.sqlite3"
    log = SqliteEventLog(path)

    def refuse(rows: Any) -> None:
        raise sqlite3.OperationalError("database or disk is full")

    log._outbox.append_many = refuse  # type: ignore[method-assign]
    events = [make_event(i) for i in range(4)]

    async def call(event: UsageEvent) -> None:
        log.stage(event)
        await log.settled(callers=5)

    await asyncio.gather(*(call(e) for e in events))
    assert stored_ids(path, "events") == [e.event_id for e in events]  # none lost, in order
    assert "appending 4 usage events in one transaction failed; appending one by one" in caplog.text
    await log.close()


def test_a_failed_batch_leaves_no_row_behind(tmp_path: Path) -> None:
    import sqlite3

    outbox = SqliteOutbox(tmp_path / "events.sqlite3")
    good = make_event(1)
    rows = [(good.tenant_id, good.to_json(), 1), (None, None, 2)]  # NOT NULL value: the 2nd fails
    with pytest.raises(sqlite3.IntegrityError):
        outbox.append_many(rows)  # type: ignore[arg-type]
    assert stored_ids(tmp_path / "events.sqlite3", "events") == [] and outbox.count() == 0
    outbox.append_many([(good.tenant_id, good.to_json(), 1)] * 2)  # the writer is usable again
    assert outbox.count() == 2
    outbox.close()


async def test_close_writes_what_is_staged(tmp_path: Path) -> None:
    path = tmp_path / "events.sqlite3"
    log = SqliteEventLog(path)
    events = [make_event(i) for i in range(3)]
    for event in events:
        log.stage(event)
    await log.close()  # before the next turn
    assert stored_ids(path, "events") == [e.event_id for e in events]


async def test_stage_after_close_is_logged_not_raised(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    log = SqliteEventLog(tmp_path / "events.sqlite3")
    await log.close()
    event = make_event(1)
    log.stage(event)
    await log.settled()
    assert f"usage event {event.event_id} published after close, NOT stored" in caplog.text


@pytest.mark.parametrize(("kind", "table"), [("sqlite", "events"), ("kafka-spool", "spool")])
def test_sigkill_between_commits_loses_no_answered_event(tmp_path: Path, kind: str, table: str) -> None:
    path = tmp_path / "log.sqlite3"
    answered = acknowledged_until_sigkill(kind, path, mode="stage")
    stored = set(stored_ids(path, table))
    assert set(answered) <= stored, f"{len(set(answered) - stored)} answered events lost"


# --- the request path waits for its events ----------------------------------------------------------


class HeldLog(MemoryEventLog):
    """Accepts events at once but holds every ``settled`` until the test releases it."""

    def __init__(self) -> None:
        super().__init__()
        self.release = asyncio.Event()
        self.waiting = asyncio.Event()

    async def settled(self, callers: int = 1) -> None:
        self.waiting.set()
        await self.release.wait()


@pytest.mark.parametrize(
    ("stream", "steps", "status"),
    [
        (False, [ok()], 200),
        (True, [ok("one two three")], 200),
        (False, [errors.UpstreamServerError("openai: HTTP 500", provider="openai", http_status=500)], 502),
    ],
    ids=["json", "stream", "all-failed"],
)
async def test_no_answer_goes_out_before_its_events_are_settled(
    tmp_path: Path, stream: bool, steps: list[Any], status: int
) -> None:
    log = HeldLog()
    settings = Settings(data_dir=tmp_path, priority=["openai"], openai_api_key="sk-test", _env_file=None)
    app = create_app(settings, providers={"openai": ScriptedProvider("openai", *steps)}, event_log=log)
    runner, url = await start_app(app)
    try:
        async with ClientSession() as client:
            body = {"model": "gpt-4", "messages": [{"role": "user", "content": "hi"}], "stream": stream}

            async def call() -> tuple[int, bytes]:
                async with client.post(f"{url}/v1/chat/completions", json=body) as response:
                    return response.status, await response.read()

            task = asyncio.create_task(call())
            await asyncio.wait_for(log.waiting.wait(), timeout=5)
            await asyncio.sleep(0.1)
            assert not task.done()  # held: not a byte of the end of the answer before the events
            assert log.events, "the attempt's event was handed to the log before the wait"
            log.release.set()
            got_status, payload = await asyncio.wait_for(task, timeout=5)
        assert got_status == status
        if stream:
            assert payload.endswith(b"data: [DONE]\n\n")
    finally:
        await runner.cleanup()


async def test_a_call_cancelled_while_it_waits_for_its_events_leaves_the_in_flight_count(tmp_path: Path) -> None:
    """A handler cancelled in ``settled`` (a client gone, with aiohttp's handler cancellation
    on; a shutdown) must still leave the count of calls in flight, or every later call would
    wait for company that never comes (no more immediate commit at concurrency 1)."""
    from gateway.api.state import STATE

    log = HeldLog()
    settings = Settings(data_dir=tmp_path, priority=["openai"], openai_api_key="sk-test", _env_file=None)
    app = create_app(settings, providers={"openai": ScriptedProvider("openai", ok(), ok())}, event_log=log)
    runner, url = await start_app(app, handler_cancellation=True)
    body = {"model": "gpt-4", "messages": [{"role": "user", "content": "hi"}]}
    try:
        async with ClientSession() as client:
            call = asyncio.create_task(client.post(f"{url}/v1/chat/completions", json=body))
            await asyncio.wait_for(log.waiting.wait(), timeout=5)
            assert app[STATE].in_flight == 1
            call.cancel()  # the client goes away while its answer waits for the events
            await asyncio.gather(call, return_exceptions=True)
        for _ in range(100):
            if app[STATE].in_flight == 0:
                break
            await asyncio.sleep(0.01)
        assert app[STATE].in_flight == 0
        assert log.events, "the attempt's event was handed to the log all the same"
    finally:
        await runner.cleanup()
