"""Read-only SQL over the analytics store, safe to offer to operators next to the writer.

A query passes four independent locks, each enough on its own for what it covers:

1. **One SELECT, by DuckDB's own parser.** ``extract_statements`` must find exactly one
   statement, of type SELECT (``WITH ... SELECT``, ``FROM t``, ``VALUES``, ``DESCRIBE``,
   ``SUMMARIZE`` are SELECTs too). INSERT, UPDATE, DELETE, CREATE, DROP, ALTER, ATTACH, DETACH,
   COPY, EXPORT, IMPORT, INSTALL, LOAD, PRAGMA, SET, CALL, CHECKPOINT, EXPLAIN, transactions:
   refused before anything runs.
2. **Only known tables and harmless table functions, by DuckDB's own syntax tree**
   (``json_serialize_sql``). Every table function must be on ``ALLOWED_TABLE_FUNCTIONS``
   (``range``, ``unnest``, catalog functions such as ``duckdb_views()``): ``read_csv``,
   ``read_parquet``, ``read_text``, ``read_blob``, ``glob``, ``sniff_csv``, ``query``,
   ``query_table``, ``enable_logging`` and the rest are refused, whatever their arguments.
   Every table name must name a table or view of the catalog, or a CTE of the query by a plain
   identifier: a quoted path such as ``FROM '/etc/passwd.csv'`` (a DuckDB "replacement scan" of
   a file), even one named like a CTE, is refused.
   Scalar functions with side effects on the database (``nextval``, ``setval``, ``write_log``)
   are refused.
3. **A read-only transaction** (``BEGIN TRANSACTION READ ONLY``) on a connection of its own:
   DuckDB itself refuses any write, and the query never blocks or sees the writer's
   uncommitted batches.
4. **No file or network access for the database at all**: the store is sandboxed at open
   (``analytics.store.sandbox``: ``enable_external_access = false``, which DuckDB will not turn
   back on while the database is open), so even a query that got past 1-3 could read no file
   but the writer's private scratch directory, and reach no network address.

Bounds: the query is interrupted (``interrupt()`` from a timer thread) once ``timeout``
seconds have passed, whatever it is doing; at most ``max_rows`` rows are fetched
(``max_rows + 1`` are asked for: whether more existed is ``truncated``), in chunks whose size
follows the rows' size, and the fetch stops with :class:`SqlResultTooLarge` once the values
pass ``max_bytes`` (the DuckDB memory limit does not cover rows handed to Python: 40 rows of 10
MB took a gateway from 128 MB to 1.7 GB).

Values are exact: DECIMAL as decimal text, timestamps as ISO 8601 (``Z`` for UTC), dates and
times as ISO 8601, intervals as ISO 8601 durations, BLOBs as ``\\x`` hex, UUIDs as text; a
``JSON`` column's object or array as its value in a JSON answer when that is exactly its text
(:func:`_json_of`), else its text.
"""

from __future__ import annotations

import asyncio
import csv
import io
import itertools
import json
import math
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from datetime import time as clock_time
from decimal import Decimal
from typing import Any
from uuid import UUID

import duckdb

from analytics.sql_limits import DEFAULT_MAX_ROWS, DEFAULT_TIMEOUT, MAX_ROWS_LIMIT, MAX_TIMEOUT
from analytics.store import AnalyticsStore
from gateway.errors import ClientGone

#: seconds between two interrupts of a query past its time limit (one may come before it starts)
INTERRUPT_AGAIN = 0.05

#: the most text a result may hold (its values' characters, about its JSON size)
MAX_RESULT_BYTES = 64 * 1024 * 1024
#: analytics queries one process runs at once (each gets a DuckDB connection of its own)
MAX_CONCURRENT = 2
#: how often a running query looks whether its caller has left (seconds)
GONE_EVERY = 0.25

#: table functions a query may use: generators and catalog introspection, nothing that reads
#: files, reaches the network, runs other SQL or changes settings
ALLOWED_TABLE_FUNCTIONS = frozenset(
    {
        "range",
        "generate_series",
        "unnest",
        "json_each",
        "json_tree",
        "duckdb_columns",
        "duckdb_constraints",
        "duckdb_databases",
        "duckdb_functions",
        "duckdb_indexes",
        "duckdb_keywords",
        "duckdb_schemas",
        "duckdb_tables",
        "duckdb_types",
        "duckdb_views",
        "pragma_table_info",
        "pragma_show",
        "pg_timezone_names",
    }
)
#: scalar functions with side effects on the database
DENIED_FUNCTIONS = frozenset({"nextval", "setval", "currval", "write_log"})

JSONValue = str | int | float | bool | None | list[Any] | dict[str, Any]


class SqlError(Exception):
    """The query could not be run; ``code`` says why (the HTTP API's error code)."""

    code = "sql_error"


class SqlRefused(SqlError):
    """The statement is not one read-only query over the analytics tables."""

    code = "sql_not_allowed"


class SqlTimeout(SqlError):
    code = "sql_timeout"


class SqlBusy(SqlTimeout):
    """Every query slot stayed taken for the query's whole time limit: the service was busy,
    the query was not run (a 503, not the client's 400)."""

    code = "sql_busy"


class SqlResultTooLarge(SqlError):
    code = "sql_result_too_large"


@dataclass(frozen=True, slots=True)
class Column:
    name: str
    type: str


@dataclass(slots=True)
class SqlResult:
    """Columns and JSON-ready rows (see :func:`json_value`)."""

    columns: list[Column]
    rows: list[list[JSONValue]]
    truncated: bool
    max_rows: int
    elapsed_ms: float = 0.0

    def _answer_rows(self, rows: list[list[JSONValue]], json_columns: list[int]) -> list[list[JSONValue]]:
        """``rows`` as a JSON answer has them: a ``JSON`` column's object (a call's metadata) as
        its value, not a string of JSON to decode again (:func:`_json_of`); the rows themselves
        keep its text, which CSV and tables show."""
        if not json_columns:
            return rows
        answer = []
        for row in rows:
            row = list(row)
            for i in json_columns:
                row[i] = _json_of(row[i])
            answer.append(row)
        return answer

    def to_dict(self) -> dict[str, Any]:
        rows = self._answer_rows(self.rows, _json_columns(self.columns))
        return {"columns": self._columns(), "rows": rows, **self._tail()}

    def _columns(self) -> list[dict[str, str]]:
        return [{"name": c.name, "type": c.type} for c in self.columns]

    def _tail(self) -> dict[str, Any]:
        return {
            "rowCount": len(self.rows),
            "truncated": self.truncated,
            "maxRows": self.max_rows,
            "elapsedMs": round(self.elapsed_ms, 3),
        }

    @classmethod
    def from_dict(cls, doc: dict[str, Any]) -> SqlResult:
        """A JSON answer read back (the ``sql`` command): a ``JSON`` column's value is its text
        again, the very text it was decoded from."""
        columns = [Column(str(c["name"]), str(c["type"])) for c in doc["columns"]]
        json_columns = _json_columns(columns)
        rows = [list(row) for row in doc["rows"]]
        for row in rows if json_columns else ():
            for i in json_columns:
                if isinstance(row[i], dict | list):
                    row[i] = _compact(row[i])
        return cls(
            columns=columns,
            rows=rows,
            truncated=bool(doc["truncated"]),
            max_rows=int(doc["maxRows"]),
            elapsed_ms=float(doc.get("elapsedMs", 0.0)),
        )

    def to_json(self) -> str:
        """``to_dict()`` as JSON text, its rows encoded about :data:`CELLS_A_TURN` values at a time with the
        GIL let go between (see :func:`let_others_run`)."""
        rows = self.rows
        head = json.dumps({"columns": self._columns()}, ensure_ascii=False, allow_nan=False)[:-1]
        tail = json.dumps(self._tail(), ensure_ascii=False, allow_nan=False)[1:]
        parts = []
        json_columns = _json_columns(self.columns)
        # a JSON cell decoded and checked costs about as much as 16 other values
        step = rows_a_turn(len(self.columns) + 16 * len(json_columns))
        for start in range(0, len(rows), step):
            if start:
                let_others_run()
            chunk = self._answer_rows(rows[start : start + step], json_columns)
            parts.append(json.dumps(chunk, ensure_ascii=False, allow_nan=False)[1:-1])
        return f'{head}, "rows": [{", ".join(parts)}], {tail}'

    def release(self) -> None:
        """Drop the rows :data:`CELLS_A_TURN` values at a time, letting go of the GIL between
        (call from a worker thread: see :func:`let_others_run`)."""
        rows = self.rows
        step = rows_a_turn(len(self.columns))
        while rows:
            del rows[-step:]
            let_others_run()

    def to_csv(self) -> str:
        out = io.StringIO()
        writer = csv.writer(out, lineterminator="\n")
        # the writer quotes a value with a newline, not one with a carriage return alone (with
        # "\n" ending its lines): such a row was read back as two (review). Its rows quote all.
        quoted = csv.writer(out, lineterminator="\n", quoting=csv.QUOTE_ALL)
        step = rows_a_turn(len(self.columns))
        # one row converted at a time: unpacked into one tuple first, every row was converted
        # before the first hand-off (233 ms for 100,000 rows of 10: a diff review)
        lines = itertools.chain(
            ([c.name for c in self.columns],), ([cell_text(v, null="") for v in row] for row in self.rows)
        )
        for n, cells in enumerate(lines):
            if n and n % step == 0:
                let_others_run()
            (quoted if any("\r" in cell for cell in cells) else writer).writerow(cells)
        return out.getvalue()


#: values a worker thread converts or encodes between two :func:`let_others_run` (about 0.5 ms)
CELLS_A_TURN = 1024


def rows_a_turn(columns: int) -> int:
    return max(1, CELLS_A_TURN // max(1, columns))


def let_others_run() -> None:
    """Let go of the GIL for a moment. A result is read and encoded in a worker thread, but that
    is Python work, which holds the GIL: the gateway's event loop waited for it 5 ms at a time
    (Python's switch interval) at each of a call's awaits, and 1.2 s for one ``json.dumps`` of
    a 70 MB result (a review: chat p50 1.3 -> 9.8 ms and p99 7 -> 199 ms while an analyst
    read ``usage_facts``). ``sleep(0)`` hands the GIL to a thread waiting for it."""
    time.sleep(0)


# --- values -------------------------------------------------------------------------------------
def json_value(value: Any) -> JSONValue:
    """A DuckDB value as exact JSON: numbers stay numbers except DECIMAL (decimal text) and
    non-finite floats (``"NaN"``, ``"Infinity"``); times are ISO 8601 text."""
    if value is None or isinstance(value, bool | int | str):
        return value
    if isinstance(value, Decimal):
        return format(value, "f")
    if isinstance(value, float):
        if math.isfinite(value):
            return value
        return "NaN" if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity")
    if isinstance(value, datetime):
        if value.tzinfo is None:
            return value.isoformat()
        return value.astimezone(UTC).isoformat().replace("+00:00", "Z")
    if isinstance(value, date | clock_time):
        return value.isoformat()
    if isinstance(value, timedelta):
        return iso_duration(value)
    if isinstance(value, UUID):
        return str(value)
    if isinstance(value, bytes | bytearray | memoryview):
        return "\\x" + bytes(value).hex()
    if isinstance(value, dict):
        return {str(cell_text(json_value(k))): json_value(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_value(v) for v in value]
    return str(value)


def iso_duration(value: timedelta) -> str:
    """``P1DT2H3M4.5S`` (a negative interval gets a leading ``-``)."""
    sign = "-" if value < timedelta(0) else ""
    value = abs(value)
    seconds = Decimal(value.seconds) + Decimal(value.microseconds) / Decimal(1_000_000)
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    clock = (
        (f"{hours}H" if hours else "") + (f"{minutes}M" if minutes else "") + (f"{secs.normalize():f}S" if secs else "")
    )
    days = f"{value.days}D" if value.days else ""
    if not days and not clock:
        clock = "0S"
    return f"{sign}P{days}" + (f"T{clock}" if clock else "")


def cell_text(value: JSONValue, *, null: str = "NULL") -> str:
    """A JSON-ready value as one text cell (CSV, tables)."""
    if value is None:
        return null
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return value
    if isinstance(value, int | float):
        return repr(value)
    return json.dumps(value, ensure_ascii=False)


# --- the checks -----------------------------------------------------------------------------------
def check_query(conn: duckdb.DuckDBPyConnection, sql: str) -> str:
    """The one SELECT statement of ``sql``, or :class:`SqlRefused` saying what is not allowed."""
    if not sql.isascii():
        try:
            sql.encode()
        except UnicodeEncodeError as e:  # DuckDB raised a TypeError: a 500 (a re-test)
            raise SqlError(f"the query is not text DuckDB can read: {e.reason} at character {e.start}") from e
    try:
        statements = conn.extract_statements(sql)
    except duckdb.Error as e:
        raise SqlError(_message(e)) from e
    if len(statements) != 1:
        raise SqlRefused(f"send exactly one SQL statement (got {len(statements)})")
    statement = statements[0]
    try:
        kind = statement.type
    except ValueError as e:  # a statement type the Python client cannot name (e.g. UPDATE EXTENSIONS)
        raise SqlRefused("only read-only queries (SELECT) are allowed") from e
    if kind != duckdb.StatementType.SELECT:
        raise SqlRefused(f"only read-only queries (SELECT) are allowed, not {kind.name.replace('_', ' ')}")
    query = statement.query
    refs = _References()
    try:
        doc = json.loads(conn.execute("SELECT json_serialize_sql(?)", [query]).fetchone()[0])  # type: ignore[index]
        if doc.get("error"):
            raise SqlRefused(f"this form of query is not supported here: {doc.get('error_message')}")
        refs.walk(doc, frozenset())
    except RecursionError:
        # its parse tree is deeper than Python reads (400 nested terms, such as a long chain of
        # ``||`` or ``+``, were a 500: a review); DuckDB refuses 1,000 itself
        raise SqlRefused(
            "the query nests too deeply to be checked (hundreds of nested expressions or subqueries): "
            "flatten it, e.g. concat(a, b, c) for a || b || c"
        ) from None
    bad = sorted(refs.table_functions - ALLOWED_TABLE_FUNCTIONS)
    if bad:
        raise SqlRefused(
            f"table function {', '.join(bad)} is not allowed: SQL analytics reads the gateway's tables and views "
            "only (no files, no network)"
        )
    bad = sorted(refs.functions & DENIED_FUNCTIONS)
    if bad:
        raise SqlRefused(f"function {', '.join(bad)} is not allowed in a read-only query")
    if refs.tables:
        catalog = _catalog(conn)
        unknown = sorted({".".join(p for p in ref if p) for ref in refs.tables if not _known(ref, catalog)})
        if unknown:
            raise SqlRefused(
                f"unknown table or view {', '.join(unknown)}: SQL analytics reads the gateway's tables and views "
                "only (no files, no network); list them with SELECT view_name, comment FROM duckdb_views()"
            )
    return query


_PLAIN_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


class _References:
    """Table functions, functions and tables a serialized query refers to (CTEs resolved by scope)."""

    def __init__(self) -> None:
        self.table_functions: set[str] = set()
        self.functions: set[str] = set()
        self.tables: set[tuple[str, str, str]] = set()

    def walk(self, node: Any, ctes: frozenset[str]) -> None:
        if isinstance(node, list):
            for item in node:
                self.walk(item, ctes)
            return
        if not isinstance(node, dict):
            return
        cte_map = node.get("cte_map")
        if isinstance(cte_map, dict):
            ctes = ctes | {str(e.get("key", "")).lower() for e in cte_map.get("map") or [] if isinstance(e, dict)}
        kind = node.get("type")
        if kind == "TABLE_FUNCTION":
            function = node.get("function") or {}
            self.table_functions.add(str(function.get("function_name", "")).lower())
        elif kind == "BASE_TABLE" or (kind == "SHOW_REF" and node.get("show_type") != "SHOW_SPECIAL"):
            name = str(node.get("table_name") or "")
            if name:
                ref = (str(node.get("catalog_name") or ""), str(node.get("schema_name") or ""), name)
                # a CTE only by a plain name: DuckDB resolves a name it cannot bind (a CTE out of
                # scope, or not yet defined) by a "replacement scan", which reads a file whose path
                # it looks like; a plain identifier looks like no file
                if ref[0] or ref[1] or name.lower() not in ctes or not _PLAIN_NAME.match(name):
                    self.tables.add(ref)
        if node.get("class") == "FUNCTION" and "function_name" in node:
            self.functions.add(str(node["function_name"]).lower())
        for value in node.values():
            if isinstance(value, dict | list):
                self.walk(value, ctes)


_CATALOG = """
SELECT database_name, schema_name, table_name FROM duckdb_tables()
UNION ALL SELECT database_name, schema_name, view_name FROM duckdb_views()
"""


def _catalog(conn: duckdb.DuckDBPyConnection) -> set[tuple[str, str, str]]:
    return {(d.lower(), s.lower(), t.lower()) for d, s, t in conn.execute(_CATALOG).fetchall()}


def _known(ref: tuple[str, str, str], catalog: set[tuple[str, str, str]]) -> bool:
    database, schema, name = (part.lower() for part in ref)
    for d, s, t in catalog:
        if t != name:
            continue
        if database and schema:
            if (d, s) == (database, schema):
                return True
        elif schema:  # "a.b": schema.table, or database.table (schema main)
            if schema == s or (schema == d and s == "main"):
                return True
        else:
            return True
    return False


def _message(error: duckdb.Error) -> str:
    return str(error).strip()


# --- running --------------------------------------------------------------------------------------
def run_query(
    conn: duckdb.DuckDBPyConnection,
    sql: str,
    *,
    max_rows: int = DEFAULT_MAX_ROWS,
    timeout: float = DEFAULT_TIMEOUT,
    max_bytes: int = MAX_RESULT_BYTES,
    asked_timeout: float | None = None,
) -> SqlResult:
    """Check and run ``sql`` on ``conn``, a connection used for nothing else meanwhile (a
    ``cursor()`` of the store's connection). Blocking: call it from a worker thread.
    ``asked_timeout``: the limit the caller asked for, when ``timeout`` is what is left of it."""
    if not 1 <= max_rows <= MAX_ROWS_LIMIT:
        raise ValueError(f"max_rows must be from 1 to {MAX_ROWS_LIMIT}")
    if not 0 < timeout <= MAX_TIMEOUT:
        raise ValueError(f"timeout must be more than 0 and at most {MAX_TIMEOUT} seconds")
    started = time.monotonic()
    expired = threading.Event()
    finished = threading.Event()
    interrupting = threading.Lock()  # no interrupt once the work is over (its cursor may be closed)

    def expire() -> None:
        # again every 50 ms until the work ends: an interrupt between the check below and the
        # query's start is lost (a CI run saw a microsecond's timeout not stop the query)
        expired.set()
        while True:
            with interrupting:
                if finished.is_set():
                    return
                try:
                    conn.interrupt()
                except duckdb.Error:  # closed: nothing left to stop
                    return
            if finished.wait(INTERRUPT_AGAIN):
                return

    def finish() -> None:
        with interrupting:
            finished.set()

    timer = threading.Timer(timeout, expire)
    timer.daemon = True
    timer.start()
    try:
        conn.execute("SET TimeZone = 'UTC'")
        query = check_query(conn, sql)
        conn.execute("BEGIN TRANSACTION READ ONLY")
        try:
            # an interrupt that comes before a query starts is lost: a timeout of a microsecond
            # expired during the checks and the query then ran unbounded (9 s, past the 300 s cap
            # had it been longer)
            if expired.is_set():
                raise duckdb.InterruptException("expired before the query started")
            result = conn.execute(query)
            columns = [Column(str(d[0]), str(d[1])) for d in result.description or []]
            nested = any(_NESTED.search(c.type) for c in columns)
            # the driver turns a top-level INTERVAL into a timedelta, months into 30 days each (two
            # months read P60D, a year P360D: review): its parts are read instead
            intervals = [i for i, c in enumerate(columns) if c.type == "INTERVAL"]
            if nested:
                # a list, struct, map or union: one value may be any size, and the driver turns it
                # into Python objects whole (SELECT range(20000000) took the gateway to 4 GB): its
                # JSON size is measured in DuckDB first
                _refuse_if_too_large(conn, query, max_rows + 1, max_bytes)
            if nested or intervals:  # the first run only said the column types: run it to be read
                result = conn.execute(_interval_parts(query, len(columns), intervals) if intervals else query)
            fetched = _fetch(result, max_rows + 1, max_bytes)
            for row in fetched:
                for i in intervals:
                    parts = row[i]
                    # a NULL interval's parts are NULLs
                    exact = isinstance(parts, list) and None not in parts
                    row[i] = iso_interval(*parts) if exact else None  # type: ignore[misc]
            if expired.is_set():  # the limit came while it ran: what it read may be cut short
                raise duckdb.InterruptException("the time limit came while the query ran")
        finally:
            finish()
            timer.cancel()
            _rollback(conn)
    except duckdb.InterruptException as e:
        if expired.is_set():
            raise SqlTimeout(f"the query ran longer than {asked_timeout or timeout:g} s and was stopped") from e
        raise SqlTimeout("the query was stopped: the caller left or the service is shutting down") from e
    except duckdb.PermissionException as e:
        raise SqlRefused(f"{_message(e)} (SQL analytics has no file or network access)") from e
    except duckdb.TransactionException as e:
        raise SqlRefused(_message(e)) from e
    except duckdb.Error as e:
        raise SqlError(_message(e)) from e
    finally:
        finish()
        timer.cancel()
    elapsed = (time.monotonic() - started) * 1000
    return SqlResult(
        columns, fetched[:max_rows], truncated=len(fetched) > max_rows, max_rows=max_rows, elapsed_ms=elapsed
    )


#: a column type whose values nest others (``BIGINT[]``, ``INTEGER[2]``, ``STRUCT(..)``, ``MAP(..)``,
#: ``UNION(..)``)
_NESTED = re.compile(r"\]$|^(?:STRUCT|MAP|UNION)\(")


def _too_large(max_bytes: int) -> SqlResultTooLarge:
    return SqlResultTooLarge(
        f"the result is larger than {max_bytes // (1024 * 1024)} MiB: ask for fewer rows or columns "
        "(LIMIT, maxRows), or aggregate in SQL"
    )


def _refuse_if_too_large(conn: duckdb.DuckDBPyConnection, query: str, limit: int, max_bytes: int) -> None:
    """:class:`SqlResultTooLarge` when the first ``limit`` rows of ``query`` are larger than
    ``max_bytes`` as JSON, measured in DuckDB without reading them."""
    row = conn.execute(
        # the newline ends a trailing "-- comment" of the query before the closing parenthesis
        f"SELECT coalesce(sum(strlen(to_json(t)::VARCHAR)), 0) FROM (SELECT * FROM ({query}\n) LIMIT {int(limit)}) t"
    ).fetchone()
    if row is not None and row[0] > max_bytes:
        raise _too_large(max_bytes)


def _interval_parts(query: str, width: int, intervals: list[int]) -> str:
    """``query`` with each INTERVAL column (by position) as ``[months, days, microseconds]``."""
    parts = "[datepart('year', {c}) * 12 + datepart('month', {c}), datepart('day', {c}), " + (
        "datepart('hour', {c}) * 3600000000 + datepart('minute', {c}) * 60000000 + datepart('microsecond', {c})]"
    )
    columns = [parts.format(c=f"#{i + 1}") if i in intervals else f"#{i + 1}" for i in range(width)]
    return f"SELECT {', '.join(columns)} FROM ({query}\n) q"  # the newline ends a trailing comment


def iso_interval(months: int, days: int, micros: int) -> str:
    """An INTERVAL's parts as ISO 8601, exactly (``P1Y2M3DT4H5M6.5S``); a part of another sign
    than the others gets its own ``-`` (as PostgreSQL's iso_8601 style writes them), a wholly
    negative one a leading ``-``."""
    sign = ""
    if months <= 0 and days <= 0 and micros <= 0 and (months or days or micros):
        sign, months, days, micros = "-", -months, -days, -micros
    years, months = int(months / 12), months - int(months / 12) * 12  # toward zero, as DuckDB splits
    seconds = Decimal(micros) / Decimal(1_000_000)
    hours = int(seconds / 3600)
    minutes = int((seconds - hours * 3600) / 60)
    secs = seconds - hours * 3600 - minutes * 60
    date = (f"{years}Y" if years else "") + (f"{months}M" if months else "") + (f"{days}D" if days else "")
    clock = (
        (f"{hours}H" if hours else "") + (f"{minutes}M" if minutes else "") + (f"{secs.normalize():f}S" if secs else "")
    )
    if not date and not clock:
        clock = "0S"
    return f"{sign}P{date}" + (f"T{clock}" if clock else "")


def _json_size(value: JSONValue) -> int:
    """About the bytes of ``value`` as JSON (text as its length, a scalar as 8)."""
    if isinstance(value, str):
        return len(value) + 2
    if isinstance(value, list):
        return 2 + sum(_json_size(v) + 1 for v in value)
    if isinstance(value, dict):
        return 2 + sum(len(k) + 4 + _json_size(v) for k, v in value.items())
    return 8


def _fetch(result: duckdb.DuckDBPyConnection, limit: int, max_bytes: int) -> list[list[JSONValue]]:
    """Up to ``limit`` rows as JSON values, fetched in chunks sized so that one chunk is about
    an eighth of what the byte budget has left; :class:`SqlResultTooLarge` past ``max_bytes``."""
    rows: list[list[JSONValue]] = []
    size, chunk = 0, 64
    while len(rows) < limit:
        if rows:
            let_others_run()
        fetched = result.fetchmany(min(chunk, limit - len(rows)))
        for raw in fetched:
            row = [json_value(v) for v in raw]
            # a list or struct counted as a scalar let 100 MB through a 64 MiB limit (review)
            size += sum(_json_size(v) for v in row) + len(row)
            rows.append(row)
        if size > max_bytes:
            raise _too_large(max_bytes)
        if len(fetched) < chunk:
            break
        per_row = max(1, size // len(rows))
        chunk = max(1, min(rows_a_turn(len(row)), (max_bytes - size) // per_row // 8))
    return rows


def _json_columns(columns: list[Column]) -> list[int]:
    """The positions of the ``JSON`` columns (a call's metadata)."""
    return [i for i, c in enumerate(columns) if c.type == "JSON"]


#: the deepest JSON value an answer decodes (deeper ones stay text)
JSON_DEPTH = 64


def _json_of(text: JSONValue) -> JSONValue:
    """A ``JSON`` column's object or array as its value, when that is exactly its text: the
    text is the value's compact encoding (``{"team":"search"}``, as the sink writes metadata),
    so the CSV that ``from_dict`` makes of the value again is the same text. Anything else stays
    text: a JSON scalar (``null`` is not SQL's NULL), duplicate keys, a number a double does not
    hold exactly, other spacing, nesting past :data:`JSON_DEPTH`."""
    if not isinstance(text, str) or text[:1] not in ("{", "["):
        return text
    try:
        value: JSONValue = json.loads(text)
        if not _shallow(value) or _compact(value) != text:
            return text
    except (ValueError, RecursionError):
        return text
    return value


def _compact(value: JSONValue) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"), allow_nan=False)


def _shallow(value: JSONValue) -> bool:
    """Whether ``value`` nests at most :data:`JSON_DEPTH` levels (walked without recursion)."""
    level: list[tuple[JSONValue, int]] = [(value, 1)]
    while level:
        item, depth = level.pop()
        if isinstance(item, dict | list):
            if depth > JSON_DEPTH:
                return False
            level.extend((v, depth + 1) for v in (item.values() if isinstance(item, dict) else item))
    return True


def _rollback(conn: duckdb.DuckDBPyConnection) -> None:
    try:
        conn.execute("ROLLBACK")
    except duckdb.Error:
        pass  # interrupted or already ended: closing the connection ends the transaction anyway


class SqlService:
    """Runs analytics queries on an open :class:`AnalyticsStore`, each on a connection of its
    own (a cursor of the store's connection: same database, same sandbox), outside the store's
    lock, so a long query never holds up the writer. At most ``MAX_CONCURRENT`` at once."""

    def __init__(
        self, store: AnalyticsStore, *, concurrency: int = MAX_CONCURRENT, max_bytes: int = MAX_RESULT_BYTES
    ) -> None:
        self.store = store
        self.max_bytes = max_bytes
        self.concurrency = concurrency
        self._slots = asyncio.Semaphore(concurrency)
        self._running: set[duckdb.DuckDBPyConnection] = set()

    async def query(
        self,
        sql: str,
        *,
        max_rows: int = DEFAULT_MAX_ROWS,
        timeout: float = DEFAULT_TIMEOUT,
        gone: Callable[[], bool] | None = None,
        started: float | None = None,
    ) -> SqlResult:
        """Run ``sql``; ``gone``: whether the caller has left, looked at every
        :data:`GONE_EVERY` seconds (aiohttp does not cancel a handler whose client left: a
        query abandoned so ran to its timeout, holding one of the slots; a re-test)."""
        loop = asyncio.get_running_loop()
        # ``started``: when the request came (the loop's clock), when it did other work first
        deadline = (loop.time() if started is None else started) + timeout
        try:
            # the time limit counts from the request: a query behind two long ones waited for
            # their end, past its own limit, holding its connection (a review: 19.5 s for 1 s)
            async with asyncio.timeout_at(deadline):
                await self._slots.acquire()
        except TimeoutError:
            raise SqlBusy(
                f"the query waited {timeout:g} s for one of the {self.concurrency} query slots, which other queries "
                "held, and was not run: try again later"
            ) from None
        try:
            cursor = await self.store.run(lambda conn: conn.cursor())
            self._running.add(cursor)
            left = max(0.001, deadline - loop.time())
            work = asyncio.ensure_future(
                asyncio.to_thread(
                    run_query,
                    cursor,
                    sql,
                    max_rows=max_rows,
                    timeout=left,
                    max_bytes=self.max_bytes,
                    asked_timeout=timeout,
                )
            )
            try:
                while True:  # asyncio.wait leaves ``work`` running when this is cancelled
                    done, _ = await asyncio.wait([work], timeout=None if gone is None else GONE_EVERY)
                    if done:
                        return work.result()
                    if gone is not None and gone():
                        raise ClientGone("the client left: its query was stopped")
            except (asyncio.CancelledError, ClientGone):
                cursor.interrupt()  # the caller left: stop the query, then let that through
                await asyncio.wait([work])
                if not work.cancelled():
                    work.exception()  # retrieved: the interrupt's SqlTimeout is expected
                raise
            finally:
                self._running.discard(cursor)
                cursor.close()
        finally:
            self._slots.release()

    def interrupt_all(self) -> None:
        """Stop every running query (shutdown): each raises :class:`SqlTimeout` at once."""
        for cursor in list(self._running):
            cursor.interrupt()
