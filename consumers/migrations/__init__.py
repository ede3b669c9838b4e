"""Numbered Postgres migrations (``postgres/NNNN_name.sql``), applied at start and recorded.

All pending migrations run in one transaction that first takes a transaction-scoped advisory
lock, so consumers starting together apply them once: the second waits, then finds nothing
pending. Applied versions are recorded in ``gateway_schema_migrations`` (not the generic
``schema_migrations``: the platform's database may already have one of those, owned by
another migration tool with another shape).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING

from analytics.store import Migration, load_migrations

if TYPE_CHECKING:
    import asyncpg

log = logging.getLogger(__name__)

MIGRATIONS_TABLE = "gateway_schema_migrations"
#: pg_advisory_xact_lock key of the migration step (any constant; "llm-gw" in ASCII)
ADVISORY_LOCK_KEY = 0x6C6C6D2D6777

_BOOTSTRAP = f"""
CREATE TABLE {MIGRATIONS_TABLE} (
    version    INTEGER PRIMARY KEY,
    name       TEXT NOT NULL,
    applied_at TIMESTAMPTZ NOT NULL DEFAULT now()
)
"""


def quote_ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def postgres_migrations() -> list[Migration]:
    return load_migrations("consumers", "migrations/postgres")


class NewerSchema(RuntimeError):
    """The database was migrated by a newer gateway."""


async def migrate_postgres(
    conn: asyncpg.Connection,
    pending: list[Migration] | None = None,
    *,
    schema: str | None = None,
    table: str | None = None,
    columns: Sequence[str] = (),
) -> list[int]:
    """Apply the migrations not yet recorded; returns the versions applied now. ``schema``:
    create it first if missing (the connection's search path must point at it).

    ``table`` and its ``columns``: the table the migrations make. When it is gone or lacks one
    of them (dropped, or made again by the platform with its own columns only), every migration
    is applied again, whatever is recorded: they are written to be (``IF NOT EXISTS``), and the
    record alone had kept a projector paused on "relation does not exist" for good.

    Nothing is created when nothing is pending, so a role without CREATE on the schema runs a
    database its owner migrated (``CREATE TABLE IF NOT EXISTS`` of the record asks for it even
    when the table exists)."""
    import asyncpg  # here: the module is read where no database is used

    todo = postgres_migrations() if pending is None else pending
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock($1)", ADVISORY_LOCK_KEY)
        if schema is not None and not await conn.fetchval(
            "SELECT to_regnamespace($1) IS NOT NULL", quote_ident(schema)
        ):
            await conn.execute(f"CREATE SCHEMA IF NOT EXISTS {quote_ident(schema)}")
        if not await conn.fetchval("SELECT to_regclass($1) IS NOT NULL", MIGRATIONS_TABLE):
            await conn.execute(_BOOTSTRAP)
        applied = {row["version"] for row in await conn.fetch(f"SELECT version FROM {MIGRATIONS_TABLE}")}
        unknown = sorted(applied - {m.version for m in todo})
        if unknown:
            raise NewerSchema(
                f"the database has gateway migrations {unknown} this version does not know: it was migrated "
                "by a newer llm-gateway, whose rows this one could rewrite (run that version)"
            )
        gone = table is not None and bool(applied) and await _lacks(conn, table, ())
        # the pending ones first (unless the table is gone): a column a pending migration adds is
        # no damage (every upgrade that added one warned "gone or lacks the gateway's columns").
        # In a savepoint: on a table that lacks an older migration's column, a pending one that
        # uses it fails, and then every migration runs again, in order
        done: list[int] = []
        failed = False
        if not gone:
            try:
                async with conn.transaction():
                    done = [await _apply(conn, m) for m in todo if m.version not in applied]
            except asyncpg.PostgresError:
                if table is None or not applied:
                    raise
                done, failed = [], True
        if table is not None and applied and (gone or failed or await _lacks(conn, table, columns)):
            log.warning("postgres: %s is gone or lacks the gateway's columns: applying every migration again", table)
            done += [await _apply(conn, m) for m in todo if m.version not in done]
            done.sort()
    if done:
        log.info("postgres: applied migrations %s", done)
    return done


async def _apply(conn: asyncpg.Connection, migration: Migration) -> int:
    """Run one migration and record it; its version."""
    await conn.execute(migration.sql)
    await conn.execute(
        f"INSERT INTO {MIGRATIONS_TABLE} (version, name) VALUES ($1, $2) ON CONFLICT (version) DO NOTHING",
        migration.version,
        migration.name,
    )
    return migration.version


async def _lacks(conn: asyncpg.Connection, table: str, columns: Sequence[str]) -> bool:
    """Whether ``table`` (in the search path) is missing or lacks one of ``columns``."""
    have = await conn.fetchval(
        "SELECT array_agg(attname::text) FROM pg_attribute WHERE attrelid = to_regclass($1) AND attnum > 0 "
        "AND NOT attisdropped",
        quote_ident(table),
    )
    return have is None or not set(columns) <= set(have)
