"""Read-only SQL analytics (analytics/sql.py) over a real, file-backed DuckDB store fed by the
real sinks: what is refused and by which lock, the time and row bounds, exact values, and the
documented views."""

from __future__ import annotations

import asyncio
import contextlib
import csv
import io
import json
import threading
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import duckdb
import pytest

import analytics.sql as sql_module
from analytics.sql import (
    ALLOWED_TABLE_FUNCTIONS,
    SqlError,
    SqlRefused,
    SqlResult,
    SqlResultTooLarge,
    SqlService,
    SqlTimeout,
    check_query,
    json_value,
    run_query,
)
from analytics.sql_command import render_table
from analytics.store import AnalyticsStore
from consumers.sinks.duckdb import DuckDBSink
from consumers.sinks.health_history import write_rows
from gateway.events import UsageEvent
from gateway.health.transitions import HealthHistoryRow
from gateway.ids import uuid7

T0 = datetime(2026, 3, 1, 23, 30, tzinfo=UTC)


def attempt(request: str, number: int, provider: str, outcome: str, **changes: Any) -> UsageEvent:
    billable = outcome == "success"
    fields: dict[str, Any] = {
        "event_id": str(uuid7()),
        "request_id": request,
        "attempt": number,
        "created_at": T0 + timedelta(seconds=number),
        "tenant_id": "acme",
        "provider": provider,
        "requested_model": "gpt-4o",
        "provider_model": "gpt-4o" if provider == "openai" else "claude-sonnet-4",
        "served_model": ("gpt-4o-2024-08-06" if provider == "openai" else "claude-sonnet-4") if billable else None,
        "outcome": outcome,
        "latency_ms": 100.0 * number,
        "prompt_tokens": 100 if billable else 0,
        "completion_tokens": 20 if billable else 0,
        "total_tokens": 120 if billable else 0,
        "cost_usd": Decimal("0.0000025") if billable else None,
        "price_version": "v1" if billable else None,
        "billable": billable,
    }
    fields.update(changes)
    return UsageEvent(**fields)


#: r1: openai rate limited twice, then served by anthropic (a fallback from openai);
#: r2: openai at once; r3 (globex, next UTC day): an unpriced model on ollama
EVENTS = [
    attempt("r1", 1, "openai", "rate_limited", http_status=429),
    attempt("r1", 2, "openai", "rate_limited", http_status=429),
    attempt("r1", 3, "anthropic", "success", cost_usd=Decimal("0.0000100001")),
    attempt("r2", 1, "openai", "success"),
    attempt(
        "r3",
        1,
        "ollama",
        "success",
        tenant_id="globex",
        created_at=T0 + timedelta(hours=1),
        provider_model="llama3",
        served_model="llama3:8b",
        cost_usd=None,
        price_version=None,
    ),
]


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[AnalyticsStore]:
    """A file-backed writer store, fed through the real DuckDB sink (sandboxed: it proves the sink
    still works with external access off) and holding one health-history row."""
    store = AnalyticsStore(tmp_path / "analytics.duckdb")
    await store.open()
    await DuckDBSink(store).apply(EVENTS)
    row = HealthHistoryRow(
        provider="openai",
        model="*",
        window_end=T0 + timedelta(seconds=2),
        window_seconds=60.0,
        attempts=2,
        failures=0,
        rate_limited=2,
        timeouts=0,
        p50_ms=None,
        p95_ms=None,
        p50_ttft_ms=None,
        state="degraded",
        circuit="closed",
        reason="rate limits",
    )
    await store.run(lambda conn: write_rows(conn, [row]))
    yield store
    await store.close()


@pytest.fixture
def secret(tmp_path: Path) -> Path:
    path = tmp_path / "secret.csv"
    path.write_text("user,password\nroot,hunter2\n")
    return path


async def facts(store: AnalyticsStore) -> int:
    return int((await store.fetchall("SELECT count(*) FROM usage_facts"))[0][0])


async def query(store: AnalyticsStore, sql: str, **kwargs: Any) -> SqlResult:
    return await SqlService(store).query(sql, **kwargs)


def files_in(folder: Path) -> set[str]:
    return {p.name for p in folder.iterdir()}


def records(result: SqlResult) -> list[dict[str, Any]]:
    return [dict(zip([c.name for c in result.columns], row, strict=True)) for row in result.rows]


# --- lock 1: one SELECT, by DuckDB's parser -----------------------------------------------------
WRITES = [
    "INSERT INTO usage_facts SELECT * FROM usage_facts",
    "UPDATE usage_facts SET cost_usd = 0",
    "DELETE FROM usage_facts",
    "TRUNCATE usage_facts",
    "CREATE TABLE stolen AS SELECT * FROM usage_facts",
    "CREATE VIEW v AS SELECT 1",
    "CREATE MACRO m(x) AS x",
    "DROP TABLE usage_facts",
    "ALTER TABLE usage_facts ADD COLUMN x INT",
    "COMMENT ON TABLE usage_facts IS 'x'",
    "MERGE INTO usage_facts USING usage_facts s ON true WHEN MATCHED THEN DELETE",
    "ATTACH ':memory:' AS other",
    "DETACH memory",
    "COPY usage_facts TO '{dir}/out.csv'",
    "COPY usage_facts FROM '{dir}/secret.csv'",
    "EXPORT DATABASE '{dir}/export'",
    "IMPORT DATABASE '{dir}/export'",
    "INSTALL httpfs",
    "LOAD httpfs",
    "UPDATE EXTENSIONS",
    "PRAGMA version",
    "SET enable_external_access = true",
    "RESET threads",
    "CALL checkpoint()",
    "CHECKPOINT",
    "VACUUM",
    "BEGIN TRANSACTION",
    "EXPLAIN ANALYZE DELETE FROM usage_facts",
    "PREPARE p AS DELETE FROM usage_facts",
    "USE memory",
    "CREATE SECRET (TYPE s3, KEY_ID 'x', SECRET 'y')",
    "SELECT 1; DROP TABLE usage_facts",
    "DROP TABLE usage_facts; SELECT 1",
    "SELECT 1; SELECT 2",
]


@pytest.mark.parametrize("statement", WRITES)
async def test_anything_but_one_select_is_refused_and_nothing_changes(
    store: AnalyticsStore, tmp_path: Path, secret: Path, statement: str
) -> None:
    before = await facts(store)
    with pytest.raises(SqlRefused):
        await query(store, statement.format(dir=tmp_path))
    assert await facts(store) == before
    written = files_in(tmp_path) - {
        "secret.csv",
        "analytics.duckdb",
        "analytics.duckdb.wal",
        "analytics.duckdb.scratch",
    }
    assert not written and not files_in(store.scratch_dir)


async def test_attach_of_a_file_is_refused(store: AnalyticsStore, tmp_path: Path) -> None:
    with pytest.raises(SqlRefused, match="only read-only queries"):
        await query(store, f"ATTACH '{tmp_path}/other.duckdb' AS other")
    assert not (tmp_path / "other.duckdb").exists()


# --- lock 2: only catalog tables and harmless table functions ------------------------------------
FILE_READS = [
    "SELECT * FROM read_csv('{secret}')",
    "SELECT * FROM read_csv_auto('{secret}')",
    "SELECT * FROM read_text('/etc/passwd')",
    "SELECT * FROM read_blob('/etc/passwd')",
    "SELECT * FROM glob('/etc/*')",
    "SELECT * FROM sniff_csv('{secret}')",
    "SELECT * FROM read_json('{secret}')",
    "SELECT * FROM read_parquet('http://127.0.0.1:9/x.parquet')",
    "SELECT * FROM parquet_metadata('{secret}')",
    "SELECT * FROM read_duckdb('{secret}')",
    "SELECT * FROM '{secret}'",
    "SELECT * FROM 'http://127.0.0.1:9/data.csv'",
    "DESCRIBE '{secret}'",
    "SUMMARIZE SELECT * FROM read_csv('{secret}')",
    "SELECT * FROM query('SELECT * FROM read_text(''/etc/passwd'')')",
    "SELECT * FROM query_table('usage_facts')",
    "SELECT (SELECT count(*) FROM read_text('/etc/passwd')) AS n",
    "SELECT 1 WHERE EXISTS (SELECT 1 FROM read_text('/etc/passwd'))",
    "WITH x AS (SELECT * FROM read_csv('{secret}')) SELECT * FROM x",
    "SELECT * FROM usage_facts, LATERAL (SELECT * FROM read_text(usage_facts.event_id))",
    'SELECT * FROM (WITH "{secret}" AS (SELECT 1) SELECT 1), "{secret}"',  # a CTE name out of its scope
    'WITH "{secret}" AS (SELECT * FROM "{secret}") SELECT * FROM "{secret}"',  # not recursive: the file
    'WITH x AS (SELECT * FROM "{secret}"), "{secret}" AS (SELECT 1) SELECT * FROM x',  # defined after use
    "SELECT * FROM enable_logging()",
    "SELECT * FROM json_execute_serialized_sql('x')",
    "SELECT * FROM duckdb_secrets()",
    "SELECT nextval('seq')",
]


@pytest.mark.parametrize("statement", FILE_READS)
async def test_file_network_and_side_effect_functions_are_refused(
    store: AnalyticsStore, secret: Path, statement: str
) -> None:
    with pytest.raises(SqlRefused):
        await query(store, statement.format(secret=secret))


async def test_the_writers_scratch_directory_is_not_readable_either(store: AnalyticsStore) -> None:
    """The one directory the sandbox allows (the sink's batch files) is still closed to SQL."""
    planted = store.scratch_dir / "batch.json"
    planted.write_text('[{"x": 1}]')
    for statement in (f"SELECT * FROM read_json('{planted}')", f"SELECT * FROM '{planted}'"):
        with pytest.raises(SqlRefused):
            await query(store, statement)


async def test_the_checks_hold_without_the_sandbox(secret: Path) -> None:
    """Lock 2 alone: on a plain DuckDB connection with full file access, the checks refuse the reads."""
    conn = duckdb.connect()
    try:
        assert conn.execute(f"SELECT count(*) FROM read_csv('{secret}')").fetchone() == (1,)  # reachable here
        for statement in (
            f"SELECT * FROM read_csv('{secret}')",
            f"SELECT * FROM '{secret}'",
            f'WITH "{secret}" AS (SELECT * FROM "{secret}") SELECT * FROM "{secret}"',
            "COPY (SELECT 1) TO 'x'",
        ):
            with pytest.raises(SqlRefused):
                check_query(conn, statement)
    finally:
        conn.close()


# --- locks 3 and 4: read-only transaction, sandboxed database -----------------------------------
async def test_the_read_only_transaction_refuses_writes_that_pass_the_checks(
    store: AnalyticsStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Lock 3 alone: with the statement checks switched off, DuckDB still refuses the write."""
    monkeypatch.setattr(sql_module, "check_query", lambda conn, sql: sql)
    before = await facts(store)
    with pytest.raises(SqlRefused, match="read-only"):
        await query(store, "DELETE FROM usage_facts")
    assert await facts(store) == before


async def test_the_sandbox_refuses_file_access_that_passes_the_checks(
    store: AnalyticsStore, secret: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Lock 4 alone: with the statement checks off, the database itself has no file access."""
    monkeypatch.setattr(sql_module, "check_query", lambda conn, sql: sql)
    for statement in (f"SELECT * FROM read_csv('{secret}')", "SELECT * FROM read_text('/etc/passwd')"):
        with pytest.raises(SqlRefused, match="file system operations are disabled"):
            await query(store, statement)


async def test_the_sandbox_covers_every_connection_of_the_store(
    store: AnalyticsStore, secret: Path, tmp_path: Path
) -> None:
    """Even the writer's own connection and a fresh cursor cannot read, write or attach files,
    nor switch the sandbox off; the sink's scratch directory is the one exception."""

    def attempt_all(conn: duckdb.DuckDBPyConnection) -> list[str]:
        refused = []
        for statement in (
            f"SELECT * FROM read_csv('{secret}')",
            f"COPY usage_facts TO '{tmp_path}/out.csv'",
            f"ATTACH '{tmp_path}/other.duckdb' AS other",
            "SELECT * FROM read_csv('http://127.0.0.1:9/x.csv')",
            "SET enable_external_access = true",
            f"SET allowed_directories = ['{tmp_path}/']",
            "LOAD httpfs",
        ):
            with pytest.raises(duckdb.Error) as caught:
                conn.execute(statement)
            refused.append(type(caught.value).__name__)
        return refused

    refused = await store.run(attempt_all)
    assert set(refused) <= {"PermissionException", "InvalidInputException"}
    cursor = await store.run(lambda conn: conn.cursor())
    try:
        attempt_all(cursor)
    finally:
        cursor.close()
    assert not (tmp_path / "out.csv").exists() and not (tmp_path / "other.duckdb").exists()
    scratch = store.scratch_dir
    assert scratch == tmp_path / "analytics.duckdb.scratch"
    assert scratch.is_dir() and oct(scratch.stat().st_mode & 0o777) == "0o700"
    await store.close()
    assert not scratch.exists()  # removed at close


async def test_the_read_only_store_of_the_cli_is_sandboxed_too(
    store: AnalyticsStore, secret: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = store.path
    await store.close()
    reader = AnalyticsStore(path, read_only=True)
    await reader.open()
    try:
        assert records(await query(reader, "SELECT count(*) AS n FROM usage_facts")) == [{"n": 5}]
        monkeypatch.setattr(sql_module, "check_query", lambda conn, sql: sql)
        with pytest.raises(SqlRefused, match="file system operations are disabled"):
            await query(reader, f"SELECT * FROM read_csv('{secret}')")
    finally:
        await reader.close()


# --- what is allowed --------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "statement",
    [
        "SELECT count(*) FROM usage_facts",
        "WITH t AS (SELECT tenant_id FROM usage_facts) SELECT DISTINCT tenant_id FROM t",
        "FROM llm_usage SELECT id",
        "SELECT * FROM main.usage_facts",
        "DESCRIBE usage_facts",
        "SUMMARIZE v_cost_daily",
        "SHOW TABLES",
        "SELECT view_name, comment FROM duckdb_views() WHERE NOT internal",
        "SELECT * FROM information_schema.columns WHERE table_name = 'v_cost_daily'",
        "SELECT * FROM range(3)",
        "SELECT unnest([1, 2])",
        "SELECT 1;",
        "SELECT 1 -- ; DROP TABLE usage_facts",
    ],
)
async def test_read_only_queries_run(store: AnalyticsStore, statement: str) -> None:
    result = await query(store, statement)
    assert result.columns


def test_the_table_function_allowlist_reads_no_files() -> None:
    assert not {name for name in ALLOWED_TABLE_FUNCTIONS if "read" in name or "scan" in name or "glob" in name}


async def test_sql_errors_are_reported(store: AnalyticsStore) -> None:
    with pytest.raises(SqlError, match="syntax error") as caught:
        await query(store, "SELEC 1")
    assert caught.value.code == "sql_error"
    with pytest.raises(SqlRefused, match="unknown table or view nope"):
        await query(store, "SELECT * FROM nope")
    with pytest.raises(SqlError, match="no_such_column"):
        await query(store, "SELECT no_such_column FROM usage_facts")


# --- bounds ------------------------------------------------------------------------------------------
async def test_rows_are_bounded_and_truncation_is_reported(store: AnalyticsStore) -> None:
    cut = await query(store, "SELECT * FROM range(10) ORDER BY 1", max_rows=3)
    assert cut.rows == [[0], [1], [2]] and cut.truncated and cut.max_rows == 3
    whole = await query(store, "SELECT * FROM range(10)", max_rows=10)
    assert len(whole.rows) == 10 and not whole.truncated
    with pytest.raises(ValueError, match="max_rows"):
        await query(store, "SELECT 1", max_rows=0)


async def test_a_result_is_bounded_in_bytes_too(store: AnalyticsStore) -> None:
    """40 rows of 10 MB took a gateway from 128 MB to 1.7 GB: the rows' text is bounded as they
    are fetched, in chunks that shrink as the rows grow."""
    small = SqlService(store, max_bytes=100_000)
    with pytest.raises(SqlResultTooLarge, match="larger than 0 MiB"):
        await small.query("SELECT repeat('x', 50000) AS s FROM range(40)", max_rows=100)
    with pytest.raises(SqlResultTooLarge):  # many small rows add up the same way
        await small.query("SELECT 'row ' || i AS s FROM range(100000) t(i)", max_rows=100_000)
    fits = await small.query("SELECT repeat('x', 1000) AS s FROM range(90)", max_rows=100)
    assert [len(row[0]) for row in fits.rows] == [1000] * 90 and not fits.truncated
    # lists, structs and maps are measured too (each counted 8 bytes: 100 MB passed 64 MiB)
    for nested in ("[repeat('x', 50000)]", "{'s': repeat('x', 50000)}", "map(['k'], [repeat('x', 50000)])"):
        with pytest.raises(SqlResultTooLarge):
            await small.query(f"SELECT {nested} AS v FROM range(40)", max_rows=100)
    assert (await small.query("SELECT [1, 2] AS v, {'a': 'b'} AS s", max_rows=10)).rows == [[[1, 2], {"a": "b"}]]
    # chunked fetching returns every row, in order, and still tells a truncation
    whole = await SqlService(store).query("SELECT i FROM range(70000) t(i) ORDER BY i", max_rows=70_000)
    assert [row[0] for row in whole.rows] == list(range(70_000)) and not whole.truncated
    cut = await SqlService(store).query("SELECT i FROM range(70001) t(i) ORDER BY i", max_rows=70_000)
    assert len(cut.rows) == 70_000 and cut.truncated
    assert records(await query(store, "SELECT count(*) AS n FROM usage_facts")) == [{"n": 5}]  # still serves


async def test_a_long_query_is_stopped_at_the_timeout_and_the_store_still_works(store: AnalyticsStore) -> None:
    started = time.monotonic()
    with pytest.raises(SqlTimeout, match=r"longer than 0\.3 s"):
        await query(store, "SELECT count(*) FROM range(1000000000000)", timeout=0.3)
    assert time.monotonic() - started < 5
    assert records(await query(store, "SELECT count(*) AS n FROM usage_facts")) == [{"n": 5}]
    await DuckDBSink(store).apply([attempt("r9", 1, "openai", "success")])
    assert await facts(store) == 6


@pytest.mark.parametrize("timeout", [1e-6, 1e-320])
async def test_a_timeout_that_expires_before_the_query_starts_still_stops_it(
    store: AnalyticsStore, timeout: float
) -> None:
    """The interrupt came before the query started and was lost: the query ran unbounded."""
    started = time.monotonic()
    with pytest.raises(SqlTimeout):
        await query(store, "SELECT count(*) FROM range(1000000000000)", timeout=timeout)
    assert time.monotonic() - started < 5


@pytest.mark.timeout(60)
async def test_a_time_limit_that_comes_just_before_the_query_starts_still_stops_it(
    store: AnalyticsStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The limit's timer fired between the check for it and the query's start: its one interrupt
    was lost and the query ran unbounded (a microsecond's limit in a CI run)."""
    fired: list[Any] = []
    made: list[Any] = []

    class ManualTimer:
        def __init__(self, interval: float, function: Any) -> None:
            self.function = function
            self.daemon = True

        def start(self) -> None:
            fired.append(self.function)

        def cancel(self) -> None:
            pass

    class RacingEvent(threading.Event):
        def __init__(self) -> None:
            super().__init__()
            made.append(self)
            self.raced = False

        def is_set(self) -> bool:
            seen = super().is_set()
            if self is made[0] and fired and not self.raced:  # the check before the query
                self.raced = True
                threading.Thread(target=fired[0], daemon=True).start()  # the timer fires now...
                time.sleep(0.05)  # ...and its first interrupt lands before the query starts
            return seen

    monkeypatch.setattr(
        sql_module, "threading", SimpleNamespace(Timer=ManualTimer, Event=RacingEvent, Lock=threading.Lock)
    )
    started = time.monotonic()
    with pytest.raises(SqlTimeout, match="ran longer than"):
        await query(store, "SELECT sum(i) FROM range(1000000000000) t(i)", timeout=30)
    assert time.monotonic() - started < 10


def test_the_limits_timer_never_interrupts_a_cursor_once_its_work_is_over(monkeypatch: pytest.MonkeyPatch) -> None:
    """The timer checked that the work was not over, lost the CPU, and interrupted the cursor the
    caller had meanwhile closed: an exception in the timer's thread (a re-test)."""
    errors: list[BaseException | None] = []
    monkeypatch.setattr(threading, "excepthook", lambda args: errors.append(args.exc_value))
    closed = threading.Event()
    made: list[Any] = []

    class ParkedEvent(threading.Event):
        def __init__(self) -> None:
            super().__init__()
            made.append(self)
            self.parked = False

        def is_set(self) -> bool:
            seen = super().is_set()
            timer_thread = threading.current_thread() is not threading.main_thread()
            if len(made) > 1 and self is made[1] and timer_thread and not self.parked:
                self.parked = True  # ``finished``, seen unset by the timer, which then loses the CPU...
                closed.wait(5)  # ...until the caller has closed the cursor
            return seen

    monkeypatch.setattr(
        sql_module, "threading", SimpleNamespace(Timer=threading.Timer, Event=ParkedEvent, Lock=threading.Lock)
    )
    db = duckdb.connect()
    cursor = db.cursor()
    with contextlib.suppress(SqlTimeout):
        run_query(cursor, "SELECT count(*) FROM range(300000000) t(i) WHERE i % 7 = 3", timeout=0.05)
    cursor.close()
    closed.set()
    time.sleep(0.3)
    db.close()
    assert errors == []


async def test_a_running_query_does_not_hold_up_the_writer(store: AnalyticsStore) -> None:
    slow = asyncio.create_task(query(store, "SELECT count(*) FROM range(1000000000000)", timeout=3))
    await asyncio.sleep(0.3)
    started = time.monotonic()
    await DuckDBSink(store).apply([attempt("r9", 1, "openai", "success")])
    assert time.monotonic() - started < 2 and not slow.done()
    with pytest.raises(SqlTimeout):
        await slow


async def test_a_query_whose_caller_left_is_stopped_and_frees_its_slot(
    store: AnalyticsStore, caplog: pytest.LogCaptureFixture
) -> None:
    """aiohttp does not cancel a handler whose client left: two abandoned queries held both
    slots for their whole timeout, and a `SELECT 1` waited 19 s (a re-test)."""
    from gateway.errors import ClientGone

    service = SqlService(store)
    left = [False]
    abandoned = [
        asyncio.create_task(
            service.query("SELECT count(*) FROM range(1000000000000)", timeout=60, gone=lambda: left[0])
        )
        for _ in range(2)
    ]
    await asyncio.sleep(0.3)
    started = time.monotonic()
    left[0] = True
    for task in abandoned:
        with pytest.raises(ClientGone):
            await task
    result = await service.query("SELECT 1 AS one")
    assert result.rows == [[1]] and time.monotonic() - started < 5
    import gc

    gc.collect()  # an unretrieved exception of the interrupted work would be logged now
    assert "exception was never retrieved" not in caplog.text


async def test_cancelling_the_caller_stops_the_query(store: AnalyticsStore) -> None:
    service = SqlService(store)
    task = asyncio.create_task(service.query("SELECT count(*) FROM range(1000000000000)", timeout=60))
    await asyncio.sleep(0.3)
    started = time.monotonic()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert time.monotonic() - started < 5
    interrupted = asyncio.create_task(service.query("SELECT count(*) FROM range(1000000000000)", timeout=60))
    await asyncio.sleep(0.3)
    service.interrupt_all()
    with pytest.raises(SqlTimeout):
        await interrupted


# --- exact values -----------------------------------------------------------------------------------
async def test_values_are_exact_in_json_and_csv(store: AnalyticsStore) -> None:
    result = await query(
        store,
        "SELECT sum(cost_usd) AS cost, 0.1::DECIMAL(20,10) + 0.2::DECIMAL(20,10) AS dec, "
        "TIMESTAMPTZ '2026-03-01 12:00:00+02' AS tz, TIMESTAMP '2026-03-01 12:00:00.000001' AS ts, "
        "DATE '2026-03-01' AS d, INTERVAL 90 MINUTE AS i, 'nan'::DOUBLE AS nan, 0.1::DOUBLE AS f, "
        "170141183460469231731687303715884105727::HUGEINT AS huge, 'ab'::BLOB AS b, NULL AS n, "
        "[1.5::DECIMAL(3,1)] AS l, {'k': 'v'} AS s, '00000000-0000-7000-8000-000000000000'::UUID AS u "
        "FROM usage_facts",
    )
    [row] = records(result)
    assert row == {
        "cost": "0.0000125001",  # 0.0000025 + 0.0000100001 (+ NULL: the unpriced call), exact
        "dec": "0.3000000000",
        "tz": "2026-03-01T10:00:00Z",
        "ts": "2026-03-01T12:00:00.000001",
        "d": "2026-03-01",
        "i": "PT1H30M",
        "nan": "NaN",
        "f": 0.1,
        "huge": 170141183460469231731687303715884105727,
        "b": "\\x6162",
        "n": None,
        "l": ["1.5"],
        "s": {"k": "v"},
        "u": "00000000-0000-7000-8000-000000000000",
    }
    assert [c.type for c in result.columns][:2] == ["DECIMAL(38,10)", "DECIMAL(21,10)"]
    doc = json.loads(result.to_json())
    assert doc["rows"][0][0] == "0.0000125001" and doc["rowCount"] == 1 and doc["truncated"] is False
    assert SqlResult.from_dict(doc).rows == result.rows
    lines = result.to_csv().splitlines()
    assert lines[0].startswith("cost,dec,tz,ts,d,i,nan,f,huge,b,n,l,s,u")
    assert lines[1].startswith("0.0000125001,0.3000000000,2026-03-01T10:00:00Z,")
    assert ",," in lines[1]  # NULL is an empty CSV field


def test_json_value_handles_nested_and_special_values() -> None:
    assert json_value(float("inf")) == "Infinity" and json_value(float("-inf")) == "-Infinity"
    assert json_value({1: Decimal("1.10")}) == {"1": "1.10"}
    assert json_value(timedelta(days=-1, seconds=5)) == "-PT23H59M55S"
    assert json_value(timedelta(0)) == "PT0S"
    assert json_value(datetime(2026, 1, 1, 1, tzinfo=UTC)) == "2026-01-01T01:00:00Z"


async def test_table_rendering(store: AnalyticsStore) -> None:
    result = await query(store, "SELECT tenant_id, count(*) AS calls FROM usage_facts GROUP BY 1 ORDER BY 1")
    text = render_table(result)
    assert text.splitlines() == [
        "tenant_id  calls",
        "---------  -----",
        "acme           4",
        "globex         1",
        "(2 rows)",
    ]
    cut = render_table(await query(store, "SELECT * FROM range(5)", max_rows=2))
    assert cut.endswith("(2 rows; more rows exist: raise --max-rows, at most 100000)")


# --- the documented views -----------------------------------------------------------------------------
VIEWS = (
    "v_cost_daily",
    "v_requests",
    "v_provider_attempts",
    "v_provider_outcomes",
    "v_provider_health_history",
    "v_unpriced_usage",
    "v_cost_by_metadata",
)


async def test_every_view_is_documented(store: AnalyticsStore) -> None:
    result = await query(store, "SELECT view_name, comment FROM duckdb_views() WHERE NOT internal ORDER BY 1")
    docs = {r["view_name"]: r["comment"] for r in records(result)}
    for view in VIEWS:
        assert docs.get(view) and len(docs[view]) > 80, view
        await query(store, f"SELECT * FROM {view}")


async def test_every_column_an_analyst_reads_is_documented(store: AnalyticsStore) -> None:
    """The README says each view and its columns carry their documentation: a docs review
    counted v_provider_outcomes at 0 of 7 columns, and the tables had none."""
    tables = ", ".join(f"'{t}'" for t in (*VIEWS, "llm_usage", "usage_facts", "usage_daily", "provider_health_history"))
    result = await query(
        store,
        f"SELECT table_name || '.' || column_name AS col FROM duckdb_columns() "
        f"WHERE table_name IN ({tables}) AND coalesce(comment, '') = '' ORDER BY 1",
    )
    assert [r["col"] for r in records(result)] == []


async def test_v_cost_daily(store: AnalyticsStore) -> None:
    result = await query(store, "SELECT * FROM v_cost_daily ORDER BY day, tenant_id, provider")
    rows = records(result)
    assert [(r["day"], r["tenant_id"], r["provider"], r["model"]) for r in rows] == [
        ("2026-03-01", "acme", "anthropic", "claude-sonnet-4"),
        ("2026-03-01", "acme", "openai", "gpt-4o-2024-08-06"),
        ("2026-03-02", "globex", "ollama", "llama3:8b"),  # 00:30 UTC the next day
    ]
    anthropic, openai, ollama = rows
    assert (anthropic["calls"], anthropic["tokens"], anthropic["cost_usd"]) == (1, 120, "0.0000100001")
    # the two 429s on openai cost nothing and are not calls
    assert (openai["calls"], openai["cost_usd"], openai["unpriced_calls"]) == (1, "0.0000025000", 0)
    assert (ollama["cost_usd"], ollama["unpriced_calls"], ollama["unpriced_tokens"]) == ("0.0000000000", 1, 120)


async def test_v_cost_by_metadata_counts_a_call_once_under_each_pair(tmp_path: Path) -> None:
    store = AnalyticsStore(tmp_path / "tagged.duckdb")
    await store.open()
    try:
        base = EVENTS[2]  # billable, priced
        tagged = [
            base.model_copy(update={"event_id": "t1", "schema_version": 4, "metadata": {"team": "a", "$x": "1"}}),
            base.model_copy(update={"event_id": "t2", "schema_version": 4, "metadata": {"team": "a"}}),
            base.model_copy(update={"event_id": "t3", "schema_version": 4, "metadata": {"team": "b", "env": ""}}),
            base.model_copy(
                update={"event_id": "t4", "cost_usd": None, "schema_version": 4, "metadata": {"team": "b"}}
            ),
            base.model_copy(update={"event_id": "t5"}),  # none: not in the view
            base.model_copy(update={"event_id": "t6", "billable": False, "metadata": {"team": "a"}}),  # not usage
        ]
        await DuckDBSink(store).apply(tagged)
        rows = records(await query(store, "SELECT * FROM v_cost_by_metadata ORDER BY key, value"))
        cost = str(base.cost_usd.quantize(Decimal("1e-10")))  # type: ignore[union-attr]
        twice = str((2 * base.cost_usd).quantize(Decimal("1e-10")))  # type: ignore[operator]
        day = base.created_at.date().isoformat()
        assert [(r["day"], r["tenant_id"], r["key"], r["value"], r["calls"], r["cost_usd"], r["unpriced_calls"])
                for r in rows] == [
            (day, base.tenant_id, "$x", "1", 1, cost, 0),
            (day, base.tenant_id, "env", "", 1, cost, 0),
            (day, base.tenant_id, "team", "a", 2, twice, 0),
            (day, base.tenant_id, "team", "b", 2, cost, 1),
        ]  # fmt: skip
        by_team = records(await query(store, "SELECT sum(calls) AS n FROM v_cost_by_metadata WHERE key = 'team'"))
        assert by_team == [{"n": 4}]  # each tagged billable call once
    finally:
        await store.close()


async def test_v_provider_attempts_and_fallbacks(store: AnalyticsStore) -> None:
    rows = {r["provider"]: r for r in records(await query(store, "SELECT * FROM v_provider_attempts"))}
    openai = rows["openai"]
    assert (openai["attempts"], openai["successes"], openai["failures"], openai["rate_limited"]) == (3, 1, 2, 2)
    # r1 left openai for anthropic, r2 did not: 1 fallback out of 2 requests
    assert (openai["requests"], openai["served_requests"], openai["fallbacks"], openai["fallback_rate"]) == (
        2,
        1,
        1,
        0.5,
    )
    assert openai["provider_failures"] == 0  # rate limits are not the provider failing
    anthropic = rows["anthropic"]
    assert (anthropic["requests"], anthropic["fallbacks"], anthropic["fallback_rate"]) == (1, 0, 0.0)
    outcomes = records(
        await query(store, "SELECT outcome, attempts FROM v_provider_outcomes WHERE provider = 'openai' ORDER BY 1")
    )
    assert outcomes == [{"outcome": "rate_limited", "attempts": 2}, {"outcome": "success", "attempts": 1}]


async def test_v_requests(store: AnalyticsStore) -> None:
    rows = {r["request_id"]: r for r in records(await query(store, "SELECT * FROM v_requests"))}
    r1 = rows["r1"]
    assert (r1["attempts"], r1["first_provider"], r1["last_provider"], r1["served_attempt"]) == (
        3,
        "openai",
        "anthropic",
        3,
    )
    assert r1["fell_back"] and r1["retried"] and r1["served"] and r1["cost_usd"] == "0.0000100001"
    assert not rows["r2"]["fell_back"] and not rows["r2"]["retried"] and rows["r2"]["served_attempt"] == 1
    share = records(await query(store, "SELECT avg(fell_back::INT) AS share FROM v_requests WHERE served"))
    assert share == [{"share": 1 / 3}]


async def test_v_unpriced_usage_and_health_history(store: AnalyticsStore) -> None:
    unpriced = records(await query(store, "SELECT * FROM v_unpriced_usage"))
    assert len(unpriced) == 1
    assert {k: unpriced[0][k] for k in ("provider", "model", "calls", "tenants", "tokens", "requested_models")} == {
        "provider": "ollama",
        "model": "llama3:8b",
        "calls": 1,
        "tenants": 1,
        "tokens": 120,
        "requested_models": ["gpt-4o"],
    }
    [health] = records(await query(store, "SELECT * FROM v_provider_health_history"))
    assert health["window_start"] == "2026-03-01T23:29:02Z" and health["window_end"] == "2026-03-01T23:30:02Z"
    assert (health["rate_limit_rate"], health["failure_rate"], health["is_transition"]) == (1.0, 0.0, True)


async def test_a_json_column_is_its_value_in_json_and_its_text_in_csv(store: AnalyticsStore) -> None:
    """A call's metadata (a JSON column) came back as a string of JSON to decode again, where
    /v1/costs gives the object. A JSON answer now has the object or array when it is exactly the
    text (as the sink writes metadata); anything else stays its text (a re-test: numbers a
    double rounds, duplicate keys, a JSON null, a JSON string). CSV keeps the text, whichever
    way it is made (here, or from the answer by the command)."""
    texts = {
        "m": '{"team":"search","q":"a \\"b\\" ✓"}',
        "l": "[1,2,[3]]",
        "spaced": '{"a": 1}',
        "dup": '{"a":1,"a":2}',
        "pi": "[3.141592653589793238462643]",
        "big": "[123456789012345678901234567890]",
        "inf": '{"a":1e999}',
        "text": '"x,y"',
        "jnull": "null",
        "deep": "[" * 500 + "]" * 500,
    }
    sql = ", ".join(f"'{t}'::JSON AS {name}" for name, t in texts.items()) + ", NULL::JSON AS n"
    result = await query(store, f"SELECT {sql}")
    answer = json.loads(result.to_json())
    [row] = answer["rows"]
    got = dict(zip([c["name"] for c in answer["columns"]], row, strict=True))
    decoded = {"m": {"team": "search", "q": 'a "b" ✓'}, "l": [1, 2, [3]], "big": [123456789012345678901234567890]}
    assert got == {**texts, **decoded, "n": None}
    assert result.to_dict()["rows"] == answer["rows"]
    # CSV: the text, here and from the answer read back
    expected = [*texts.values(), ""]
    for made in (result, SqlResult.from_dict(answer)):
        [cells] = list(csv.reader(io.StringIO(made.to_csv())))[1:]
        assert cells == expected


async def test_csv_keeps_a_value_with_a_carriage_return_in_its_row(store: AnalyticsStore) -> None:
    """Written unquoted (the writer's lines end with a newline, so a carriage return was not
    special to it), the row was read back as two (review)."""
    import csv as csv_module
    import io

    result = await query(store, "SELECT 'a' || chr(13) || 'b' AS \"x\ry\", 2 AS n, 'plain' AS p", max_rows=10)
    assert list(csv_module.reader(io.StringIO(result.to_csv(), newline=""))) == [
        ["x\ry", "n", "p"],
        ["a\rb", "2", "plain"],
    ]


async def test_an_interval_comes_back_exactly(store: AnalyticsStore) -> None:
    """DuckDB's Python driver turns an INTERVAL into a timedelta, months into 30 days each: two
    months read P60D, a year P360D (review). Its parts are read instead."""
    result = await query(
        store,
        "SELECT age(DATE '2026-03-01', DATE '2026-01-01') AS a, INTERVAL '1 year' AS y, INTERVAL 90 MINUTE AS m, "
        "NULL::INTERVAL AS n, -INTERVAL '2 months 3 days' AS neg, INTERVAL '1 month' - INTERVAL '3 days' AS mixed, "
        "INTERVAL '14 months 3 days 01:02:03.5' AS full, 7 AS other -- and a comment",
        max_rows=10,
    )
    assert result.rows == [["P2M", "P1Y", "PT1H30M", None, "-P2M3D", "P1M-3D", "P1Y2M3DT1H2M3.5S", 7]]
    assert [c.type for c in result.columns][:2] == ["INTERVAL", "INTERVAL"]


# --- sharing the event loop's process -------------------------------------------------------------
async def test_a_big_result_is_read_and_encoded_letting_go_of_the_gil_and_encodes_as_one_dumps(
    store: AnalyticsStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Reading and encoding a result is Python work in a worker thread: it holds the GIL, and
    the gateway's loop waited for it at each of a call's awaits (a review: chat p99 7 -> 199 ms
    while an analyst read ``usage_facts``; 1.2 s for one ``json.dumps`` of 70 MB). It lets go
    every ``CELLS_A_TURN`` values, and the text is what one ``json.dumps`` of it makes."""
    pauses = [0]
    monkeypatch.setattr(sql_module, "let_others_run", lambda: pauses.__setitem__(0, pauses[0] + 1))
    result = await query(
        store,
        "SELECT i, i::DECIMAL(18,4) / 7 AS d, 'a\"b' || i AS s, TIMESTAMPTZ '2026-03-01 00:00:00Z' + i * "
        "INTERVAL 1 SECOND AS t, CASE WHEN i % 7 = 0 THEN NULL ELSE i / 3 END AS f FROM range(5000) r(i)",
        max_rows=5000,
    )
    read = pauses[0]
    assert read >= 5000 * 5 // sql_module.CELLS_A_TURN - 1
    text = result.to_json()
    assert pauses[0] - read >= 5000 * 5 // sql_module.CELLS_A_TURN - 1
    assert text == json.dumps(result.to_dict(), ensure_ascii=False, allow_nan=False)
    assert json.loads(text)["rows"][4999][0] == 4999
    empty = SqlResult([], [], truncated=False, max_rows=1)
    assert empty.to_json() == json.dumps(empty.to_dict())
    before = pauses[0]
    assert result.to_csv().count("\n") == 5001 and pauses[0] - before >= 5000 * 5 // sql_module.CELLS_A_TURN - 1


async def test_a_query_nesting_deeper_than_python_reads_is_refused_not_a_crash(store: AnalyticsStore) -> None:
    """400 terms of ``+`` (or 500 of ``||``) made the check's JSON reading raise RecursionError:
    a 500 (a review)."""
    for sql in (
        "SELECT " + " + ".join("1" for _ in range(400)),
        "SELECT " + " || ".join(f"'{i}'" for i in range(500)),
        "SELECT " + "abs(" * 600 + "1" + ")" * 600,
    ):
        with pytest.raises(SqlRefused, match="nests too deeply"):
            await query(store, sql)
    assert (await query(store, "SELECT " + " + ".join("1" for _ in range(50)) + " AS n")).rows == [[50]]


async def test_the_time_limit_counts_the_wait_for_a_query_slot(store: AnalyticsStore) -> None:
    """Behind two long queries, a `SELECT 1` with a 1 s limit answered after 19.5 s (a review)."""
    service = SqlService(store, concurrency=2)
    slow = [
        asyncio.create_task(service.query("SELECT count(*) FROM range(1000000000000)", timeout=30)) for _ in range(2)
    ]
    await asyncio.sleep(0.3)
    started = time.monotonic()
    with pytest.raises(SqlTimeout, match=r"waited 0\.5 s for one of the 2 query slots") as info:
        await service.query("SELECT 1", timeout=0.5)
    assert info.value.code == "sql_busy"  # the service's state: a 503 over HTTP, not the query's 400
    assert time.monotonic() - started < 3
    service.interrupt_all()
    for task in slow:
        with pytest.raises(SqlTimeout):
            await task
    assert (await service.query("SELECT 1 AS one", timeout=5)).rows == [[1]]  # every slot given back


async def test_a_result_is_released_in_turns_after_it_is_encoded(
    store: AnalyticsStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Dropped on the event loop when the handler returned, 100,000 rows held it 67 ms (a
    re-test): the worker that encoded them drops them, a turn at a time."""
    from analytics.sql_http import _encoded

    result = await query(store, "SELECT i, i * 2 AS j FROM range(3000) r(i)", max_rows=3000)
    pauses = [0]
    monkeypatch.setattr(sql_module, "let_others_run", lambda: pauses.__setitem__(0, pauses[0] + 1))
    text = _encoded(result, result.to_json)
    assert json.loads(text)["rowCount"] == 3000 and result.rows == []
    assert pauses[0] >= 2 * (3000 * 2 // sql_module.CELLS_A_TURN) - 2  # the encoding's turns and the release's


def test_csv_hands_off_the_gil_before_it_has_converted_every_row(monkeypatch: pytest.MonkeyPatch) -> None:
    """The rows were unpacked into one tuple first: every cell converted before the first
    hand-off (233 ms for 100,000 rows of 10: a diff review)."""
    converted = [0]
    first_pause: list[int] = []
    real = sql_module.cell_text

    def counting(value: Any, *, null: str = "NULL") -> str:
        converted[0] += 1
        return real(value, null=null)

    monkeypatch.setattr(sql_module, "cell_text", counting)
    monkeypatch.setattr(sql_module, "let_others_run", lambda: first_pause.append(converted[0]))
    result = SqlResult([sql_module.Column("i", "BIGINT")] * 4, [[n, n, n, n] for n in range(10_000)], False, 10_000)
    assert result.to_csv().count("\n") == 10_001
    assert first_pause and first_pause[0] <= sql_module.CELLS_A_TURN + 4
