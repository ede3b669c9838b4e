"""Pipeline throughput and lag: the projector over the embedded log and Kafka, into DuckDB and
Postgres, against read-only and one-sink baselines in the same run (not a test).

1. Drain: N events (1,000,000) are put on the log (not timed); a fresh consumer group projects
   them all with the product's sinks (``consumers.pipeline.build_sinks``: DuckDB facts, health
   history, Postgres ``LLMUsage``), then with a null sink (read + decode + commit only) and
   with each store alone. events/s = N / wall time.
2. Lag: a separate process publishes at a fixed rate through the gateway's own ``EventLog``
   while the projector runs; a probe after the last sink measures now - ``created_at``.
3. Replay: ``llm-gateway replay`` of the N events when that command exists, else the drain of
   the embedded log from the beginning with all sinks (what a replay does), marked as such.

    python -m tests.bench.pipeline --smoke
    python -m tests.bench.pipeline --events 1000000 --start-services
"""

from __future__ import annotations

import argparse
import asyncio
import inspect
import json
import os
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import asyncpg

from analytics.store import AnalyticsStore
from consumers.deadletter import LogDeadLetters
from consumers.pipeline import build_pipeline, build_sinks
from consumers.projector import Projector
from consumers.sinks.base import Sink
from consumers.sinks.duckdb import DuckDBSink
from consumers.sinks.health_history import HealthHistorySink
from consumers.sinks.postgres import PostgresSink
from gateway.eventlog.base import LogRecord
from gateway.eventlog.factory import build_dead_letters, build_log_reader, embedded_log_path
from gateway.events import UsageEvent
from gateway.runtime import tune_gc
from gateway.settings import Settings
from tests.bench import eventgen
from tests.bench.common import (
    REPO,
    Target,
    clean_env,
    fmt,
    machine,
    percentile,
    say,
    servers_cpu_seconds,
    services,
    table,
    targets_table,
)

BATCH = inspect.signature(build_pipeline).parameters["batch_size"].default
POLL = inspect.signature(build_pipeline).parameters["poll_timeout"].default
LINGER = inspect.signature(build_pipeline).parameters["linger"].default


class NullSink:
    name = "null"

    async def start(self) -> None: ...
    async def apply(self, events: Sequence[UsageEvent]) -> None: ...
    async def reset(self) -> None: ...
    async def close(self) -> None: ...


class LagProbe(NullSink):
    """Records how long ago each event was created, once its batch is committed: applied by
    every sink (the projector applies them all at once, so a sink's own ``apply`` would stamp
    the batch when the others have only begun) and its position stored."""

    name = "lag-probe"

    def __init__(self) -> None:
        self.lags_ms: list[float] = []
        self._batch: list[datetime] = []

    async def apply(self, events: Sequence[UsageEvent]) -> None:
        self._batch += [e.created_at for e in events]

    def committed(self) -> None:
        now = datetime.now(UTC)
        self.lags_ms += [(now - t).total_seconds() * 1000 for t in self._batch]
        self._batch.clear()


@dataclass
class Drain:
    log: str
    sinks: str
    events: int
    seconds: float
    cpu: float
    #: CPU seconds of the Postgres server and the Kafka broker during the drain
    servers_cpu: float = 0.0

    @property
    def cpu_per_event_us(self) -> float:
        """All the CPU one event costs (this process, DuckDB's threads, Postgres, the broker)."""
        return (self.cpu + self.servers_cpu) / self.events * 1e6 if self.events else float("nan")

    @property
    def ceiling(self) -> float:
        """events/s if every core of the machine did nothing but this, perfectly in parallel."""
        return (os.cpu_count() or 1) * 1e6 / self.cpu_per_event_us

    @property
    def rate(self) -> float:
        return self.events / self.seconds if self.seconds else float("nan")


def settings_for(data_dir: Path, kafka: str | None, topic: str, database_url: str | None) -> Settings:
    return Settings(data_dir=data_dir, kafka_bootstrap_servers=kafka, topic=topic, database_url=database_url)


async def pg_schema(url: str) -> str:
    """A fresh schema, so the bench never touches the shared "LLMUsage" table; returns a DSN
    whose search_path points at it."""
    schema = f"bench_pipeline_{uuid.uuid4().hex[:8]}"
    conn = await asyncpg.connect(url)
    try:
        await conn.execute(f'CREATE SCHEMA "{schema}"')
    finally:
        await conn.close()
    return f"{url}{'&' if '?' in url else '?'}search_path={schema}"


async def drop_bench_schemas(url: str) -> None:
    conn = await asyncpg.connect(url)
    try:
        for (name,) in await conn.fetch("SELECT nspname FROM pg_namespace WHERE nspname LIKE 'bench_pipeline_%'"):
            await conn.execute(f'DROP SCHEMA "{name}" CASCADE')
    finally:
        await conn.close()


async def make_sinks(kind: str, settings: Settings, store: AnalyticsStore) -> list[Sink]:
    if kind == "null":
        return [NullSink()]
    if kind == "duckdb":
        return [DuckDBSink(store, corrects=False), HealthHistorySink(store, settings.health)]
    assert settings.database_url
    url = await pg_schema(settings.database_url)
    if kind == "postgres":
        return [PostgresSink(url, corrects=False)]
    if kind == "stores":  # the two stores, without the health history the product adds
        return [DuckDBSink(store, corrects=False), PostgresSink(url, corrects=False)]
    return build_sinks(settings.model_copy(update={"database_url": url}), store, live=True)  # "all": the product's


async def project(
    settings: Settings,
    sinks: list[Sink],
    store: AnalyticsStore,
    until: int,
    stop_after: float,
    probe: LagProbe | None = None,
    linger: float = 0.0,
) -> int:
    """Run a fresh consumer group until ``until`` events are applied (or no progress), with the
    product's batch size and poll timeout. ``linger``: the product's (LINGER) for live traffic; a
    drained backlog's batches are full, and lingering would only hold its last one back."""
    reader = build_log_reader(settings, f"bench-{uuid.uuid4().hex[:8]}")
    if probe is not None:
        commit = reader.commit

        async def committed(records: Sequence[LogRecord]) -> None:
            await commit(records)
            probe.committed()

        reader.commit = committed  # type: ignore[method-assign]
    dead = build_dead_letters(settings)
    projector = Projector(reader, sinks, LogDeadLetters(dead), batch_size=BATCH, poll_timeout=POLL, linger=linger)
    await store.open()
    await dead.start()
    await reader.start()
    await projector.start()
    stop = asyncio.Event()  # never set: the loop is cancelled once done

    async def until_done() -> None:  # the product's loop (run_forever), stopped once all are in
        seen, last = -1, time.monotonic()
        while projector.stats.events_applied < until and time.monotonic() - last < stop_after:
            if projector.stats.events_applied != seen:
                seen, last = projector.stats.events_applied, time.monotonic()
            await asyncio.sleep(0.005)

    running = asyncio.create_task(projector.run_forever(stop))
    try:
        await until_done()
        return projector.stats.events_applied
    finally:
        # every event is applied and committed (or the caller gave up: the live run cancels
        # this coroutine): stop the loop before its reader is closed under it
        running.cancel()
        await asyncio.gather(running, return_exceptions=True)
        await projector.close()
        await reader.close()
        await dead.close()
        await store.close()


async def drain(log: str, kind: str, settings: Settings, n: int, work: Path) -> Drain:
    store = AnalyticsStore(work / f"analytics-{uuid.uuid4().hex[:8]}.duckdb")
    sinks = await make_sinks(kind, settings, store)
    wall, cpu, servers = time.perf_counter(), time.process_time(), servers_cpu_seconds()
    applied = await project(settings, sinks, store, n, stop_after=60.0)
    seconds, cpu = time.perf_counter() - wall, time.process_time() - cpu
    result = Drain(log, kind, applied, seconds, cpu, servers_cpu_seconds() - servers)
    say(f"drain {log} -> {kind}: {applied:,} events in {result.seconds:.1f} s ({result.rate:,.0f}/s)")
    return result


async def live(log: str, settings: Settings, rate: int, seconds: float, work: Path) -> list[str]:
    store = AnalyticsStore(work / f"live-{uuid.uuid4().hex[:8]}.duckdb")
    probe = LagProbe()
    sinks = [*(await make_sinks("all" if settings.database_url else "duckdb", settings, store)), probe]
    cmd = [sys.executable, "-m", "tests.bench.eventgen", "--rate", str(rate), "--seconds", str(seconds)]
    cmd += ["--data-dir", str(settings.data_dir), "--topic", settings.topic]
    cmd += ["--kafka", settings.kafka_bootstrap_servers] if settings.kafka_bootstrap_servers else []
    producer = await asyncio.create_subprocess_exec(*cmd, cwd=REPO, stdout=asyncio.subprocess.PIPE)
    consumer = asyncio.create_task(
        project(settings, sinks, store, 10**12, stop_after=seconds + 30, probe=probe, linger=LINGER)
    )
    out, _ = await producer.communicate()
    published = json.loads(out.decode().strip().splitlines()[-1])["published"]
    deadline = time.monotonic() + 60
    while len(probe.lags_ms) < published and time.monotonic() < deadline and not consumer.done():  # noqa: ASYNC110
        await asyncio.sleep(0.1)
    consumer.cancel()
    await asyncio.gather(consumer, return_exceptions=True)
    lags = probe.lags_ms
    say(f"live {log}: {published:,} published, {len(lags):,} applied, p50 lag {percentile(lags, 50):.0f} ms")
    return [
        log,
        f"{rate:,}/s",
        f"{published:,}",
        f"{len(lags):,}",
        *(fmt(percentile(lags, q), 0) for q in (50, 99, 100)),
    ]


async def replay(settings: Settings) -> tuple[float, str] | None:
    """``llm-gateway replay --local`` (the whole embedded log into a fresh DuckDB, and Postgres
    when there is one), timed as a command, if the command exists."""
    if not (REPO / "consumers" / "replay_command.py").is_file():
        return None
    cmd = [sys.executable, "-m", "gateway", "replay", "--local", "--json"]
    env = clean_env(LLM_GATEWAY_DATA_DIR=str(settings.data_dir))
    if settings.database_url:
        env["DATABASE_URL"] = await pg_schema(settings.database_url)
    started = time.perf_counter()
    done = await asyncio.to_thread(subprocess.run, cmd, cwd=REPO, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        say(f"llm-gateway replay failed ({done.returncode}): {done.stderr[-300:]}")
        return None
    return time.perf_counter() - started, "llm-gateway " + " ".join(cmd[3:])


async def bench_log(log: str, settings: Settings, args: argparse.Namespace, work: Path) -> list[Drain]:
    """The product's sinks over all N events; the baselines over the first ``--baseline-events``."""
    few = min(args.baseline_events or args.events, args.events)
    kinds = ["null", "duckdb", *(["postgres", "stores", "all"] if settings.database_url else [])]
    return [await drain(log, kind, settings, args.events if kind == "all" else few, work) for kind in kinds]


async def run(args: argparse.Namespace, kafka: str | None, database_url: str | None, work: Path) -> None:
    eventgen.check_schema()
    embedded = settings_for(work / "embedded", None, "llm.usage", database_url)
    say(f"putting {args.events:,} events on the embedded log (not timed)")
    spacing = eventgen.spacing_for(args.events, args.days)
    eventgen.prefill_sqlite(embedded_log_path(embedded), args.events, spacing_ms=spacing)
    drains = await bench_log("embedded", embedded, args, work)
    live_embedded = settings_for(work / "live-e", None, "llm.usage", database_url)
    lags = [await live("embedded", live_embedded, args.rate, args.seconds, work)]
    replayed = await replay(embedded)
    if kafka:
        topic = f"bench-pipeline-{uuid.uuid4().hex[:8]}"
        on_kafka = settings_for(work / "kafka", kafka, topic, database_url)
        say(f"putting {args.events:,} events on Kafka topic {topic} (not timed)")
        await eventgen.prefill_kafka(kafka, topic, args.events, spacing_ms=spacing)
        drains += await bench_log("kafka", on_kafka, args, work)
        live_kafka = settings_for(work / "live-k", kafka, f"bench-live-{uuid.uuid4().hex[:8]}", database_url)
        lags.append(await live("kafka", live_kafka, args.rate, args.seconds, work))
    if database_url:
        await drop_bench_schemas(database_url)
    report(args, drains, lags, replayed, kafka, database_url)


LABELS = {
    "null": "none (read + decode + commit)",
    "duckdb": "DuckDB facts + health history",
    "postgres": "Postgres LLMUsage",
    "stores": "DuckDB facts + Postgres (no health history)",
    "all": "all (product: DuckDB + health + Postgres)",
}


def drain_row(d: Drain, base: dict[str, float]) -> list[str]:
    ratio = d.rate / base[d.log] if base.get(d.log) else None
    return [
        d.log, LABELS[d.sinks], f"{d.events:,}", fmt(d.seconds, 1), fmt(d.rate, 0), fmt(ratio), fmt(d.cpu, 1),
        fmt(d.servers_cpu, 1), fmt(d.cpu_per_event_us, 1), fmt(d.ceiling, 0),
    ]  # fmt: skip


def pipeline_targets(
    drains: list[Drain], replayed: tuple[float, str] | None, events: int, logs: list[str]
) -> list[Target]:
    full = {d.log: d for d in drains if d.sinks == "all"}
    targets = [
        Target(f"projection into Postgres + DuckDB ({log})", full[log].rate if log in full else None, 50_000, False,
               "/s", "" if log in full else "no Postgres")
        for log in logs
    ]  # fmt: skip
    if replayed is not None:
        seconds, how = replayed[0], "llm-gateway replay --local"
    else:
        drained = full.get("embedded") or next((d for d in drains if d.sinks == "duckdb"), None)
        seconds, how = (drained.seconds if drained else None), "proxy: projector drain from the beginning"
    scaled = None if seconds is None else seconds * 1_000_000 / events
    note = how if events == 1_000_000 else f"{how}; scaled from {events:,} events"
    return [*targets, Target("replay of 1,000,000 events", scaled, 30, True, " s", note)]


def report(
    args: argparse.Namespace,
    drains: list[Drain],
    lags: list[list[str]],
    replayed: tuple[float, str] | None,
    kafka: str | None,
    database_url: str | None,
) -> None:
    base = {d.log: d.rate for d in drains if d.sinks == "null"}
    print(f"\n## Pipeline ({machine()})\n")
    spacing = eventgen.spacing_for(args.events, args.days)
    print(f"Events over {args.days:g} days of event time ({spacing:g} ms apart); ", end="")
    print(f"projector batch {BATCH:,}; Kafka: {'yes' if kafka else 'skipped'}; ", end="")
    print(f"Postgres: {'yes' if database_url else 'skipped'}\n")
    headers = [
        "log", "sinks", "events", "s", "events/s", "x read-only", "CPU s (this process)",
        "CPU s (Postgres, broker)", "CPU µs/event (all)", f"ceiling events/s ({os.cpu_count()} cores)",
    ]  # fmt: skip
    print(table(headers, [drain_row(d, base) for d in drains]))
    print(
        "\nCPU µs/event counts every process the drain keeps busy (this one with DuckDB's threads, the"
        "\nPostgres server, the broker); the ceiling is what the machine's cores could do if they did"
        "\nnothing else, perfectly in parallel: the physical limit of this design on this machine."
    )
    print(
        f"\nLive: {args.rate:,} events/s for {args.seconds:g} s from a separate process (the gateway's EventLog);"
        f" lag = now - created_at once the event's batch is in every sink and committed (the product's batch"
        f" of {BATCH:,} and linger of {LINGER:g} s: a batch waits that long for more events)\n"
    )
    print(table(["log", "rate", "published", "applied", "p50 lag ms", "p99 lag ms", "max lag ms"], lags))
    if replayed is not None:
        print(f"\n`{replayed[1]}` of {args.events:,} events: {replayed[0]:.1f} s (as a command, startup included)")
    logs = ["embedded", *(["kafka"] if kafka else [])]
    print()
    print(targets_table(pipeline_targets(drains, replayed, args.events, logs)))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m tests.bench.pipeline", description=__doc__.split("\n")[0])
    p.add_argument("--smoke", action="store_true", help="20,000 events, 2 s live (CI)")
    p.add_argument("--events", type=int, default=1_000_000)
    p.add_argument("--baseline-events", type=int, help="events for the baseline drains (default: --events)")
    p.add_argument("--rate", type=int, default=5_000, help="live events/s")
    p.add_argument("--seconds", type=float, default=20.0, help="live duration")
    p.add_argument("--start-services", action="store_true", help="start Postgres and a private broker if not given")
    p.add_argument("--no-kafka", action="store_true", help="embedded log only")
    p.add_argument(
        "--days",
        type=float,
        default=1.0,
        help="days of event time the N events span (default 1: a day of a platform's calls). Sparser "
        "history costs more: the health history writes rows per minute of event time, and DuckDB "
        "compacts each closed day",
    )
    args = p.parse_args(argv)
    if args.smoke:
        args.events, args.rate, args.seconds = 20_000, 2_000, 2.0
    tune_gc()  # as in the product's processes (llm-gateway serve / consume / replay)
    with (
        services(kafka=not args.no_kafka, postgres=True, start=args.start_services) as svc,
        tempfile.TemporaryDirectory(prefix="bench-pipeline-") as tmp,
    ):
        asyncio.run(run(args, svc.kafka, svc.database_url, Path(tmp)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
