"""``llm-gateway replay`` for real: events of a model nobody priced are recorded unpriced on the
log and projected so; the operator writes a price file; one ``replay --reprice`` makes the stores
show the exact costs, prints the diff, and a second replay changes nothing.

- embedded log, in-process (the CLI, nothing running: it falls back to opening DuckDB itself);
- embedded log, through the service that owns DuckDB (``POST /v1/admin/replay``), next to the
  live projector, whose committed position the replay does not touch;
- Kafka log with DuckDB and the Postgres ``"LLMUsage"`` sink (``kafka`` + ``postgres``).
"""

from __future__ import annotations

import asyncio
import gc
import json
import os
import socket
import sqlite3
import uuid
from collections.abc import AsyncIterator
from datetime import datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import pytest
from aiohttp import web

from analytics.store import AnalyticsStore
from consumers.pipeline import DEFAULT_GROUP, analytics_path, build_pipeline
from consumers.replay import Replayer, ReplayError, ReplayOptions
from consumers.replay_command import ReplayFailed, in_process, via_service
from consumers.replay_http import REPLAY, install_replay
from gateway.api.auth import Authenticator
from gateway.api.middleware import error_middleware
from gateway.cli import build_parser
from gateway.commands import run_command
from gateway.eventlog.base import EventLog
from gateway.eventlog.factory import embedded_log_path, spool_path
from gateway.eventlog.kafka_producer import KafkaEventLog
from gateway.eventlog.sqlite import SqliteEventLog
from gateway.ids import utcnow
from gateway.pricing.book import load_price_book
from gateway.pricing.pricefile import PriceFile, load_price_file
from gateway.settings import ApiKey, Settings
from gateway.usage import UsageRecorder
from tests.support.gateway import start_app
from tests.unit.test_reprice import PRICES, Clock, record_scenario

EVENTS = 8  # record_scenario: 5 calls of acme-llm-1, 1 of gpt-4o, a 429, a stream cut before usage
ACME = Decimal("0.0055818")  # tenant acme, acme-llm-1, with PRICES (tests/unit/test_reprice.py)
GLOBEX = Decimal("0.00898")
GPT = Decimal("0.0035")  # built-in gpt-4o-2024-08-06: 1000 x 0.0025/1K + 100 x 0.01/1K


def settings_for(tmp_path: Path, **values: Any) -> Settings:
    return Settings(data_dir=tmp_path / "data", _env_file=None, **values)  # type: ignore[call-arg]


def write_prices(tmp_path: Path) -> Path:
    path = tmp_path / "prices.yaml"
    path.write_text(PRICES, encoding="utf-8")
    return path


async def record(log: EventLog, start: datetime | None = None) -> None:
    """``start``: the events' time (Kafka deletes records older than its retention, 7 days by
    default, by their timestamps: events of last March would vanish mid-test)."""
    await log.start()
    clock = Clock() if start is None else Clock(start)
    record_scenario(UsageRecorder(log, load_price_book(None), clock=clock))
    await log.close(timeout=15.0)
    assert log.pending() == 0


async def project(settings: Settings) -> None:
    """What the live projector does, until the log is read."""
    pipeline = build_pipeline(settings)
    await pipeline.store.open()
    await pipeline.dead_letters.start()
    await pipeline.reader.start()
    await pipeline.projector.start()
    try:
        assert await pipeline.projector.run_until_idle() == EVENTS
    finally:
        await pipeline.stop()


async def duckdb_state(store: AnalyticsStore) -> tuple[list[Any], list[Any]]:
    facts = await store.fetchall("SELECT * FROM usage_facts ORDER BY event_id")
    health = await store.fetchall("SELECT * FROM provider_health_history ORDER BY ALL")
    return facts, health


async def costs(store: AnalyticsStore) -> dict[tuple[str, str], tuple[Decimal, int]]:
    rows = await store.fetchall(
        "SELECT tenant_id, model, sum(cost_usd), count(*) FILTER (WHERE cost_usd IS NULL AND billable) "
        "FROM llm_usage GROUP BY ALL"
    )
    return {(t, m): (c, u) for t, m, c, u in rows}


async def read_file_store(settings: Settings) -> tuple[dict[Any, Any], tuple[list[Any], list[Any]]]:
    store = AnalyticsStore(analytics_path(settings), read_only=True)
    await store.open()
    try:
        return await costs(store), await duckdb_state(store)
    finally:
        await store.close()


def positions(settings: Settings) -> list[tuple[str, int]]:
    with sqlite3.connect(embedded_log_path(settings)) as conn:
        return conn.execute("SELECT group_id, position FROM positions ORDER BY group_id").fetchall()


RECORDED = {
    ("acme", "acme-llm-1"): (None, 3),
    ("globex", "acme-llm-1"): (Decimal(0), 3),  # 2 calls + a stream cut before usage; the 429 costs 0
    ("acme", "gpt-4o-2024-08-06"): (GPT, 0),
}
REPRICED = {
    ("acme", "acme-llm-1"): (ACME, 0),
    ("globex", "acme-llm-1"): (GLOBEX, 1),
    ("acme", "gpt-4o-2024-08-06"): (GPT, 0),
}


# --- embedded log, in-process through the CLI -----------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def replay_cli(settings: Settings, *argv: str) -> int:
    args = build_parser().parse_args(["replay", *argv])
    return run_command(args, settings)


def test_cli_reprices_unpriced_history_in_both_directions_and_twice_is_a_no_op(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # nothing listens on the configured port: the command falls back to replaying in-process
    settings = settings_for(tmp_path, port=free_port())
    asyncio.run(record(SqliteEventLog(embedded_log_path(settings))))
    asyncio.run(project(settings))
    live = positions(settings)
    assert live == [(DEFAULT_GROUP, EVENTS)]
    assert asyncio.run(read_file_store(settings))[0] == RECORDED

    settings = settings.model_copy(update={"price_file": write_prices(tmp_path)})
    assert replay_cli(settings, "--reprice") == 0
    out, err = capsys.readouterr()
    # it says that it holds the store meanwhile (a serve starting on this data dir would stop)
    assert "replaying in this process" in err and "cannot start meanwhile" in err

    found, state = asyncio.run(read_file_store(settings))
    assert found == REPRICED
    assert "cost changes by tenant and model" in out
    assert "+0.0055818" in out and "+0.00898" in out and "3 -> 0" in out
    assert "unpriced billable events: 6 before, 1 after" in out
    assert "health history not touched" in out  # health does not depend on prices
    assert positions(settings) == live  # the live group did not move, and no replay group was left

    assert replay_cli(settings, "--reprice", "--json") == 0
    doc = json.loads(capsys.readouterr().out)
    assert (doc["changed"], doc["diff"], doc["eventsApplied"]) == (0, [], EVENTS)

    # one clock reading per event: T0+1s, ... +5s (acme-llm-1), +6s (gpt-4o), +7s (429), +8s (cut stream)
    assert replay_cli(settings, "--reprice", "--json", "--since", "2026-03-01T12:00:05Z") == 0
    doc = json.loads(capsys.readouterr().out)
    assert (doc["recordsRead"], doc["events"], doc["changed"], doc["range"]["first"]) == (
        4,
        4,
        0,
        "seq 1 (2026-03-01T12:00:05+0000)",
    )
    assert asyncio.run(read_file_store(settings))[1] == state  # facts and health history identical

    # without --reprice the stores get the log's recorded costs back, and say so
    assert replay_cli(settings, "--health") == 0
    out = capsys.readouterr().out
    assert "went back to the cost recorded on the log" in out
    assert "health history rebuilt" in out
    found, rebuilt = asyncio.run(read_file_store(settings))
    assert found == RECORDED
    assert rebuilt[1] == state[1]  # the same health history, rebuilt from the same events

    # a full rebuild with the price table lands where the first reprice did
    assert replay_cli(settings, "--full", "--reprice") == 0
    capsys.readouterr()
    assert asyncio.run(read_file_store(settings)) == (REPRICED, state)

    assert replay_cli(settings, "--full", "--since", "2026-01-01") == 2
    assert "--full" in capsys.readouterr().err


@pytest.mark.kafka
def test_export_log_puts_the_embedded_history_on_kafka_once(
    tmp_path: Path, kafka_bootstrap: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """A data dir moving to Kafka mode: the embedded log's history could not be replayed from the
    topic, and ``replay --full`` refused to rebuild stores holding it (a review of mode
    switches). ``export-log`` puts it on the topic, once: run again, it sends what came after."""
    embedded = settings_for(tmp_path, port=free_port())
    kafka = settings_for(
        tmp_path,
        port=free_port(),
        consume_port=free_port(),
        kafka_bootstrap_servers=kafka_bootstrap,
        topic=f"export-{uuid.uuid4().hex[:12]}",
        topic_partitions=3,
    )
    asyncio.run(record(SqliteEventLog(embedded_log_path(embedded))))
    assert replay_cli(embedded) == 0  # the data dir's store holds the embedded history
    export = build_parser().parse_args(["export-log", "--timeout", "60"])
    capsys.readouterr()
    for expected in (f"exported {EVENTS} events", f"exported 0 events to {kafka.topic} (up to record {EVENTS}"):
        assert run_command(export, kafka) == 0
        assert expected in capsys.readouterr().out
    asyncio.run(record(SqliteEventLog(embedded_log_path(embedded))))  # the embedded gateway took more
    assert run_command(export, kafka) == 0
    out = capsys.readouterr().out
    assert f"exported {EVENTS} events to {kafka.topic} (up to record {EVENTS} sent before" in out
    assert f"the log holds {2 * EVENTS}" in out

    assert replay_cli(kafka, "--full", "--local") == 0  # nothing of the store is missing from the topic
    facts = asyncio.run(read_file_store(kafka))[1][0]
    assert len(facts) == len({row[0] for row in facts}) == 2 * EVENTS
    on_topic = asyncio.run(in_process(kafka, ReplayOptions(dry_run=True), None, None, live_group=None))
    assert on_topic["recordsRead"] == 2 * EVENTS  # each record once


@pytest.mark.kafka
def test_export_log_waits_for_a_broker_and_refuses_a_topic_that_deletes_history(
    tmp_path: Path, kafka_bootstrap: str, kafka_broker_control: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    """A broker down at the start left the batch in a spool of the export's, sent again with the
    next run (every record twice); a topic keeping records a day deleted the older history at
    once while the command said it had exported it (a review)."""
    from aiokafka.admin import AIOKafkaAdminClient, NewTopic

    kafka = settings_for(tmp_path, kafka_bootstrap_servers=kafka_bootstrap, topic=f"export-{uuid.uuid4().hex[:12]}")
    asyncio.run(record(SqliteEventLog(embedded_log_path(kafka))))  # events of last March
    kafka_broker_control.stop()
    try:
        assert run_command(build_parser().parse_args(["export-log", "--timeout", "2"]), kafka) == 1
        assert "cannot be reached" in capsys.readouterr().err
    finally:
        kafka_broker_control.start()
    assert run_command(build_parser().parse_args(["export-log", "--timeout", "60"]), kafka) == 0
    assert f"exported {EVENTS} events" in capsys.readouterr().out
    on_topic = asyncio.run(in_process(kafka, ReplayOptions(dry_run=True), None, None, live_group=None))
    assert on_topic["recordsRead"] == EVENTS

    async def make_topic(topic: str, configs: dict[str, str] | None = None, *, delete: bool = False) -> None:
        admin = AIOKafkaAdminClient(bootstrap_servers=kafka_bootstrap)
        await admin.start()
        try:
            if delete:
                await admin.delete_topics([topic])
                await asyncio.sleep(1.0)
            await admin.create_topics([NewTopic(topic, 1, 1, topic_configs=configs or {})])
        finally:
            await admin.close()

    deleting = (({"retention.ms": "86400000"}, "retention.ms=86400000"), ({"cleanup.policy": "compact"}, "compact"))
    for configs, named in deleting:
        other = settings_for(tmp_path, kafka_bootstrap_servers=kafka_bootstrap, topic=f"del-{uuid.uuid4().hex[:12]}")
        asyncio.run(make_topic(other.topic, configs))
        assert run_command(build_parser().parse_args(["export-log", "--timeout", "30"]), other) == 1
        err = capsys.readouterr().err
        assert named in err and "would be deleted" in err and "run it again" not in err

    # the topic deleted and made again since the note: said, and --from-start sends it all again
    asyncio.run(make_topic(kafka.topic, {"retention.ms": "-1"}, delete=True))
    assert run_command(build_parser().parse_args(["export-log", "--timeout", "30"]), kafka) == 1
    assert "made again; run export-log --from-start" in capsys.readouterr().err
    assert run_command(build_parser().parse_args(["export-log", "--from-start"]), kafka) == 0
    on_topic = asyncio.run(in_process(kafka, ReplayOptions(dry_run=True), None, None, live_group=None))
    assert on_topic["recordsRead"] == EVENTS


def test_export_log_says_what_it_needs_in_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    export = build_parser().parse_args(["export-log"])
    assert run_command(export, settings_for(tmp_path)) == 2
    assert "KAFKA_BOOTSTRAP_SERVERS" in capsys.readouterr().err
    assert run_command(export, settings_for(tmp_path, kafka_bootstrap_servers="127.0.0.1:1")) == 1
    assert "no embedded log at" in capsys.readouterr().err


def test_cli_full_keeps_the_history_another_log_made_unless_told(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A data dir's stores hold the embedded log's history, and the gateway moves to another log
    (Kafka, here a new embedded log): ``replay --full`` took the old history out of the stores,
    said ``changed 0`` and exited 0 (a review). It refuses, naming what it would remove, and
    ``--drop-missing`` removes it."""
    settings = settings_for(tmp_path, port=free_port())
    asyncio.run(record(SqliteEventLog(embedded_log_path(settings))))
    assert replay_cli(settings, "--reprice") == 0
    before = {row[0] for row in asyncio.run(read_file_store(settings))[1][0]}
    embedded_log_path(settings).unlink()  # the history is now another log's
    start = utcnow().replace(microsecond=0)
    asyncio.run(record(SqliteEventLog(embedded_log_path(settings)), start))
    capsys.readouterr()

    assert replay_cli(settings, "--full") == 1
    err = capsys.readouterr().err
    assert f"--full would remove {EVENTS} events ($" in err and "--drop-missing" in err
    assert {row[0] for row in asyncio.run(read_file_store(settings))[1][0]} == before  # nothing changed
    assert replay_cli(settings, "--full", "--drop-missing") == 0
    assert f"removed {EVENTS} events" in capsys.readouterr().out
    after = {row[0] for row in asyncio.run(read_file_store(settings))[1][0]}
    assert len(after) == EVENTS and not after & before


def test_a_redelivery_after_a_reprice_keeps_the_corrected_costs(tmp_path: Path) -> None:
    """The live projector meets events a replay corrected when they are delivered again (a crash
    between the stores' commit and the position's, a group set back): it wrote their recorded
    costs over the corrections, for part of history and without a word. Its sinks now keep a
    stored event as it is; a replay without --reprice still restores the recorded costs."""
    settings = settings_for(tmp_path, port=free_port())
    asyncio.run(record(SqliteEventLog(embedded_log_path(settings))))
    asyncio.run(project(settings))
    priced = settings.model_copy(update={"price_file": write_prices(tmp_path)})
    assert replay_cli(priced, "--reprice") == 0
    found, state = asyncio.run(read_file_store(settings))
    assert found == REPRICED

    with sqlite3.connect(embedded_log_path(settings)) as conn:  # the live group set back to the start
        conn.execute("UPDATE positions SET position = 0 WHERE group_id = ?", [DEFAULT_GROUP])
    asyncio.run(project(settings))  # every event delivered again
    assert positions(settings) == [(DEFAULT_GROUP, EVENTS)]
    assert asyncio.run(read_file_store(settings)) == (REPRICED, state)  # facts and rollup as corrected

    assert replay_cli(priced) == 0  # a replay without --reprice: the recorded costs, as documented
    assert asyncio.run(read_file_store(settings))[0] == RECORDED


# --- embedded log, through the service that owns DuckDB -------------------------------------------


@pytest.fixture
async def service(tmp_path: Path) -> AsyncIterator[tuple[Settings, str, Any]]:
    """The embedded gateway's consumer side: the live projector and ``/v1/admin/replay``."""
    keys = [ApiKey(key="sk-admin", tenant="ops", admin=True), ApiKey(key="sk-acme", tenant="acme")]
    settings = settings_for(tmp_path, api_keys=keys)
    await record(SqliteEventLog(embedded_log_path(settings)))
    pipeline = build_pipeline(settings)
    app = web.Application(middlewares=[error_middleware])
    install_replay(app, settings, pipeline.store, Authenticator(keys, "default"), live_group=DEFAULT_GROUP)

    async def lifecycle(app: web.Application) -> AsyncIterator[None]:
        async with pipeline.running():
            yield

    app.cleanup_ctx.append(lifecycle)
    runner, url = await start_app(app)
    try:
        async with asyncio.timeout(10):
            while pipeline.projector.stats.events_applied < EVENTS:  # noqa: ASYNC110
                await asyncio.sleep(0.02)
        yield settings, url, pipeline
    finally:
        await runner.cleanup()


async def test_the_service_replays_next_to_its_live_projector(
    tmp_path: Path, service: tuple[Settings, str, Any]
) -> None:
    settings, url, pipeline = service
    store: AnalyticsStore = pipeline.store
    assert await costs(store) == RECORDED
    live = positions(settings)
    prices = load_price_file(write_prices(tmp_path))
    seen: list[tuple[int, int]] = []

    report = await via_service(url, ReplayOptions(reprice=True), prices, "sk-admin", lambda d, t: seen.append((d, t)))

    assert report is not None
    assert await costs(store) == REPRICED
    assert report["priceVersion"] == load_price_book(write_prices(tmp_path)).version
    assert (report["unpricedBefore"], report["unpricedAfter"], report["costChanged"]) == (6, 1, 5)
    diff = {(d["tenantId"], d["model"]): d for d in report["diff"]}
    assert (diff[("acme", "acme-llm-1")]["oldCostUsd"], diff[("acme", "acme-llm-1")]["newCostUsd"]) == (
        "0",
        "0.0055818",
    )
    assert diff[("globex", "acme-llm-1")]["deltaUsd"] == "0.00898"
    assert report["liveBehind"] == 0 and report["warnings"] == []
    assert positions(settings) == live
    state = await duckdb_state(store)

    again = await via_service(url, ReplayOptions(reprice=True), prices, "sk-admin", lambda d, t: None)

    assert again is not None and (again["changed"], again["diff"]) == (0, [])
    assert await duckdb_state(store) == state

    async with aiohttp.ClientSession() as session:
        headers = {"authorization": "Bearer sk-acme"}
        async with session.post(f"{url}/v1/admin/replay", json={}, headers=headers) as response:
            assert response.status == 403
        headers = {"authorization": "Bearer sk-admin"}
        async with session.post(
            f"{url}/v1/admin/replay", json={"full": True, "since": "2026-01-01"}, headers=headers
        ) as r:
            assert r.status == 400
            assert "'full'" in (await r.json())["error"]["message"]  # the body's word for it


async def serve_store(settings: Settings) -> tuple[web.AppRunner, Any]:
    """The store's owner as ``serve`` and ``consume`` run it: the live projector and the replay
    service, started."""
    pipeline = build_pipeline(settings)
    app = web.Application(middlewares=[error_middleware])
    auth = Authenticator([], "default")
    install_replay(app, settings, pipeline.store, auth, live_group=DEFAULT_GROUP, stats=pipeline.projector.stats)

    async def lifecycle(app: web.Application) -> AsyncIterator[None]:
        async with pipeline.running():
            yield

    app.cleanup_ctx.append(lifecycle)
    runner, _ = await start_app(app)
    return runner, pipeline


@pytest.mark.parametrize("prices_from", ["--price-file", "the replay's own configuration"])
async def test_a_full_rebuild_cut_short_is_run_again_by_the_stores_owner_when_it_starts(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, prices_from: str
) -> None:
    """``replay --full`` empties the stores, then writes the log back; killed in between, it left
    them missing most of history for good (the live projector is past those events) while
    ``/healthz`` said ok. Its marker makes the process that owns the stores run it again, with
    the prices it began with, whether given to it or read from its own configuration (the owner,
    here, is configured with no price file: a re-test found the owner's file used instead)."""
    settings = settings_for(tmp_path)
    await record(SqliteEventLog(embedded_log_path(settings)))
    await project(settings)
    prices: PriceFile | None = load_price_file(write_prices(tmp_path))
    replaying = settings
    if prices_from != "--price-file":
        prices, replaying = None, settings.model_copy(update={"price_file": write_prices(tmp_path)})
    emptied = asyncio.Event()

    async def killed_while_writing(self: Any, *args: Any) -> None:
        emptied.set()
        await asyncio.Event().wait()  # the process dies here

    with monkeypatch.context() as patched:
        patched.setattr("consumers.replay.Replayer._replay", killed_while_writing)
        cut = asyncio.create_task(
            in_process(replaying, ReplayOptions(full=True, reprice=True), prices, None, live_group=None)
        )
        async with asyncio.timeout(20):
            await emptied.wait()
        cut.cancel()
        with pytest.raises(asyncio.CancelledError):
            await cut
    summary, _ = await read_file_store(settings)
    assert summary == {}  # emptied, and nothing written back

    # a replay that is not a rebuild says the stores are short (and leaves it to the owner)
    report = await in_process(settings, ReplayOptions(), None, None, live_group=None)
    assert any("cut short" in w for w in report["warnings"]), report["warnings"]

    released = asyncio.Event()
    writing = Replayer._replay

    async def held_until_looked_at(self: Any, *args: Any) -> None:
        await released.wait()
        await writing(self, *args)

    monkeypatch.setattr(Replayer, "_replay", held_until_looked_at)
    runner, pipeline = await serve_store(settings)
    try:
        async with asyncio.timeout(10):
            while "rebuild" not in pipeline.projector.stats.health():  # noqa: ASYNC110
                await asyncio.sleep(0.02)
        shown = pipeline.projector.stats.health()["rebuild"]
        assert isinstance(shown, dict) and shown["state"] == "running"  # /healthz says so meanwhile
        released.set()
        async with asyncio.timeout(30):
            while await pipeline.store.fetchall("SELECT * FROM rebuild_pending"):  # noqa: ASYNC110
                await asyncio.sleep(0.05)
        assert await costs(pipeline.store) == REPRICED  # the whole log, costed with the given prices
        async with asyncio.timeout(10):
            while "rebuild" in pipeline.projector.stats.health():  # noqa: ASYNC110
                await asyncio.sleep(0.02)
    finally:
        await runner.cleanup()
    assert any("was cut short" in r.getMessage() for r in caplog.records)

    runner, pipeline = await serve_store(settings)  # done: the next start has nothing to run again
    try:
        app_service = runner.app[REPLAY]
        assert app_service.resuming is None
    finally:
        await runner.cleanup()


async def test_the_cli_says_a_replay_the_service_took_was_cut_short(tmp_path: Path) -> None:
    """The service answered and began; then it went away (a restart, a crash): the CLI said
    nothing useful (a raw ClientPayloadError) or replayed in-process as if nobody were there."""

    async def dies_mid_replay(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"content-type": "application/x-ndjson"})
        await response.prepare(request)
        await response.write(b'{"type": "progress", "done": 10, "total": 100}\n')
        assert request.transport is not None
        request.transport.close()
        return response

    app = web.Application()
    app.router.add_post("/v1/admin/replay", dies_mid_replay)
    runner, url = await start_app(app)
    try:
        with pytest.raises(ReplayFailed, match=r"cut short.*runs the full rebuild again"):
            await via_service(url, ReplayOptions(full=True), None, None, lambda d, t: None)
    finally:
        await runner.cleanup()
    assert await via_service(f"http://127.0.0.1:{free_port()}", ReplayOptions(), None, None, print) is None


# --- Kafka log, DuckDB and Postgres -------------------------------------------------------------


@pytest.fixture
async def pg_schema(database_url: str) -> AsyncIterator[str]:
    name = f"replay_{uuid.uuid4().hex[:12]}"
    conn = await asyncpg.connect(database_url)
    try:
        await conn.execute(f'CREATE SCHEMA "{name}"')
        yield name
        await conn.execute(f'DROP SCHEMA IF EXISTS "{name}" CASCADE')
    finally:
        await conn.close()


async def llmusage(database_url: str, schema: str) -> list[tuple[Any, ...]]:
    conn = await asyncpg.connect(database_url)
    try:
        rows = await conn.fetch(
            f'SELECT "id", "tenantId", "model", "costUsd", "priceVersion", "billable" FROM "{schema}"."LLMUsage" '
            'ORDER BY "id"'
        )
    finally:
        await conn.close()
    return [tuple(r) for r in rows]


def totals(rows: list[tuple[Any, ...]]) -> dict[tuple[str, str], tuple[Decimal | None, int]]:
    found: dict[tuple[str, str], tuple[Decimal | None, int]] = {}
    for _id, tenant, model, cost, _version, billable in rows:
        total, unpriced = found.get((tenant, model), (None, 0))
        if cost is not None:
            total = cost if total is None else total + cost
        found[(tenant, model)] = (total, unpriced + (cost is None and billable))
    return found


@pytest.mark.kafka
@pytest.mark.postgres
async def test_kafka_log_into_duckdb_and_postgres(
    tmp_path: Path, kafka_bootstrap: str, database_url: str, pg_schema: str
) -> None:
    topic = f"replay-{uuid.uuid4().hex[:12]}"
    settings = settings_for(
        tmp_path,
        kafka_bootstrap_servers=kafka_bootstrap,
        topic=topic,
        topic_partitions=3,
        database_url=f"{database_url}?search_path={pg_schema}",
    )
    start = utcnow().replace(microsecond=0)
    await record(KafkaEventLog(kafka_bootstrap, topic, spool_path(settings), partitions=3), start)

    def progress(done: int, total: int) -> None:
        assert done <= total == EVENTS

    # a first replay builds both stores from the log, with the recorded costs
    built = await in_process(settings, ReplayOptions(), None, progress, live_group="nobody")
    assert (built["added"], built["unpricedAfter"], built["liveBehind"]) == (EVENTS, 6, EVENTS)
    assert totals(await llmusage(database_url, pg_schema)) == RECORDED
    assert (await read_file_store(settings))[0] == RECORDED

    prices = load_price_file(write_prices(tmp_path))
    report = await in_process(settings, ReplayOptions(reprice=True), prices, progress, live_group=None)

    rows = await llmusage(database_url, pg_schema)
    assert totals(rows) == REPRICED
    version = load_price_book(write_prices(tmp_path)).version
    assert {r[4] for r in rows if r[5] and r[3] is not None} == {version}
    found, state = await read_file_store(settings)
    assert found == REPRICED
    assert (report["costChanged"], report["unpricedBefore"], report["unpricedAfter"]) == (5, 6, 1)
    assert {(d["tenantId"], d["model"]): d["deltaUsd"] for d in report["diff"]} == {
        ("acme", "acme-llm-1"): "0.0055818",
        ("globex", "acme-llm-1"): "0.00898",
        ("acme", "gpt-4o-2024-08-06"): "0",  # same cost, new price version
    }

    again = await in_process(settings, ReplayOptions(reprice=True), prices, progress, live_group=None)

    assert (again["changed"], again["diff"], again["eventsApplied"]) == (0, [], EVENTS)
    assert await llmusage(database_url, pg_schema) == rows
    assert (await read_file_store(settings))[1][0] == state[0]

    # from a position: partition 0 from its first offset, the others from their beginning too
    partial = await in_process(
        settings, ReplayOptions(reprice=True, from_position="0:0"), prices, progress, live_group=None
    )
    assert (partial["recordsRead"], partial["changed"], partial["healthRebuilt"]) == (EVENTS, 0, False)
    # from a time: Kafka's offsets_for_times on the records' timestamps (= created_at), then the
    # exact created_at filter; events at start+2s, +4s, ... +10s, +12s, +13s, +14s
    since = start + timedelta(seconds=5)  # the last 4 events (one clock reading each: +1 s ... +8 s)
    later = await in_process(settings, ReplayOptions(reprice=True, since=since), prices, None, live_group=None)
    assert (later["events"], later["changed"], later["diff"]) == (4, 0, [])


@pytest.mark.postgres
async def test_a_full_rebuild_leaves_other_gateways_rows_in_a_shared_postgres(
    tmp_path: Path, database_url: str, pg_schema: str
) -> None:
    """Two embedded gateways, each with its own log and DuckDB, project into one Postgres: a
    ``replay --full`` of one of them deleted every gateway's ``"LLMUsage"`` rows (216,963 -> 1,000
    in a review) and reported nothing removed. Now it deletes and writes back only the rows its
    own store held; the other gateway's rows stay as they were."""
    dsn = f"{database_url}?search_path={pg_schema}"
    gateways = [settings_for(tmp_path / name, database_url=dsn) for name in ("a", "b")]
    start = utcnow().replace(microsecond=0)
    for offset, settings in enumerate(gateways):
        await record(SqliteEventLog(embedded_log_path(settings)), start + timedelta(minutes=offset))
        await in_process(settings, ReplayOptions(), None, None, live_group=None)
    both = await llmusage(database_url, pg_schema)
    assert len(both) == 2 * EVENTS

    report = await in_process(gateways[1], ReplayOptions(full=True), None, None, live_group=None)

    assert (report["eventsApplied"], report["changed"]) == (EVENTS, 0)
    assert await llmusage(database_url, pg_schema) == both
    assert (await read_file_store(gateways[1]))[0] == RECORDED


@pytest.mark.parametrize("mark", ['{"prices": 5}', "{not json", '{"file": {"prices": 5}}'])
async def test_a_rebuild_that_cannot_run_again_says_so_and_keeps_its_mark(tmp_path: Path, mark: str) -> None:
    """The rebuild's prices no longer read (a hand edit, a stricter version): the owner starts
    anyway (a mark that was not JSON stopped the gateway's start), ``/healthz`` shows the rebuild
    failed and why, and the mark stays (the stores still miss part of the log)."""
    settings = settings_for(tmp_path)
    await record(SqliteEventLog(embedded_log_path(settings)))
    store = AnalyticsStore(analytics_path(settings))
    await store.open()
    await store.run(lambda conn: conn.execute("INSERT INTO rebuild_pending VALUES (now(), true, ?)", [mark]))
    await store.close()
    runner, pipeline = await serve_store(settings)
    try:
        async with asyncio.timeout(10):
            while (pipeline.projector.stats.rebuild or {}).get("state") != "failed":  # noqa: ASYNC110
                await asyncio.sleep(0.02)
        health = pipeline.projector.stats.health()
        assert health["status"] == "rebuilding" and "replay --full" in str(health["rebuild"])
        assert len(await pipeline.store.fetchall("SELECT * FROM rebuild_pending")) == 1
    finally:
        await runner.cleanup()


async def test_a_rebuild_that_fails_again_is_tried_again_until_it_succeeds(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A store down for longer than the replay's own retries failed the resumed rebuild: it was
    given up until the next start, the stores short of the log meanwhile. It is tried again."""
    settings = settings_for(tmp_path)
    await record(SqliteEventLog(embedded_log_path(settings)))
    store = AnalyticsStore(analytics_path(settings))
    await store.open()
    await store.run(lambda conn: conn.execute("INSERT INTO rebuild_pending VALUES (now(), false, NULL)"))
    await store.close()
    monkeypatch.setattr("consumers.replay_http.RESUME_RETRY", 0.05)
    run = Replayer.run
    failures: list[str] = []

    async def down_twice(self: Any, options: ReplayOptions) -> Any:
        if len(failures) < 2:
            failures.append("down")
            raise ReplayError("replay stopped: postgres: connection refused (nothing is lost: run it again)")
        return await run(self, options)

    monkeypatch.setattr(Replayer, "run", down_twice)
    runner, pipeline = await serve_store(settings)
    try:
        async with asyncio.timeout(20):
            while await pipeline.store.fetchall("SELECT * FROM rebuild_pending"):  # noqa: ASYNC110
                await asyncio.sleep(0.05)
        assert failures == ["down", "down"]
        assert await costs(pipeline.store) == RECORDED and pipeline.projector.stats.health()["status"] == "ok"
    finally:
        await runner.cleanup()


async def test_a_replay_that_fails_leaves_no_empty_cost_store_behind(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """In Kafka mode with the broker down, ``replay`` fell back to replaying in its process,
    failed, and left the empty DuckDB file it had made: ``costs`` then read it as the whole
    history, "total $0 over 0 calls" with exit code 0, for a tenant that had spent money (a
    review). It also left its Kafka consumer unclosed."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed = f"127.0.0.1:{s.getsockname()[1]}"  # nothing listens once it is closed
    settings = Settings(data_dir=tmp_path, kafka_bootstrap_servers=closed, _env_file=None)
    with pytest.raises(ReplayFailed, match="Kafka at"):
        await in_process(settings, ReplayOptions(), None, None, live_group=None)
    assert os.listdir(tmp_path) == []
    gc.collect()  # aiokafka says so when an unclosed consumer is collected
    assert "Unclosed AIOKafkaConsumer" not in caplog.text
    # a store that was there before stays, filled or not
    store = AnalyticsStore(analytics_path(settings))
    await store.open()
    await store.close()
    with pytest.raises(ReplayFailed, match="Kafka at"):
        await in_process(settings, ReplayOptions(), None, None, live_group=None)
    assert analytics_path(settings).is_file()


async def test_a_dry_run_writes_no_cost_store(tmp_path: Path) -> None:
    """A dry run writes nothing: it left the DuckDB file it opened (a review found one in its
    working directory, where the default data dir is)."""
    settings = settings_for(tmp_path)
    await record(SqliteEventLog(embedded_log_path(settings)))
    report = await in_process(settings, ReplayOptions(reprice=True, dry_run=True), None, None, live_group=None)
    assert report["dryRun"] and report["recordsRead"] > 0
    assert not analytics_path(settings).exists()
    assert sorted(os.listdir(settings.data_dir)) == ["events.sqlite3"]


def failing_writes(monkeypatch: pytest.MonkeyPatch, *errors: ReplayError) -> list[str]:
    """The replays' writes (after the stores are emptied) raise ``errors`` in turn, then work;
    returns the list each write appends to."""
    writing, failures, runs = Replayer._replay, list(errors), []

    async def write(self: Any, *args: Any) -> None:
        runs.append("run")
        if failures:
            raise failures.pop(0)
        await writing(self, *args)

    monkeypatch.setattr(Replayer, "_replay", write)
    return runs


async def projected_log(tmp_path: Path) -> tuple[Settings, dict[Any, Any]]:
    """An embedded log of the scenario's calls, projected; its settings and the stores' costs."""
    settings = settings_for(tmp_path)
    await record(SqliteEventLog(embedded_log_path(settings)))
    await project(settings)
    before, _ = await read_file_store(settings)
    return settings, before


async def test_a_full_rebuild_that_fails_once_the_stores_are_emptied_runs_again_at_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A store down past the replay's own retries stopped ``replay --full`` after it had emptied
    the stores: they stayed short until the next restart, ``/v1/costs`` answered $0 and
    ``/healthz`` said ok (a review). The service now runs it again in the background, as a
    start does, and says so in its answer."""
    settings, before = await projected_log(tmp_path)
    failing_writes(monkeypatch, ReplayError("the Postgres sink is unavailable: connection refused"))
    runner, pipeline = await serve_store(settings)
    try:
        url = f"http://127.0.0.1:{runner.addresses[0][1]}/v1/admin/replay"
        async with aiohttp.ClientSession() as s, s.post(url, json={"full": True}) as r:
            lines = [json.loads(line) for line in (await r.text()).splitlines()]
        assert lines[-1]["type"] == "error" and "runs again in the background" in lines[-1]["message"], lines
        async with asyncio.timeout(30):
            while await pipeline.store.fetchall("SELECT * FROM rebuild_pending"):  # noqa: ASYNC110
                await asyncio.sleep(0.05)
        assert await costs(pipeline.store) == before  # the whole log again, without a restart
    finally:
        await runner.cleanup()


async def test_a_rebuild_waiting_to_run_again_leaves_a_newer_replay_alone(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A rebuild waiting out its backoff ran after an operator's own `replay --full` had rebuilt
    the stores, emptied them again and undid that replay's prices (a re-test): it runs only while
    its rebuild is still the pending one."""
    import consumers.replay_http as replay_http

    monkeypatch.setattr(replay_http, "RESUME_RETRY", 2.0)
    settings, before = await projected_log(tmp_path)
    runs = failing_writes(monkeypatch, ReplayError("postgres: down"), ReplayError("postgres: still down"))
    runner, pipeline = await serve_store(settings)
    try:
        url = f"http://127.0.0.1:{runner.addresses[0][1]}/v1/admin/replay"
        async with aiohttp.ClientSession() as s:
            async with s.post(url, json={"full": True}) as r:
                assert "runs again in the background" in (await r.text())
            service = runner.app[REPLAY]
            async with asyncio.timeout(10):
                while len(runs) < 2:  # noqa: ASYNC110 - the background run failed too: it waits
                    await asyncio.sleep(0.01)
            for _ in range(100):  # the operator's own, which succeeds (409 while the failed run lets go)
                async with s.post(url, json={"full": True}) as r:
                    if r.status != 409:
                        assert '"type": "result"' in (await r.text())
                        break
                await asyncio.sleep(0.02)
        assert service.resuming is not None
        async with asyncio.timeout(10):
            await service.resuming
        assert runs == ["run"] * 3  # not a fourth: the waiting rebuild saw nothing pending
        assert await costs(pipeline.store) == before
        assert "rebuild" not in pipeline.projector.stats.health()
    finally:
        await runner.cleanup()
