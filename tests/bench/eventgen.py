"""Usage events for the pipeline benchmark: generated fast, put on the embedded log or Kafka in
bulk (not timed), or published live at a fixed rate through the gateway's own ``EventLog``.

The live producer is a separate process (so it does not share the projector's GIL)::

    python -m tests.bench.eventgen --rate 5000 --seconds 20 --data-dir D [--kafka B --topic T]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
import zlib
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

from gateway.eventlog.sqlite import connect, ensure_log_table
from gateway.events import UsageEvent
from gateway.ids import uuid7
from tests.bench.common import say

START = datetime(2026, 3, 1, tzinfo=UTC)
PROVIDERS = ("openai", "anthropic", "google", "azure", "ollama")
MODELS = ("gpt-4o-2024-08-06", "claude-3-5-sonnet-20241022", "gemini-pro", "gpt-4o", "llama3")


def event_dict(i: int, created_at: datetime) -> dict[str, object]:
    """The i-th event as its JSON object (the UsageEvent schema, money as decimal text)."""
    ok = i % 10 != 0
    prompt, completion = 500 + i % 1000, (100 + i % 300) if ok else 0
    return {
        "schema_version": 1,
        "event_id": str(uuid7()),
        "request_id": f"req_{i // 2:012x}",
        "attempt": 1 + i % 2,
        "created_at": created_at.isoformat().replace("+00:00", "Z"),
        "tenant_id": f"tenant-{i % 200}",
        "api_key_id": None,
        "endpoint": "chat.completions",
        "stream": i % 3 == 0,
        "provider": PROVIDERS[i % 5],
        "requested_model": "gpt-4o",
        "provider_model": MODELS[i % 5],
        "served_model": MODELS[i % 5] if ok else None,
        "outcome": "success" if ok else "rate_limited",
        "http_status": 200 if ok else 429,
        "error_code": None if ok else "rate_limit_exceeded",
        "error_message": None,
        "latency_ms": 100.0 + i % 900,
        "ttft_ms": 20.5 if ok else None,
        "prompt_tokens": prompt if ok else 0,
        "completion_tokens": completion,
        "cached_tokens": 0,
        "cache_creation_tokens": 0,
        "cache_creation_1h_tokens": 0,
        "reasoning_tokens": 0,
        "total_tokens": (prompt + completion) if ok else 0,
        "cost_usd": (None if i % 97 == 0 else f"{0.0000025 * (i % 5000):.7f}") if ok else "0",
        "price_version": "builtin-2026-03",
        "billable": ok,
        "incomplete": False,
        "gateway_instance": None,
    }


def encoded(count: int, start: int = 0, spacing_ms: float = 1.0) -> Iterator[tuple[str, bytes, int]]:
    """(key, value, ts_ms) of events ``start .. start+count``, ``spacing_ms`` apart from START, as
    compact JSON with the fields in schema order: byte for byte what the gateway writes."""
    for i in range(start, start + count):
        at = START + timedelta(milliseconds=i * spacing_ms)
        data = event_dict(i, at)
        value = json.dumps(data, separators=(",", ":")).encode()
        yield str(data["tenant_id"]), value, int(at.timestamp() * 1000)


def check_schema() -> None:
    """The generated JSON must stay a valid UsageEvent, byte for byte what the gateway writes
    (the schema may change under us: then say so, the decode figures would be off)."""
    _, value, _ = next(encoded(1, 1))
    if UsageEvent.from_json(value).to_json() != value:
        say("WARNING: generated events are not byte for byte what the gateway writes")


def spacing_for(count: int, days: float) -> float:
    """Milliseconds between two of ``count`` events spread evenly over ``days`` of event time."""
    return days * 86_400_000 / max(count, 1)


def prefill_sqlite(path: Path, count: int, chunk: int = 50_000, spacing_ms: float = 1.0) -> None:
    conn = connect(path)
    ensure_log_table(conn, "events")
    try:
        for low in range(0, count, chunk):
            rows = list(encoded(min(chunk, count - low), low, spacing_ms))
            conn.execute("BEGIN")
            conn.executemany("INSERT INTO events (key, value, ts) VALUES (?, ?, ?)", rows)
            conn.execute("COMMIT")
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    finally:
        conn.close()


async def prefill_kafka(bootstrap: str, topic: str, count: int, partitions: int = 3, spacing_ms: float = 1.0) -> None:
    from aiokafka import AIOKafkaProducer

    from gateway.eventlog.kafka_admin import ensure_topic

    await ensure_topic(bootstrap, topic, partitions)
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=20, max_batch_size=512 * 1024)
    await producer.start()
    try:
        batches: dict[int, object] = {}
        for key, value, ts in encoded(count, 0, spacing_ms):
            p = zlib.crc32(key.encode()) % partitions
            batch = batches.setdefault(p, producer.create_batch())
            if batch.append(key=key.encode(), value=value, timestamp=ts) is None:  # type: ignore[attr-defined]
                await (await producer.send_batch(batch, topic, partition=p))  # type: ignore[arg-type]
                batches[p] = producer.create_batch()
                batches[p].append(key=key.encode(), value=value, timestamp=ts)  # type: ignore[attr-defined]
        for p, batch in batches.items():
            await (await producer.send_batch(batch, topic, partition=p))  # type: ignore[arg-type]
    finally:
        await producer.stop()


async def produce_live(rate: int, seconds: float, data_dir: Path, kafka: str | None, topic: str) -> int:
    """Publish ``rate`` events/s for ``seconds`` through the gateway's EventLog (created_at =
    now, so a sink can measure end-to-end lag); returns how many were published."""
    from gateway.eventlog.factory import build_event_log
    from gateway.settings import Settings

    settings = Settings(data_dir=data_dir, kafka_bootstrap_servers=kafka, topic=topic)
    log = build_event_log(settings)
    await log.start()
    sent, tick, started = 0, 0.01, time.monotonic()
    try:
        while (elapsed := time.monotonic() - started) < seconds:
            due = int(elapsed * rate)
            for i in range(sent, due):
                log.publish(UsageEvent.model_validate(event_dict(i, datetime.now(UTC))))
            sent = max(sent, due)
            await asyncio.sleep(tick)
    finally:
        await log.close(timeout=30.0)
    return sent


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m tests.bench.eventgen")
    parser.add_argument("--rate", type=int, required=True)
    parser.add_argument("--seconds", type=float, required=True)
    parser.add_argument("--data-dir", type=Path, required=True)
    parser.add_argument("--kafka")
    parser.add_argument("--topic", default="llm.usage")
    args = parser.parse_args()
    sent = asyncio.run(produce_live(args.rate, args.seconds, args.data_dir, args.kafka, args.topic))
    print(json.dumps({"published": sent}), flush=True)


if __name__ == "__main__":
    main()
