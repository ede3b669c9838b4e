"""Numbered Postgres migrations (``postgres/NNNN_name.sql``), applied at start and recorded.

All pending migrations run in one transaction that first takes a transaction-scoped advisory
lock, so consumers starting together apply them once: the second waits, then finds nothing
pending. Applied versions are recorded in ``gateway_schema_migrations`` (not the generic
``schema_migrations``: the platform's database may already have one of those, owned by
another migration tool with another shape).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from analytics.store import Migration, load_migrations

if TYPE_CHECKING:
    import asyncpg

log = logging.getLogger(__name__)

MIGRATIONS_TABLE = "gateway_schema_migrations"
#: pg_advisory_xact_lock key of the migration step (any constant; "llm-gw" in ASCII)
ADVISORY_LOCK_KEY = 0x6C6C6D2D6777

_BOOTSTRAP = f"""
CREATE TABLE IF NOT EXISTS {MIGRATIONS_TABLE} (
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
    conn: asyncpg.Connection, pending: list[Migration] | None = None, *, schema: str | None = None
) -> list[int]:
    """Apply the migrations not yet recorded; returns the versions applied now. ``schema``:
    create it first if missing (the connection's search path must point at it)."""
    todo = postgres_migrations() if pending is None else pending
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock($1)", ADVISORY_LOCK_KEY)
        if schema is not None:
            await conn.execute(f"CREATE SCHEMA IF NOT EXISTS {quote_ident(schema)}")
        await conn.execute(_BOOTSTRAP)
        applied = {row["version"] for row in await conn.fetch(f"SELECT version FROM {MIGRATIONS_TABLE}")}
        unknown = sorted(applied - {m.version for m in todo})
        if unknown:
            raise NewerSchema(
                f"the database has gateway migrations {unknown} this version does not know: it was migrated "
                "by a newer llm-gateway, whose rows this one could rewrite (run that version)"
            )
        done = []
        for migration in todo:
            if migration.version in applied:
                continue
            await conn.execute(migration.sql)
            await conn.execute(
                f"INSERT INTO {MIGRATIONS_TABLE} (version, name) VALUES ($1, $2)",
                migration.version,
                migration.name,
            )
            done.append(migration.version)
    if done:
        log.info("postgres: applied migrations %s", done)
    return done
