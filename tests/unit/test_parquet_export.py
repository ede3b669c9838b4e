"""The Parquet export (analytics/parquet_export.py): one file a UTC day, holding exactly that
day's usage facts with their values (money exact), replaced when the day changes, removed when
its facts are gone, never half written; from the writer's store and from a read-only one."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import pytest

from analytics.parquet_export import FILE_NAME, OWNER_FILE, TABLE_DIR, days_to_export, export_day, export_range
from analytics.store import AnalyticsStore
from consumers.sinks.duckdb import DuckDBSink
from gateway.events import UsageEvent
from tests.unit.test_usage_daily import event, mixed_events

MIDNIGHT = datetime(2026, 3, 2, tzinfo=UTC)


async def writer(tmp_path: Path) -> tuple[AnalyticsStore, Path]:
    export = tmp_path / "export"
    store = AnalyticsStore(tmp_path / "a.duckdb", allowed_directories=[export])
    await store.open()
    return store, export


async def project(store: AnalyticsStore, events: list[UsageEvent]) -> DuckDBSink:
    """``events`` into the store's facts, through the product's DuckDB sink (returned)."""
    sink = DuckDBSink(store)
    await sink.start()
    await sink.apply(events)
    return sink


def files(export: Path) -> list[str]:
    """The files of an export, but the one naming its store (``OWNER_FILE``)."""
    return sorted(str(p.relative_to(export)) for p in export.rglob("*") if p.is_file() and p.name != OWNER_FILE)


async def read_back(store: AnalyticsStore, export: Path, query: str) -> list[tuple[object, ...]]:
    source = f"read_parquet('{export}/{TABLE_DIR}/*/*.parquet', hive_partitioning = true)"
    return await store.fetchall(query.replace("EXPORTED", source))


async def test_each_day_holds_exactly_its_facts_with_their_values(tmp_path: Path) -> None:
    store, export = await writer(tmp_path)
    edges = [
        event("acme", Decimal("0.0000000001"), MIDNIGHT),  # the first instant of a day
        event("acme", Decimal("123456789.0123456789"), MIDNIGHT - timedelta(microseconds=1)),  # the last of one
    ]
    events = [*mixed_events(600), *edges]
    await project(store, events)
    done = await export_range(store, export, None, None)
    days = sorted({e.created_at.astimezone(UTC).date() for e in events})
    assert [d.day for d in done] == days
    assert files(export) == [f"{TABLE_DIR}/day={d.isoformat()}/{FILE_NAME}" for d in days]
    for day in done:
        facts = [e for e in events if e.created_at.astimezone(UTC).date() == day.day]
        assert day.rows == len(facts)
        assert day.cost_usd == sum((e.cost_usd or 0 for e in facts if e.billable), Decimal(0))
        assert day.unpriced == sum(1 for e in facts if e.billable and e.cost_usd is None)
        assert day.bytes == (export / str(day.path)).stat().st_size
    # every column of every row, as the store holds it (and nothing else)
    assert (
        await read_back(store, export, "SELECT * EXCLUDE (day) FROM EXPORTED EXCEPT ALL SELECT * FROM usage_facts")
        == []
    )
    assert (
        await read_back(store, export, "SELECT * FROM usage_facts EXCEPT ALL SELECT * EXCLUDE (day) FROM EXPORTED")
        == []
    )
    [(kind, total)] = await read_back(store, export, "SELECT typeof(any_value(cost_usd)), sum(cost_usd) FROM EXPORTED")
    assert kind == "DECIMAL(20,10)" and total == sum((e.cost_usd or 0 for e in events), Decimal(0))
    # the partition is the UTC day of each row
    wrong = await read_back(
        store, export, "SELECT count(*) FROM EXPORTED WHERE day <> CAST(timezone('UTC', created_at) AS DATE)"
    )
    assert wrong == [(0,)]
    await store.close()


async def test_a_day_exported_again_is_replaced_and_a_day_without_facts_loses_its_file(tmp_path: Path) -> None:
    store, export = await writer(tmp_path)
    first = event("acme", Decimal("0.5"), MIDNIGHT + timedelta(hours=1))
    other_day = event("acme", Decimal("2"), MIDNIGHT + timedelta(days=1))
    sink = await project(store, [first, other_day])
    await export_range(store, export, None, None)
    # a reprice (the replay's sink corrects the stored cost) and a later call the same day
    await sink.apply([first.model_copy(update={"cost_usd": Decimal("0.75")}), event("acme", Decimal("1"), MIDNIGHT)])
    [day] = await export_range(store, export, MIDNIGHT.date(), MIDNIGHT.date())
    assert (day.rows, day.cost_usd) == (2, Decimal("1.75"))
    assert await read_back(
        store, export, "SELECT day, count(*), sum(cost_usd) FROM EXPORTED GROUP BY day ORDER BY day"
    ) == [
        (MIDNIGHT.date(), 2, Decimal("1.75")),
        (other_day.created_at.date(), 1, Decimal("2")),
    ]
    # the second day's facts are gone (a rebuild from a log without them): its file goes too
    await store.run(lambda conn: conn.execute("DELETE FROM usage_facts WHERE cost_usd = 2"))
    done = await export_range(store, export, None, None)
    assert [(d.day, d.path, d.rows) for d in done] == [
        (MIDNIGHT.date(), f"{TABLE_DIR}/day=2026-03-02/{FILE_NAME}", 2),
        (other_day.created_at.date(), None, 0),
    ]
    assert files(export) == [f"{TABLE_DIR}/day=2026-03-02/{FILE_NAME}"]  # no temporary file left either
    await store.close()


async def test_the_range_is_whole_utc_days_and_other_files_are_left_alone(tmp_path: Path) -> None:
    store, export = await writer(tmp_path)
    await project(store, [event("acme", Decimal(1), MIDNIGHT + timedelta(days=n, hours=23)) for n in range(4)])
    done = await export_range(store, export, date(2026, 3, 3), date(2026, 3, 4))
    assert [d.day for d in done] == [date(2026, 3, 3), date(2026, 3, 4)]
    assert await store.run(lambda c: days_to_export(c, export, date(2026, 3, 5), None)) == [date(2026, 3, 5)]
    assert await store.run(lambda c: days_to_export(c, export, None, date(2026, 3, 1))) == []
    # someone's own file beside a day's: the day's file is removed, theirs and its folder stay
    folder = export / TABLE_DIR / "day=2026-03-03"
    (folder / "notes.txt").write_text("mine")
    await store.run(lambda conn: conn.execute("DELETE FROM usage_facts"))
    await export_range(store, export, None, None)
    assert files(export) == [f"{TABLE_DIR}/day=2026-03-03/notes.txt"]
    await store.close()


async def test_a_failed_write_leaves_the_day_as_it_was(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store, export = await writer(tmp_path)
    sink = await project(store, [event("acme", Decimal(1), MIDNIGHT)])
    [before] = await export_range(store, export, None, None)
    content = (export / str(before.path)).read_bytes()
    await sink.apply([event("acme", Decimal(2), MIDNIGHT)])

    def fail(*_: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("analytics.parquet_export.os.replace", fail)
    with pytest.raises(OSError, match="No space"):
        await export_range(store, export, None, None)
    assert (export / str(before.path)).read_bytes() == content
    assert files(export) == [str(before.path)]
    await store.close()


async def test_a_read_only_store_exports_too(tmp_path: Path) -> None:
    """The command without a running gateway opens the file read-only."""
    store, export = await writer(tmp_path)
    await project(store, [event("acme", Decimal("0.25"), MIDNIGHT)])
    await store.close()
    reader = AnalyticsStore(tmp_path / "a.duckdb", read_only=True, allowed_directories=[export])
    await reader.open()
    [day] = await export_range(reader, export, None, None)
    assert (day.rows, day.cost_usd, day.to_dict()["costUsd"]) == (1, Decimal("0.25"), "0.25")
    await reader.close()


async def test_the_last_day_a_date_can_be_has_no_day_after_it(tmp_path: Path) -> None:
    store, export = await writer(tmp_path)
    assert await store.run(lambda c: days_to_export(c, export, date.max, date.max)) == []
    assert (await store.run(lambda c: export_day(c, export, date.max))).rows == 0
    await store.close()


async def test_two_stores_never_share_an_export_directory(tmp_path: Path) -> None:
    """Each store's export replaces its days and removes those it has no facts for: two replicas
    (or Kafka members) given one directory deleted and overwrote each other's (a re-test)."""
    from analytics.parquet_export import ExportDirTaken

    export = tmp_path / "export"
    first = AnalyticsStore(tmp_path / "a.duckdb", allowed_directories=[export])
    second = AnalyticsStore(tmp_path / "b.duckdb", allowed_directories=[export])
    for store, day in ((first, MIDNIGHT), (second, MIDNIGHT + timedelta(days=1))):
        await store.open()
        await project(store, [event("acme", Decimal(1), day)])
    await export_range(first, export, None, None)
    assert (export / OWNER_FILE).is_file()
    with pytest.raises(ExportDirTaken, match="another analytics store"):
        await export_range(second, export, None, None)
    assert files(export) == [f"{TABLE_DIR}/day=2026-03-02/{FILE_NAME}"]  # the first's, untouched
    await export_range(first, export, None, None)  # its own, again
    await first.close()
    await second.close()


async def test_a_failed_write_leaves_no_empty_day_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store, export = await writer(tmp_path)
    await project(store, [event("acme", Decimal(1), MIDNIGHT)])

    def fail(*_: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("analytics.parquet_export._fsync", fail)
    with pytest.raises(OSError, match="No space"):
        await export_range(store, export, None, None)
    assert not (export / TABLE_DIR / "day=2026-03-02").exists()  # a disk-full export left it (a re-test)
    await store.close()


async def test_day_files_without_their_owner_file_are_nobodys_to_claim(tmp_path: Path) -> None:
    """The owner file deleted, another store's export claimed the directory and wiped its days,
    and their own store could not export again (a re-test); an owner file left empty by a full
    disk held the directory for good: it is written whole or not at all."""
    from analytics.parquet_export import ExportDirTaken

    store, export = await writer(tmp_path)
    await project(store, [event("acme", Decimal(1), MIDNIGHT)])
    await export_range(store, export, None, None)
    (export / OWNER_FILE).unlink()
    with pytest.raises(ExportDirTaken, match=r"no \.llm-gateway-export\.json"):
        await export_range(store, export, None, None)
    assert files(export) == [f"{TABLE_DIR}/day=2026-03-02/{FILE_NAME}"]
    # an empty directory is claimed, with no temporary file left
    fresh = tmp_path / "fresh"
    await store.close()
    store = AnalyticsStore(tmp_path / "a.duckdb", allowed_directories=[fresh])
    await store.open()
    await export_range(store, fresh, None, None)
    assert sorted(p.name for p in fresh.iterdir()) == [OWNER_FILE, TABLE_DIR]
    await store.close()


async def test_metadata_is_exported_and_read_back_beside_days_an_older_version_wrote(tmp_path: Path) -> None:
    """A day exported before the metadata column lacks it: read as the docs say
    (``union_by_name``), the later days keep theirs (DuckDB takes the first file's columns for
    every file otherwise, dropping it)."""
    store, export = await writer(tmp_path)
    tagged = [
        event("acme", Decimal("0.5"), MIDNIGHT + timedelta(hours=1)).model_copy(
            update={"schema_version": 4, "metadata": {"team": "search", "q": 'a "b"'}}
        ),
        event("acme", Decimal("0.25"), MIDNIGHT + timedelta(hours=2)),
    ]
    await project(store, tagged)
    await export_range(store, export, None, None)
    older = export / TABLE_DIR / "day=2026-03-01" / FILE_NAME  # the day before, as an old version wrote it
    older.parent.mkdir(parents=True)
    await store.run(
        lambda conn: conn.execute(f"COPY (SELECT * EXCLUDE (metadata) FROM usage_facts) TO '{older}' (FORMAT parquet)")
    )
    source = f"read_parquet('{export}/{TABLE_DIR}/*/*.parquet', hive_partitioning = true, union_by_name = true)"
    rows = await store.fetchall(f"SELECT day::VARCHAR, metadata->>'team', metadata->>'q' FROM {source} ORDER BY 1, 2")
    assert rows == [
        ("2026-03-01", None, None),
        ("2026-03-01", None, None),
        ("2026-03-02", "search", 'a "b"'),
        ("2026-03-02", None, None),
    ]
