"""Embedded log retention (``gateway/eventlog/retention.py``): only what is old and projected by
every reader goes."""

from __future__ import annotations

import logging
import sqlite3
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from pydantic import ValidationError

from gateway.eventlog.retention import CHUNK, trim
from gateway.eventlog.sqlite import ensure_log_table, epoch_ms
from gateway.settings import Settings

NOW = datetime(2026, 12, 2, tzinfo=UTC)


def log_of(path: Path, days_ago: list[float], positions: dict[str, int] | None = None) -> None:
    with sqlite3.connect(path) as conn:
        ensure_log_table(conn, "events")
        conn.executemany(
            "INSERT INTO events (key, value, ts) VALUES ('t', x'00', ?)",
            [(epoch_ms(NOW - timedelta(days=d)),) for d in days_ago],
        )
        if positions is not None:
            conn.execute("CREATE TABLE positions (group_id TEXT PRIMARY KEY, position INTEGER NOT NULL)")
            conn.executemany("INSERT INTO positions VALUES (?, ?)", list(positions.items()))


def seqs(path: Path) -> list[int]:
    with sqlite3.connect(path) as conn:
        return [row[0] for row in conn.execute("SELECT seq FROM events ORDER BY seq")]


def test_only_records_older_than_the_cut_and_projected_by_every_reader_go(tmp_path: Path) -> None:
    path = tmp_path / "events.sqlite3"
    # seq 1..80 are 10 to 2 days old, 81..100 from today; the slowest reader is at 60
    log_of(path, [10 - i * 0.1 for i in range(80)] + [0.1] * 20, {"llm-gateway-projector": 90, "consume": 60})
    done = trim(path, NOW - timedelta(days=1))
    # the record at a position stays; 20 older than the cut wait for the slowest reader
    assert (done.deleted, done.floor, done.held) == (59, 60, 20)
    assert seqs(path) == list(range(60, 101))
    with sqlite3.connect(path) as conn:
        conn.execute("UPDATE positions SET position = 100")
    done = trim(path, NOW - timedelta(days=1))
    assert (done.deleted, done.held) == (21, 0)  # today's stay, projected or not
    assert seqs(path) == list(range(81, 101))


def test_nothing_goes_before_a_reader_has_projected_and_everything_old_can_go(tmp_path: Path) -> None:
    path = tmp_path / "events.sqlite3"
    log_of(path, [5.0] * 10)
    done = trim(path, NOW - timedelta(days=1))
    assert (done.deleted, done.floor, done.held) == (0, None, 10)  # no positions table: no reader yet
    with sqlite3.connect(path) as conn:
        conn.execute("CREATE TABLE positions (group_id TEXT PRIMARY KEY, position INTEGER NOT NULL)")
        conn.execute("INSERT INTO positions VALUES ('g', 10)")
    assert trim(path, NOW - timedelta(days=1)).deleted == 9  # all but the one at the position
    assert seqs(path) == [10]
    assert trim(path, NOW).deleted == 0  # an empty log
    assert trim(tmp_path / "new.sqlite3", NOW).deleted == 0


def test_a_stop_ends_the_trim_after_its_current_chunk(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "events.sqlite3"
    log_of(path, [5.0] * (CHUNK * 3), {"g": CHUNK * 3 + 1})
    caplog.set_level(logging.INFO, logger="gateway.eventlog")
    done = trim(path, NOW - timedelta(days=1), stopped=iter([False, True]).__next__)  # a stop after one chunk
    # its task, cancelled by the stop, no longer logs it: the trim does (a re-test)
    assert f"log retention: stopped after deleting {CHUNK} events (the rest at the next start)" in caplog.messages
    assert done.deleted == CHUNK and len(seqs(path)) == CHUNK * 2


@pytest.mark.parametrize(
    ("budgets", "days", "ok"),
    [
        ({}, 1, True),
        ({"default": {"usd": "5"}}, 31, False),  # a month's spend is read from the log at a restart
        ({"default": {"usd": "5"}}, 32, True),
        ({"tenants": {"a": {"usd": "5", "period": "day"}}}, 1, False),
        ({"tenants": {"a": {"usd": "5", "period": "day"}}}, 2, True),
    ],
)
def test_retention_is_refused_shorter_than_the_budgets_periods(budgets: dict[str, object], days: int, ok: bool) -> None:
    def make() -> Settings:
        return Settings(budgets=budgets, log_retention_days=days, _env_file=None)  # type: ignore[call-arg]

    if ok:
        assert make().log_retention_days == days
    else:
        with pytest.raises(ValidationError, match="shorter than the budgets' periods"):
            make()


def test_retention_days_are_a_number_not_yes_and_kafka_mode_does_not_check_budgets() -> None:
    with pytest.raises(ValidationError, match="give a number of days"):
        Settings(log_retention_days=True, _env_file=None)  # type: ignore[call-arg]
    kafka = Settings(  # type: ignore[call-arg]
        log_retention_days=1, budgets={"default": {"usd": "5"}}, kafka_bootstrap_servers="b:9092", _env_file=None
    )
    assert kafka.log_retention_days == 1  # no effect there: it blocked every command (a review)


def test_a_record_stamped_after_the_cut_ends_what_goes(tmp_path: Path) -> None:
    """The cut is found by bisection over a log in time order: one record stamped 400 days ago
    in the middle of a newer log took 599 newer ones with it (a review)."""
    path = tmp_path / "events.sqlite3"
    # the bisection lands on seq 8 (400 days old): seq 4 to 7 are from today
    log_of(path, [10.0] * 3 + [0.5] * 4 + [400.0] + [0.5] * 7, {"g": 16})
    done = trim(path, NOW - timedelta(days=1))
    assert done.deleted == 3 and seqs(path)[0] == 4


def test_serve_without_its_projector_says_who_trims(caplog: pytest.LogCaptureFixture) -> None:
    from gateway.server import server_installers

    caplog.set_level(logging.INFO, logger="gateway.eventlog")
    assert server_installers(Settings(project=False, log_retention_days=30, _env_file=None)) == []  # type: ignore[call-arg]
    assert any("llm-gateway consume on this data dir" in m for m in caplog.messages)
