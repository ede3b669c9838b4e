"""A starting embedded gateway's provider health: reading its window's attempts back from the log
(``gateway/health/recall.py``) against the baseline of only reading and decoding those records.

The log holds ``--events`` attempts spread over the last ``--window`` seconds (a busy gateway's
minute: 3,000 a second is 180,000), after ``--before`` older ones the read skips by bisection;
the recalled view must count every attempt of the window (checked here too)::

    python -m tests.bench.health_recall [--events 180000] [--window 60] [--before 1000000] [--smoke]
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

from gateway.event_json import decode_event
from gateway.eventlog.sqlite import SqliteOutbox, append_events, connect, epoch_ms, first_seq_since
from gateway.health.config import HealthSettings
from gateway.health.recall import SKEW, recall
from gateway.health.view import HealthView
from tests.bench.common import say, table, timing_row
from tests.support.events import usage_event

PROVIDERS = ("openai", "azure", "anthropic", "google", "ollama")


def write(outbox: SqliteOutbox, count: int, start: datetime, end: datetime) -> None:
    step = (end - start) / max(count, 1)
    batch = []
    for n in range(count):
        outcome = "upstream_error" if n % 50 == 0 else None
        provider = PROVIDERS[n % len(PROVIDERS)]
        latency = 150.0 + (n * 7919) % 2000  # spread, as real latencies are
        batch.append(
            usage_event(
                "t", Decimal("0.0000125"), start + step * n, outcome=outcome, provider=provider, latency_ms=latency
            )
        )
        if len(batch) == 5000:
            append_events(outbox, batch)
            batch = []
    append_events(outbox, batch)


def read_only(log: Path, since: datetime) -> tuple[float, int]:
    """The baseline: the same records read and decoded, counted nowhere."""
    began = time.perf_counter()
    conn = connect(log)
    first = first_seq_since(conn, epoch_ms(since)) or 0
    decoded = 0
    for (value,) in conn.execute("SELECT value FROM events WHERE seq >= ? ORDER BY seq", (first,)):
        decode_event(value)
        decoded += 1
    conn.close()
    return time.perf_counter() - began, decoded


async def main_async(events: int, window: float, before: int) -> None:
    now = datetime.now(UTC)
    config = HealthSettings(window_seconds=window)
    with tempfile.TemporaryDirectory() as tmp:
        log = Path(tmp) / "events.sqlite3"
        outbox = SqliteOutbox(log)
        began = time.perf_counter()
        write(outbox, before, now - timedelta(days=1), now - timedelta(seconds=window) - SKEW * 2)
        write(outbox, events, now - timedelta(seconds=window) + timedelta(seconds=1), now)
        outbox.close()
        say(f"wrote {before + events:,} events in {time.perf_counter() - began:.1f} s")
        baseline, decoded = read_only(log, now - timedelta(seconds=window) - SKEW)
        view = HealthView(config, clock=lambda: now)
        began = time.perf_counter()
        counted = await recall(view, log)
        took = time.perf_counter() - began
    if counted != events or decoded != events:
        raise SystemExit(f"the recall counted {counted:,} and the read decoded {decoded:,} of {events:,} attempts")
    say("the recall counted every attempt of the window")
    print(
        table(
            ["start", "events", "seconds", "µs an event", "x read only"],
            [
                timing_row("read and decode only (baseline)", events, baseline, baseline),
                timing_row("recall into the health view", events, took, baseline),
            ],
        )
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=180_000)
    parser.add_argument("--window", type=float, default=60.0)
    parser.add_argument("--before", type=int, default=1_000_000)
    parser.add_argument("--smoke", action="store_true", help="a seconds-long run (CI)")
    args = parser.parse_args()
    events, before = (5_000, 5_000) if args.smoke else (args.events, args.before)
    asyncio.run(main_async(events, args.window, before))


if __name__ == "__main__":
    main()
