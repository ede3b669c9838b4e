"""The live health view of a restarted embedded gateway reads its window from the log."""

from __future__ import annotations

import logging
import sqlite3
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from gateway.eventlog.sqlite import ensure_log_table, epoch_ms
from gateway.health.recall import recall
from gateway.health.view import HealthView
from tests.support.events import usage_event

NOW = datetime(2026, 12, 2, 12, 0, tzinfo=UTC)


def write(path: Path, rows: list[tuple[bytes, datetime]]) -> None:
    with sqlite3.connect(path) as conn:
        ensure_log_table(conn, "events")
        conn.executemany("INSERT INTO events (key, value, ts) VALUES ('t', ?, ?)", [(v, epoch_ms(t)) for v, t in rows])


async def test_the_windows_attempts_are_counted_and_older_or_unreadable_ones_are_not(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="gateway.health")
    path = tmp_path / "events.sqlite3"
    old = NOW - timedelta(minutes=30)
    # five failures 20 to 16 s ago: the circuit opened then, its 30 s cool-down not over
    failed = [usage_event("t", None, NOW - timedelta(seconds=20 - i), outcome="upstream_error") for i in range(5)]
    write(
        path,
        [(usage_event("t", None, old, outcome="upstream_error").to_json(), old)]
        + [(b"{not json", NOW - timedelta(seconds=55))]
        + [(e.to_json(), e.created_at) for e in failed],
    )
    view = HealthView(clock=lambda: NOW)
    assert await recall(view, path) == 5
    assert view.health("openai").circuit == "open"
    assert view.reopens_in("openai") == pytest.approx(14, abs=0.01)  # the cool-down it had left
    assert "provider health: 5 attempts of the last 60 s read from the log" in caplog.messages[-1]
    assert "(1 unreadable)" in caplog.messages[-1]


async def test_a_log_that_cannot_be_read_leaves_health_empty(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "events.sqlite3"
    path.write_bytes(b"not a database" * 100)
    view = HealthView(clock=lambda: NOW)
    assert await recall(view, path) == 0
    assert "cannot read the embedded log" in caplog.text
    assert await recall(HealthView(clock=lambda: NOW), tmp_path / "empty.sqlite3") == 0


async def test_rows_written_as_text_or_numbers_do_not_stop_the_start(tmp_path: Path) -> None:
    """A row holding text stopped every start (``bytes(value)``: TypeError); the projector takes
    it (a review). Text is read as the projector reads it, a number is unreadable."""
    path = tmp_path / "events.sqlite3"
    failed = [usage_event("t", None, NOW - timedelta(seconds=20 - i), outcome="upstream_error") for i in range(5)]
    with sqlite3.connect(path) as conn:
        ensure_log_table(conn, "events")
        conn.executemany(
            "INSERT INTO events (key, value, ts) VALUES ('t', ?, ?)",
            [(e.to_json().decode(), epoch_ms(e.created_at)) for e in failed] + [(2**62, epoch_ms(NOW))],
        )
    view = HealthView(clock=lambda: NOW)
    assert await recall(view, path) == 5
    assert view.health("openai").circuit == "open"


def test_the_breakers_window_judges_latency_with_its_limits() -> None:
    """Without them, each failure computed a p95 over the whole window (a review: a busy week's
    window took 67 s to read back at start)."""
    from gateway.health.breaker import CircuitBreaker
    from gateway.health.config import HealthSettings

    config = HealthSettings(degraded_p95_latency_ms=5000, degraded_p95_ttft_ms=2000)
    trip = CircuitBreaker("openai", config, lambda _change: None)._trip
    assert (trip.latency_limit, trip.ttft_limit) == (5000, 2000)
