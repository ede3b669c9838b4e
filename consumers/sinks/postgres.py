"""The Postgres sink: the platform's ``"LLMUsage"`` table, one row per provider attempt.

Which rows: every attempt (all outcomes), with ``"outcome"`` and ``"billable"`` columns. The
cost is the event's, as is: attempts the provider did not bill carry 0, unpriced billable
attempts carry NULL (unknown, not free), so the platform's ``SUM("costUsd")`` per tenant stays
right while health and audit queries still see every attempt. ``"model"`` is the served model,
else the model the gateway asked the provider for.

Idempotent on ``"id"`` (= event id): ``INSERT ... ON CONFLICT ("id") DO UPDATE`` of the cost
and price version only, so a redelivered batch changes nothing and a replay with a new price
table (``--reprice``) re-costs history. Rows whose cost did not change are not rewritten. The
live projector's sink (``corrects=False``) inserts ``ON CONFLICT DO NOTHING``: a redelivery
never undoes a replay's correction.

Write path: each batch is COPYed into a per-connection temporary staging table, then
``INSERT ... SELECT ... ON CONFLICT`` into ``"LLMUsage"``, in one transaction. Measured with
``python -m tests.bench.sinks --compare --database-url ...`` on 10,000-row batches (local
Postgres 15, 2 shared cores): ~75k rows/s inserted, ~125k/s re-delivered, against ~45k for
``executemany`` and ~40k for ``INSERT ... SELECT FROM unnest($1::text[], ...)``.

- **Direct COPY while the table holds none of the events**: when ``"LLMUsage"`` was empty at
  start (or after :meth:`reset`) and has no ``"updatedAt"`` of the platform's, batches are
  COPYed straight into it, without the staging table and the upsert (about 2 µs less Postgres
  CPU per event). Plain inserts differ from the upsert only when a row with the same id exists,
  and then the COPY fails whole with a unique violation: that batch is upserted instead, and so
  is every later one (the sink stops trying).
- **CSV, not binary**: the rows are sent as CSV made by orjson (each row's values as a JSON array
  without its brackets: strings quoted, numbers bare, ``null`` unquoted = NULL, money as decimal
  text, times as ISO 8601 with their offset). Half the client CPU of asyncpg's binary record
  encoding (5.5 -> 2.9 µs per event, ~0.5 µs more in the server). That text is exactly the CSV
  Postgres reads as long as it holds no backslash (JSON escapes: quotes, control characters),
  every float is finite (orjson writes NaN as null) and every time has an offset Postgres reads
  as text (under 16 hours); a batch with any of those goes as binary records.

The connection pool lives between :meth:`start` and :meth:`close`. If the database is down,
``start`` raises ``SinkError`` and ``apply`` retries opening it, so a projector started during
an outage catches up once the database is back.
"""

from __future__ import annotations

import asyncio
import logging
import operator
from collections.abc import Sequence
from datetime import UTC, timedelta
from typing import Any

import asyncpg
import orjson

from consumers.migrations import NewerSchema, migrate_postgres, quote_ident
from consumers.sinks.base import RejectedEvents, SinkError, latest_by_id
from gateway.database_url import dsn_options
from gateway.events import UsageEvent

log = logging.getLogger(__name__)

TABLE_NAME = "LLMUsage"
TABLE = f'"{TABLE_NAME}"'
STAGE = "_llmusage_stage"

#: "LLMUsage" columns written by the sink, in COPY order
COLUMNS = (
    "id", "tenantId", "provider", "model", "promptTokens", "completionTokens", "totalTokens",
    "costUsd", "createdAt", "requestId", "attempt", "outcome", "requestedModel", "providerModel",
    "httpStatus", "errorCode", "latencyMs", "ttftMs", "cachedTokens", "cacheCreationTokens",
    "cacheCreation1hTokens", "reasoningTokens", "priceVersion", "billable", "incomplete", "stream", "endpoint",
    "apiKeyId", "gatewayInstance", "metadata",
)  # fmt: skip
_REPRICED = ('"costUsd"', '"priceVersion"')
_QUOTED = ", ".join(f'"{c}"' for c in COLUMNS)

#: the staging table: the sink's columns of "LLMUsage", their types and nothing else. ``LIKE``
#: copied every column with its NOT NULL but not its default, so a platform column such as
#: Prisma's ``"updatedAt" ... NOT NULL DEFAULT CURRENT_TIMESTAMP`` refused every staged row
CREATE_STAGE = (
    f"CREATE TEMPORARY TABLE IF NOT EXISTS {STAGE} ON COMMIT DELETE ROWS AS SELECT {_QUOTED} FROM {TABLE} WITH NO DATA"
)
#: the platform's ``"updatedAt"`` (Prisma's ``@updatedAt``), when its table has one: the time a
#: row was last written. Prisma sets it in its client, so `prisma migrate` gives the column no
#: default (``"updatedAt" TIMESTAMP(3) NOT NULL``): left to its default, every insert failed and
#: the projection paused for good; and a repriced row kept the time it was first written, so a
#: platform's sync of changed rows (``WHERE "updatedAt" > last_sync``) never saw the correction
UPDATED_AT = '"updatedAt"'


def merge_from_stage(*, corrects: bool, updated_at: bool) -> str:
    """The statement that moves the staged batch into the table. ``corrects``: a stored row
    takes the batch's cost and price version (only if they differ); else it is kept as stored.
    ``updated_at``: the table has ``"updatedAt"``, set to the transaction's time on every row
    this writes (and only those)."""
    columns, values = _QUOTED, _QUOTED
    if updated_at:
        columns, values = f"{_QUOTED}, {UPDATED_AT}", f"{_QUOTED}, now()"
    insert = f'INSERT INTO {TABLE} ({columns}) SELECT {values} FROM {STAGE} ON CONFLICT ("id") DO '
    if not corrects:
        return insert + "NOTHING"
    updated = (*_REPRICED, UPDATED_AT) if updated_at else _REPRICED
    return (
        insert
        + "UPDATE SET "
        + ", ".join(f"{c} = EXCLUDED.{c}" for c in updated)
        + " WHERE "
        + " OR ".join(f"{TABLE}.{c} IS DISTINCT FROM EXCLUDED.{c}" for c in _REPRICED)
    )


IS_EMPTY = f"SELECT NOT EXISTS (SELECT 1 FROM {TABLE})"
#: the time types of "createdAt" and "updatedAt", as the table has them (the platform's, made by
#: an ORM): ``timestamp`` (without time zone) or ``timestamptz``, absent when the column is not
#: there or is of another type
TIME_COLUMNS = (
    "SELECT attname, CASE atttypid WHEN 'timestamp'::regtype THEN 'timestamp' ELSE 'timestamptz' END "
    f"FROM pg_attribute WHERE attrelid = to_regclass('{TABLE}') AND attname IN ('createdAt', 'updatedAt') "
    "AND NOT attisdropped AND atttypid IN ('timestamp'::regtype, 'timestamptz'::regtype)"
)
#: the Sink's ``reset``: the gateway's rows (they carry a request id), not rows other writers of
#: the platform's table may have put there. A replay --full does not use it: other gateways' logs
#: may share the table, so it has the sink forget its own store's events (FORGET, ``SharedSink``)
RESET = f'DELETE FROM {TABLE} WHERE "requestId" IS NOT NULL'
FORGET = f'DELETE FROM {TABLE} WHERE "id" = ANY($1::text[])'


def row(event: UsageEvent, *, naive_utc: bool = False) -> tuple[Any, ...]:
    """The "LLMUsage" row of one event, in :data:`COLUMNS` order. ``naive_utc``: its time as
    UTC without a zone, for a ``"createdAt"`` that is a ``timestamp`` without time zone (an ORM's
    ``DateTime``)."""
    created = event.created_at
    if naive_utc:
        created = created.astimezone(UTC).replace(tzinfo=None) if created.tzinfo is not None else created
    return (
        event.event_id,
        event.tenant_id,
        _text(event.provider),
        _text(event.served_model or event.provider_model),
        event.prompt_tokens,
        event.completion_tokens,
        event.total_tokens,
        event.cost_usd,
        created,
        event.request_id,
        event.attempt,
        event.outcome,
        _text(event.requested_model),
        _text(event.provider_model),
        event.http_status,
        _text(event.error_code),
        event.latency_ms,
        event.ttft_ms,
        event.cached_tokens,
        event.cache_creation_tokens,
        event.cache_creation_1h_tokens,
        event.reasoning_tokens,
        _text(event.price_version),
        event.billable,
        event.incomplete,
        event.stream,
        event.endpoint,
        _text(event.api_key_id),
        _text(event.gateway_instance),
        orjson.dumps(event.metadata).decode() if event.metadata else "{}",
    )


#: UsageEvent fields copied as they are, and the "LLMUsage" column each goes to (CSV order)
_AS_IS = {
    "event_id": "id", "tenant_id": "tenantId", "provider": "provider", "prompt_tokens": "promptTokens",
    "completion_tokens": "completionTokens", "total_tokens": "totalTokens", "created_at": "createdAt",
    "request_id": "requestId", "attempt": "attempt", "outcome": "outcome", "requested_model": "requestedModel",
    "provider_model": "providerModel", "http_status": "httpStatus", "error_code": "errorCode",
    "latency_ms": "latencyMs", "ttft_ms": "ttftMs", "cached_tokens": "cachedTokens",
    "cache_creation_tokens": "cacheCreationTokens", "cache_creation_1h_tokens": "cacheCreation1hTokens",
    "reasoning_tokens": "reasoningTokens",
    "price_version": "priceVersion", "billable": "billable", "incomplete": "incomplete", "stream": "stream",
    "endpoint": "endpoint", "api_key_id": "apiKeyId", "gateway_instance": "gatewayInstance",
}  # fmt: skip
#: "LLMUsage" columns in the order of a :func:`csv_rows` row: the fields above, the two computed,
#: then the metadata (a JSON object, in a quoted CSV field)
CSV_COLUMNS = (*_AS_IS.values(), "model", "costUsd", "metadata")
_fields_as_is = operator.itemgetter(*_AS_IS)
_COPY_CSV = {"format": "csv", "null": "null"}
#: the widest UTC offset Postgres reads in a time's text
_TEXT_OFFSET = timedelta(hours=16)


def csv_rows(events: Sequence[UsageEvent], *, naive_utc: bool = False) -> bytes | None:
    """The "LLMUsage" rows of ``events`` as Postgres CSV (:data:`CSV_COLUMNS`), or None when
    some value cannot travel that way (see the module docstring): then use :func:`row`.
    ``naive_utc``: ``"createdAt"`` has no time zone, and Postgres drops the offset of a time it
    reads for such a column: only UTC times travel as text."""
    lines: list[bytes] = []
    escapes = 0  # the backslashes of the metadata's JSON, which is read by jsonb, not by CSV
    try:
        for event in events:
            fields = event.__dict__
            latency, ttft, cost = fields["latency_ms"], fields["ttft_ms"], fields["cost_usd"]
            # x - x is 0.0 for a finite float, NaN (true) for NaN and the infinities
            created = fields["created_at"]
            if latency - latency or (ttft is not None and ttft - ttft) or created.tzinfo is None:
                return None
            # Postgres reads an offset of at most 15:59 as text (a record's +16:00 was refused
            # as CSV and stored as binary, by what shared its batch)
            if (offset := created.utcoffset()) and (naive_utc or not -_TEXT_OFFSET < offset < _TEXT_OFFSET):
                return None
            model = fields["served_model"] or fields["provider_model"]
            money = None if cost is None else str(cost)  # exact decimal text (maybe with an exponent)
            if not (metadata := fields["metadata"]):  # {} as a CSV field of its own: "{}"
                lines.append(orjson.dumps((*_fields_as_is(fields), model, money, "{}"), option=orjson.OPT_UTC_Z)[1:-1])
                continue
            # its JSON in a quoted CSV field, quotes doubled; the rows keep the batch's order (a
            # platform's own serial column numbers them)
            text = orjson.dumps(metadata)
            escapes += text.count(b"\\")
            line = orjson.dumps((*_fields_as_is(fields), model, money), option=orjson.OPT_UTC_Z)[1:-1]
            lines.append(line + b',"' + text.replace(b'"', b'""') + b'"')
    except orjson.JSONEncodeError:  # an integer beyond 64 bits, a string that is not UTF-8
        return None
    data = b"\n".join(lines)
    # a backslash elsewhere is a JSON escape CSV would keep as it is (one scan, in C)
    return None if data.count(b"\\") != escapes else data


#: errors caused by the rows themselves (SQLSTATE classes 22 and 23, or a number the binary
#: COPY cannot encode, e.g. 2**31 tokens for an INTEGER column): retrying cannot help
_DATA_ERRORS = (
    asyncpg.DataError,
    asyncpg.IntegrityConstraintViolationError,
    asyncpg.ProgramLimitExceededError,  # an index row too large: a value, not the server (54000)
    OverflowError,
)
#: the sink's table, schema or one of its columns does not exist (any more): migrate again
_SCHEMA_GONE = (asyncpg.UndefinedTableError, asyncpg.InvalidSchemaNameError, asyncpg.UndefinedColumnError)
#: everything else the driver raises means "not now": connection lost, server starting, ...
_DRIVER_ERRORS = (
    OSError,
    TimeoutError,
    asyncpg.PostgresError,
    asyncpg.InterfaceError,
    asyncpg.InternalClientError,
)


#: milliseconds a sink's transaction may sit idle before the server ends it (a batch's
#: statements follow each other at once; only a hung process leaves one idle this long)
IDLE_IN_TRANSACTION_MS = 30_000

#: how long closing waits for the pool's connections before it drops them
CLOSE_SECONDS = 2.0


class PostgresSink:
    name = "postgres"

    def __init__(
        self,
        dsn: str,
        *,
        schema: str | None = None,
        min_size: int = 0,
        max_size: int = 2,
        connect_timeout: float = 10.0,
        command_timeout: float = 60.0,
        corrects: bool = True,
    ) -> None:
        """``schema``: put the table in this schema (created if missing) instead of the
        connection's default search path. ``min_size`` 0: connections are opened on demand
        (a pool with a floor keeps reconnecting, and logging tracebacks, during an outage).
        ``corrects``: a stored row takes the batch's cost (a replay's sinks); False: it is kept
        as stored (the live projector's, see ``consumers.sinks.base``)."""
        options = dsn_options(dsn)
        self._dsn = options.dsn
        self._application_name = options.application_name or "llm-gateway-consumer"
        self._corrects = corrects
        self._merge = merge_from_stage(corrects=corrects, updated_at=False)
        self._schema = schema or options.schema
        self._min_size = min_size
        self._max_size = max_size
        self._connect_timeout = options.connect_timeout or connect_timeout
        self._command_timeout = command_timeout
        self._pool: asyncpg.Pool | None = None
        self._lock = asyncio.Lock()
        #: COPY straight into the table (it holds none of the events yet; see the module docstring)
        self._direct = False
        #: "createdAt" is a ``timestamp`` without time zone: times are written as UTC without one
        self._naive_utc = False
        #: the table has the platform's "updatedAt": written with each row (never by a direct COPY)
        self._updated_at = False

    @property
    def direct(self) -> bool:
        """Batches go in as plain inserts (the table held none of the events so far)."""
        return self._direct

    # --- lifecycle ----------------------------------------------------------------------------
    async def start(self) -> None:
        await self._ready()

    async def close(self) -> None:
        async with self._lock:
            pool, self._pool = self._pool, None
        if pool is not None:
            try:  # graceful, but bounded: a connection to a server that hangs held a stop ~10 s
                await asyncio.wait_for(pool.close(), CLOSE_SECONDS)
            except TimeoutError:
                pool.terminate()

    # --- the port -----------------------------------------------------------------------------
    async def apply(self, events: Sequence[UsageEvent]) -> None:
        if not events:
            return
        batch = latest_by_id(events)
        pool = await self._ready()
        naive = self._naive_utc
        data = csv_rows(batch, naive_utc=naive)
        try:
            async with pool.acquire(timeout=self._connect_timeout) as conn:
                if self._direct:
                    try:
                        async with conn.transaction():
                            await _copy(conn, TABLE_NAME, batch, data, naive)
                        return
                    except asyncpg.UniqueViolationError:
                        self._direct = False
                        log.info("postgres: %s holds some of the events: upserting from now on", TABLE)
                async with conn.transaction():
                    await _copy(conn, STAGE, batch, data, naive)
                    await conn.execute(self._merge)
        except asyncpg.NotNullViolationError as e:
            column = getattr(e, "column_name", None)
            if column in COLUMNS:
                # one of the sink's columns, NOT NULL in the platform's table (Prisma's
                # ``costUsd Decimal``), and an event without that value (an unpriced call): that
                # event cannot be stored here. Dead-lettered alone (the batch is bisected); it
                # paused the projection for every tenant (a re-test)
                raise RejectedEvents(
                    self.name,
                    f'{TABLE}."{column}" is NOT NULL in this table, and the event has no value for it '
                    "(an unpriced call has no cost): allow NULL there, or price the model and replay",
                ) from e
            # a NOT NULL column the sink does not write, without a default: every event fails
            # alike. A schema problem, not bad events: pause until an operator fixes it (the
            # message only: its detail is the failing row, a tenant's call). The table is read
            # again at the next try: the column may be an "updatedAt" added since the start
            # (Prisma's), which the sink writes once it knows it
            await self._drop_pool()
            raise SinkError(self.name, f"{type(e).__name__}: {_message(e)}") from e
        except _DATA_ERRORS as e:
            raise RejectedEvents(self.name, f"{type(e).__name__}: {e}") from e
        except TypeError as e:
            # the driver cannot encode a value for the type a column has in the platform's table
            # (a schema problem: every event would fail the same, so pause, not dead-letter)
            raise SinkError(self.name, f"a column of {TABLE} does not take the sink's values: {e}") from e
        except _SCHEMA_GONE as e:
            # the table (or its schema) is gone: the database was recreated or restored empty.
            # Open a fresh pool, which migrates first, on the next try (the pool outlived the
            # database, so the projector stayed paused on "relation does not exist" for good)
            await self._drop_pool()
            raise SinkError(self.name, f"{type(e).__name__}: {e} (migrating again)") from e
        except _DRIVER_ERRORS as e:
            raise SinkError(self.name, f"{type(e).__name__}: {e}") from e

    async def _drop_pool(self) -> None:
        async with self._lock:
            pool, self._pool = self._pool, None
        if pool is not None:
            await pool.close()

    async def reset(self) -> None:
        pool = await self._ready()
        try:
            async with pool.acquire(timeout=self._connect_timeout) as conn:
                await conn.execute(RESET)
        except _DRIVER_ERRORS as e:
            raise SinkError(self.name, f"{type(e).__name__}: {e}") from e
        self._direct = not self._updated_at

    async def forget(self, event_ids: Sequence[str]) -> None:
        """Delete the rows of ``event_ids``: a full rebuild's reset of a table other gateways'
        logs may share (``reset`` empties it of every gateway's rows)."""
        if not event_ids:
            return
        pool = await self._ready()
        try:
            async with pool.acquire(timeout=self._connect_timeout) as conn:
                await conn.execute(FORGET, list(event_ids))
        except _DRIVER_ERRORS as e:
            raise SinkError(self.name, f"{type(e).__name__}: {e}") from e

    # --- internals ----------------------------------------------------------------------------
    async def _ready(self) -> asyncpg.Pool:
        """The pool, opened (and the schema migrated) on first use."""
        async with self._lock:
            if self._pool is not None:
                return self._pool
            try:
                await self._migrate()
                self._pool = await asyncpg.create_pool(
                    self._dsn,
                    min_size=self._min_size,
                    max_size=self._max_size,
                    timeout=self._connect_timeout,
                    command_timeout=self._command_timeout,
                    server_settings=self._server_settings(),
                    init=_create_stage,
                )
            except _DRIVER_ERRORS as e:
                raise SinkError(self.name, f"cannot open the database: {type(e).__name__}: {e}") from e
            except NewerSchema as e:
                # the projector pauses on it (in /healthz), the gateway serves on, the events wait
                # on the log until a version that knows the database projects them
                raise SinkError(self.name, str(e)) from e
            return self._pool

    async def _migrate(self) -> None:
        conn = await asyncpg.connect(
            self._dsn,
            timeout=self._connect_timeout,
            command_timeout=self._command_timeout,
            server_settings=self._server_settings(),
        )
        try:
            await migrate_postgres(conn, schema=self._schema, table=TABLE_NAME, columns=COLUMNS)
            times = dict(await conn.fetch(TIME_COLUMNS))
            self._naive_utc = times.get("createdAt") == "timestamp"
            self._updated_at = "updatedAt" in times
            self._merge = merge_from_stage(corrects=self._corrects, updated_at=self._updated_at)
            self._direct = not self._updated_at and bool(await conn.fetchval(IS_EMPTY))
        finally:
            await conn.close()

    def _server_settings(self) -> dict[str, str]:
        settings = {
            "application_name": self._application_name,
            # the platform's own defaults (Prisma's ``"updatedAt" ... DEFAULT CURRENT_TIMESTAMP``
            # on a timestamp without zone, read back as UTC) come out in UTC, as "createdAt" does,
            # whatever zone the database or role is set to (a re-test: 14 hours apart)
            "TimeZone": "UTC",
            # a member that hangs mid-batch (SIGSTOP, a VM paused) holds its transaction's row
            # locks, and the member given its partitions waited on them for good, its health
            # blaming Postgres (a review: 5 minutes until the hung process was continued). The
            # server ends such a transaction; its batch was not committed and comes again
            "idle_in_transaction_session_timeout": str(IDLE_IN_TRANSACTION_MS),
        }
        if self._schema is not None:
            settings["search_path"] = quote_ident(self._schema)
        return settings


async def _copy(
    conn: asyncpg.Connection, table: str, batch: Sequence[UsageEvent], data: bytes | None, naive_utc: bool
) -> None:
    """COPY the batch into ``table``: its CSV ``data``, else (None) binary records."""
    if data is not None:
        await conn.copy_to_table(table, source=memoryview(data), columns=CSV_COLUMNS, **_COPY_CSV)
    else:
        records = [row(e, naive_utc=naive_utc) for e in batch]
        await conn.copy_records_to_table(table, records=records, columns=COLUMNS)


async def _create_stage(conn: asyncpg.Connection) -> None:
    await conn.execute(CREATE_STAGE)


def _message(error: asyncpg.PostgresError) -> str:
    """The server's message without its detail (which may quote a whole row)."""
    message = getattr(error, "message", None)
    if message:
        return str(message)
    return str(error.args[0]) if error.args else type(error).__name__


def _text(value: str | None) -> str | None:
    """Postgres text cannot hold NUL characters; provider error strings sometimes do, and a
    model name is the client's or the upstream's. Refused, the event was in DuckDB and not
    here; the ids and the tenant, keys, are refused before any sink (``UsageEvent.from_json``)."""
    return value.replace("\x00", "") if value is not None and "\x00" in value else value
