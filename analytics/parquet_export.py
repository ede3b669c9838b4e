"""Parquet export of the usage facts, one file per UTC day, for a data lake or another engine.

``export_range(store, directory, first, last)`` writes (``export_day`` a day at a time), for
each UTC day from ``first`` to ``last`` (inclusive) that holds facts, every row of
``usage_facts`` stamped that day, ordered by time and event id, to
``<directory>/usage_facts/day=YYYY-MM-DD/usage.parquet``. These are Hive-style partitions:
``read_parquet('<directory>/usage_facts/*/*.parquet', hive_partitioning = true, union_by_name =
true)`` reads them back with a ``day`` column (``union_by_name``: a day exported by an older
version lacks the later columns, ``metadata`` or ``cache_creation_1h_tokens``, and without it
DuckDB takes the first file's columns for all, dropping those). Money stays exact: ``cost_usd``
is a Parquet DECIMAL(20, 10), as in the store.

A day is the store's as of its export: exporting it again replaces its file (after a
``replay --reprice``, or for today while calls still come in), and a day of the range whose
facts are gone (a ``replay --full`` of another log) loses its file. Each file is written beside
its place under a temporary name and renamed over it, so a reader never sees half a file and an
export stopped half-way leaves every day either as it was or as new. The count and cost total
each day reports are read in the same transaction as its rows.

Each day is one call on the store's connection (``AnalyticsStore.run``): the projector writes
between two days of a long export, not after all of them.
"""

from __future__ import annotations

import json
import os
import re
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import date, timedelta
from decimal import Decimal
from pathlib import Path

import duckdb

from analytics.store import AnalyticsStore, transaction
from gateway.atomic_file import write_atomically
from gateway.pricing.base import money_text

#: the facts' folder inside an export directory, and each day's file in it
TABLE_DIR = "usage_facts"
FILE_NAME = "usage.parquet"
#: the file that names the store an export directory belongs to
OWNER_FILE = ".llm-gateway-export.json"


class ExportDirTaken(Exception):
    """The export directory holds another store's export (see :func:`claim_directory`)."""


def claim_directory(conn: duckdb.DuckDBPyConnection, directory: Path) -> None:
    """Make ``directory`` this store's export directory, or raise :class:`ExportDirTaken` when it
    is another store's: an export replaces the days of its range and removes those the store has
    no facts for, so two stores (replicas, Kafka members, each with its own facts) exporting into
    one directory deleted and overwrote each other's days (a review)."""
    row = conn.execute("SELECT id FROM store_identity LIMIT 1").fetchone()
    mine = str(row[0]) if row else ""
    owner = directory / OWNER_FILE
    try:
        named = json.loads(owner.read_text(encoding="utf-8")).get("store")
    except FileNotFoundError:
        if any(exported_days(directory)):
            # day files and no owner (the file deleted): whose are they? Claimed, another store's
            # export wiped them, and their store could not export again (a re-test)
            raise ExportDirTaken(
                f"{directory} holds day files but no {OWNER_FILE}: restore it, or empty the directory"
            ) from None
        # whole or not at all: an empty file after a full disk held the directory for good
        write_atomically(owner, json.dumps({"store": mine}))
        return
    except (ValueError, AttributeError) as exc:  # not JSON, not an object: someone else's file
        raise ExportDirTaken(f"{owner} cannot be read ({exc}): is this directory another program's?") from exc
    if named != mine:
        raise ExportDirTaken(
            f"{directory} holds the export of another analytics store ({OWNER_FILE}): give each store "
            "(each replica, each consume member) its own export_dir"
        )


_DAY_DIR = re.compile(r"^day=(\d{4}-\d{2}-\d{2})$")
#: the UTC calendar day of an attempt (as in v_cost_daily and the rollup)
_DAY = "CAST(timezone('UTC', created_at) AS DATE)"


@dataclass(frozen=True, slots=True)
class ExportedDay:
    day: date
    #: the file, relative to the export directory (None: the day has no facts, its file removed)
    path: str | None
    rows: int
    #: the priced cost of the day's billable attempts, exact (what ``/v1/costs`` adds)
    cost_usd: Decimal
    #: billable attempts without a price
    unpriced: int
    bytes: int

    def to_dict(self) -> dict[str, object]:
        return {
            "day": self.day.isoformat(),
            "path": self.path,
            "rows": self.rows,
            "costUsd": money_text(self.cost_usd),
            "unpricedCalls": self.unpriced,
            "bytes": self.bytes,
        }


def day_path(day: date) -> str:
    return f"{TABLE_DIR}/day={day.isoformat()}/{FILE_NAME}"


def days_to_export(
    conn: duckdb.DuckDBPyConnection, directory: Path, first: date | None, last: date | None
) -> list[date]:
    """The days of ``[first, last]`` (either open) that hold facts, or a file of an earlier
    export (to be replaced or removed), ascending."""
    low, high = _bounds(first, last)
    rows = conn.execute(
        f"SELECT DISTINCT {_DAY} FROM usage_facts WHERE created_at >= ?::TIMESTAMPTZ AND created_at < ?::TIMESTAMPTZ",
        [low, high],
    ).fetchall()
    days = {row[0] for row in rows}
    days.update(d for d in exported_days(directory) if (first is None or d >= first) and (last is None or d <= last))
    return sorted(days)


def exported_days(directory: Path) -> Iterator[date]:
    """The days that have a folder under ``<directory>/usage_facts``."""
    try:
        entries = list(os.scandir(directory / TABLE_DIR))
    except FileNotFoundError:
        return
    for entry in entries:
        match = _DAY_DIR.match(entry.name)
        if match is not None and entry.is_dir(follow_symlinks=False):
            try:
                yield date.fromisoformat(match.group(1))
            except ValueError:  # day=2026-02-30: not ours
                continue


def export_day(conn: duckdb.DuckDBPyConnection, directory: Path, day: date) -> ExportedDay:
    """Write (or replace, or remove) the file of ``day``; see the module docstring."""
    start, end = _midnight(day), _midnight_after(day)
    folder = directory / TABLE_DIR / f"day={day.isoformat()}"
    target = folder / FILE_NAME
    where = f"created_at >= '{start}'::TIMESTAMPTZ AND created_at < '{end}'::TIMESTAMPTZ"
    with transaction(conn):
        rows, cost, unpriced = conn.execute(
            "SELECT count(*), coalesce(sum(cost_usd) FILTER (WHERE billable), 0)::VARCHAR, "
            f"count(*) FILTER (WHERE billable AND cost_usd IS NULL) FROM usage_facts WHERE {where}"
        ).fetchone() or (0, "0", 0)
        if not rows:
            _remove(target, folder)
            return ExportedDay(day, None, 0, Decimal(0), 0, 0)
        made = not folder.is_dir()
        folder.mkdir(parents=True, exist_ok=True)
        temporary = folder / f".{FILE_NAME}.{uuid.uuid4().hex}.tmp"
        try:
            # COPY takes no parameters: the times are ours (ISO text of a date), the path is quoted
            conn.execute(
                f"COPY (SELECT * FROM usage_facts WHERE {where} ORDER BY created_at, event_id) "
                f"TO {_quoted(temporary)} (FORMAT parquet, COMPRESSION zstd)"
            )
            _fsync(temporary)
            os.replace(temporary, target)
        except BaseException:
            temporary.unlink(missing_ok=True)
            if made:  # no empty day folder left behind (a full disk)
                _remove(target, folder)
            raise
    _fsync_dir(folder)
    return ExportedDay(day, day_path(day), int(rows), Decimal(cost), int(unpriced), target.stat().st_size)


def _bounds(first: date | None, last: date | None) -> tuple[str, str]:
    return _midnight(first or date.min), _midnight_after(last) if last else "infinity"


def _midnight(day: date) -> str:
    """The start of a UTC day, as TIMESTAMPTZ text."""
    return f"{day.isoformat()} 00:00:00+00"


def _midnight_after(day: date) -> str:
    """The start of the next UTC day ("infinity" after the last day a date can be)."""
    return "infinity" if day == date.max else _midnight(day + timedelta(days=1))


def _quoted(path: Path) -> str:
    return "'" + str(path).replace("'", "''") + "'"


def _remove(target: Path, folder: Path) -> None:
    target.unlink(missing_ok=True)
    try:
        folder.rmdir()
    except OSError:  # not empty (a file of someone else's), or gone
        pass


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


async def export_range(
    store: AnalyticsStore, directory: Path, first: date | None, last: date | None
) -> list[ExportedDay]:
    """Export each day of ``[first, last]`` (see :func:`days_to_export`), one store call a day,
    into a directory this store owns (:func:`claim_directory`)."""

    def claim_and_list(conn: duckdb.DuckDBPyConnection) -> list[date]:
        claim_directory(conn, directory)
        return days_to_export(conn, directory, first, last)

    days = await store.run(claim_and_list)
    done = []
    for day in days:
        done.append(await store.run(lambda conn, day=day: export_day(conn, directory, day)))  # type: ignore[misc]
    return done
