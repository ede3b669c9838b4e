"""The DuckDB analytics store: one file, numbered migrations, one connection owned by one writer.

DuckDB lets one process open a database file for writing. The store owns that single
connection; async callers go through :meth:`AnalyticsStore.run`, which executes a function on
the connection in a worker thread (``asyncio.to_thread``) under an ``asyncio.Lock``, so the
event loop never blocks on DuckDB and two callers never share the connection at once.

``read_only=True`` opens an existing, migrated file without taking the write lock: that is how
the CLI reads analytics when no gateway or consumer process holds the file.

Migrations are ``NNNN_name.sql`` files in ``analytics/migrations/``, applied in order at open,
in one transaction, and recorded in ``schema_migrations``.

Sandbox: every store turns DuckDB's external access off right after connecting (``sandbox``):
SQL run on this database, by any connection or cursor of it, can read or write no file and
reach no network address, except under ``scratch_dir``, a private directory (0700) the writer
creates at open and removes at close (the DuckDB sink's batch files: ``<file>.scratch/`` beside
a database file, a temporary directory for ``:memory:``), and the directories
given as ``allowed_directories``. The setting belongs to the database instance, not to a
connection, and cannot be turned back on while the database is open. This is what lets
``analytics/sql.py`` run an operator's SQL next to the writer.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import shutil
import tempfile
import weakref
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from importlib.resources import files
from pathlib import Path
from typing import Any, TypeVar

import duckdb

log = logging.getLogger(__name__)

T = TypeVar("T")

MEMORY = ":memory:"
_MIGRATION_NAME = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")


@dataclass(frozen=True, slots=True)
class Migration:
    version: int
    name: str
    sql: str


def load_migrations(package: str, folder: str) -> list[Migration]:
    """The ``NNNN_name.sql`` files of a package folder, in version order (gaps are allowed,
    duplicate numbers are not)."""
    root = files(package).joinpath(folder)
    found: dict[int, Migration] = {}
    for entry in root.iterdir():
        match = _MIGRATION_NAME.match(entry.name)
        if match is None:
            continue
        version = int(match.group(1))
        if version in found:
            raise RuntimeError(f"two migrations numbered {version:04d} in {package}/{folder}")
        found[version] = Migration(version, match.group(2), entry.read_text(encoding="utf-8"))
    if not found:
        raise RuntimeError(f"no migrations found in {package}/{folder}")
    return [found[v] for v in sorted(found)]


def migrations() -> list[Migration]:
    return load_migrations("analytics", "migrations")


_BOOTSTRAP = """
CREATE TABLE IF NOT EXISTS schema_migrations (
    version    INTEGER PRIMARY KEY,
    name       VARCHAR NOT NULL,
    applied_at TIMESTAMPTZ NOT NULL DEFAULT current_timestamp
)
"""


def _fatal(exc: duckdb.Error) -> bool:
    """DuckDB invalidated the database: every later call on the connection fails."""
    return isinstance(exc, duckdb.FatalException) or "database has been invalidated" in str(exc)


class StoreError(RuntimeError):
    """The analytics file cannot be opened as asked (missing, not migrated, too new)."""


@contextlib.contextmanager
def transaction(conn: duckdb.DuckDBPyConnection) -> Iterator[duckdb.DuckDBPyConnection]:
    """``BEGIN`` ... ``COMMIT``, rolled back whole on any exception (which is re-raised: a failed
    rollback never hides it)."""
    conn.execute("BEGIN TRANSACTION")
    try:
        yield conn
        conn.execute("COMMIT")
    except BaseException:
        with contextlib.suppress(duckdb.Error):  # e.g. DuckDB already ended the transaction
            conn.execute("ROLLBACK")
        raise


def empty_tables(conn: duckdb.DuckDBPyConnection, *names: str) -> None:
    """Empty the tables ``names`` in the caller's transaction, each dropped and made again as it
    is (its columns, keys, indexes and comments). A ``DELETE`` of every row takes each row out
    of the primary key's index, in memory: a year of health history (2,005,924 rows) ran out of
    the default 128MB, after the facts had been emptied, so a ``replay --full`` left the costs at
    $0 and its resumption failed the same way at every try (a review); 2M rows took 37 s where
    it fits. Dropping takes milliseconds and no memory."""
    here = "table_name = ? AND schema_name = current_schema()"
    for name in names:
        found = conn.execute(f"SELECT sql, comment FROM duckdb_tables() WHERE {here}", [name]).fetchone()
        if found is None:
            raise duckdb.CatalogException(f"Catalog Error: Table with name {name} does not exist!")
        ddl, comment = found
        indexes = [row[0] for row in conn.execute(f"SELECT sql FROM duckdb_indexes() WHERE {here}", [name]).fetchall()]
        columns = conn.execute(
            f"SELECT column_name, comment FROM duckdb_columns() WHERE {here} AND comment IS NOT NULL", [name]
        ).fetchall()
        conn.execute(f"DROP TABLE {name}")
        conn.execute(ddl)
        for index in indexes:
            conn.execute(index)
        if comment is not None:
            conn.execute(f"COMMENT ON TABLE {name} IS {_literal(comment)}")
        for column, text in columns:
            conn.execute(f'COMMENT ON COLUMN {name}."{column}" IS {_literal(text)}')


def _literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def apply_migrations(conn: duckdb.DuckDBPyConnection, pending: Sequence[Migration]) -> list[int]:
    """Apply the migrations not yet recorded, in one transaction; returns the versions applied."""
    with transaction(conn):
        conn.execute(_BOOTSTRAP)
        applied = {row[0] for row in conn.execute("SELECT version FROM schema_migrations").fetchall()}
        known = {m.version for m in pending}
        unknown = sorted(applied - known)
        if unknown:
            raise StoreError(
                f"the analytics database has migrations {unknown} this version does not know: "
                "it was written by a newer llm-gateway. Run that version; or move the file aside, and "
                "this version fills a new one from the event log at start"
            )
        done = []
        for migration in pending:
            if migration.version in applied:
                continue
            conn.execute(migration.sql)
            conn.execute(
                "INSERT INTO schema_migrations (version, name) VALUES (?, ?)",
                [migration.version, migration.name],
            )
            done.append(migration.version)
    return done


def _check_migrated(conn: duckdb.DuckDBPyConnection, path: str) -> None:
    try:
        rows = conn.execute("SELECT version FROM schema_migrations").fetchall()
    except duckdb.CatalogException as e:
        raise StoreError(f"{path} is not an llm-gateway analytics database") from e
    missing = sorted({m.version for m in migrations()} - {r[0] for r in rows})
    if missing:
        raise StoreError(
            f"{path} lacks migrations {missing}: start the consumer (or the embedded gateway) once to migrate it"
        )


def sandbox(conn: duckdb.DuckDBPyConnection, allowed_directories: Sequence[str | Path] = ()) -> None:
    """Turn off file and network access for the whole database instance of ``conn``, except
    under ``allowed_directories``. Irreversible while the database is open."""
    dirs = [str(Path(d).resolve()).rstrip("/") + "/" for d in allowed_directories]
    conn.execute("SET allowed_directories = ?", [dirs])  # only settable before access is off
    conn.execute("SET enable_external_access = false")
    conn.execute("SET autoinstall_known_extensions = false")
    conn.execute("SET autoload_known_extensions = false")
    conn.execute("SET python_enable_replacements = false")


def _make_scratch(path: str) -> Path:
    """``<file>.scratch/`` beside a database file (one writer per file: reused after a crash,
    nothing piles up), else a fresh temporary directory."""
    if path == MEMORY:
        return Path(tempfile.mkdtemp(prefix="llm-gateway-duckdb-"))
    scratch = Path(path + ".scratch")
    scratch.mkdir(mode=0o700, exist_ok=True)
    scratch.chmod(0o700)
    return scratch


def _connect(path: str, *, read_only: bool, config: dict[str, str | int]) -> duckdb.DuckDBPyConnection:
    try:
        return duckdb.connect(path, read_only=read_only, config=dict(config))
    except (duckdb.ParserException, duckdb.InvalidInputException) as exc:  # e.g. an unreadable memory limit
        raise StoreError(f"analytics store settings {config}: {exc}") from exc


#: the most a store's queries spill to disk (DuckDB's ``max_temp_directory_size``)
MAX_SPILL = "4GB"


class AnalyticsStore:
    """One DuckDB database, opened for writing (default) or read-only; sandboxed (see above)."""

    def __init__(
        self,
        path: str | Path = MEMORY,
        *,
        read_only: bool = False,
        allowed_directories: Sequence[str | Path] = (),
        memory_limit: str | None = None,
        threads: int | None = None,
    ) -> None:
        """``memory_limit`` (DuckDB syntax, e.g. ``"128MB"``) bounds DuckDB's buffers in this
        process; larger queries spill to ``<file>.tmp`` (or the scratch directory in memory).
        ``None``: DuckDB's own default, 80% of the machine's RAM. ``threads``: DuckDB's worker
        threads (default: one per core)."""
        self.path = str(path)
        self.read_only = read_only
        self.allowed_directories = tuple(allowed_directories)
        self.config: dict[str, str | int] = {}
        if memory_limit is not None:
            self.config["memory_limit"] = memory_limit
        if threads is not None:
            self.config["threads"] = threads
        # what queries may spill to disk, next to the event log: DuckDB's default is 90% of the
        # free space, and one analyst's query wrote 5.6 GB in 25 s in a review
        self.config["max_temp_directory_size"] = MAX_SPILL
        self._conn: duckdb.DuckDBPyConnection | None = None
        #: the connection was dropped after a fatal error: ``run`` opens the file again
        self._invalidated = False
        self._scratch: Path | None = None
        self._lock = asyncio.Lock()

    @property
    def scratch_dir(self) -> Path:
        """The writer's private directory for files DuckDB reads (e.g. the sink's batches)."""
        if self._scratch is None:
            raise StoreError("the analytics store is not open for writing")
        return self._scratch

    @property
    def is_open(self) -> bool:
        return self._conn is not None

    # --- lifecycle ----------------------------------------------------------------------------
    def open_sync(self) -> None:
        """Connect and (writer) migrate; idempotent. Blocking: call from a thread or the CLI."""
        if self._conn is not None:
            return
        if self.read_only:
            if self.path == MEMORY or not Path(self.path).is_file():
                raise StoreError(f"no analytics database at {self.path}")
            conn = _connect(self.path, read_only=True, config=self.config)
        else:
            if self.path != MEMORY:
                Path(self.path).parent.mkdir(parents=True, exist_ok=True)
            conn = _connect(self.path, read_only=False, config=self.config)
        scratch = None if self.read_only else _make_scratch(self.path)
        if scratch is not None and self.path == MEMORY and "memory_limit" in self.config:
            conn.execute("SET temp_directory = ?", [str(scratch)])  # where an in-memory store spills
        if scratch is not None and self.path == MEMORY:  # a store never closed: removed at exit
            weakref.finalize(self, shutil.rmtree, str(scratch), True)
        try:
            sandbox(conn, [*([scratch] if scratch else []), *self.allowed_directories])
            conn.execute("SET TimeZone = 'UTC'")
            if self.read_only:
                _check_migrated(conn, self.path)
            else:
                applied = apply_migrations(conn, migrations())
                if applied:
                    log.info("analytics store %s: applied migrations %s", self.path, applied)
        except BaseException:
            conn.close()
            if scratch is not None:
                shutil.rmtree(scratch, ignore_errors=True)
            raise
        self._conn = conn
        self._scratch = scratch

    def close_sync(self) -> None:
        conn, self._conn = self._conn, None
        try:
            if conn is not None:
                conn.close()
        finally:
            if self._scratch is not None:
                shutil.rmtree(self._scratch, ignore_errors=True)
                self._scratch = None

    async def open(self) -> None:
        async with self._lock:
            if self._conn is None:
                await asyncio.to_thread(self.open_sync)

    async def close(self) -> None:
        async with self._lock:
            if self._conn is not None:
                await asyncio.to_thread(self.close_sync)

    # --- use ----------------------------------------------------------------------------------
    @property
    def connection(self) -> duckdb.DuckDBPyConnection:
        """The connection, for synchronous single-threaded callers (CLI, tests)."""
        if self._conn is None:
            raise StoreError("the analytics store is not open")
        return self._conn

    async def run(self, fn: Callable[[duckdb.DuckDBPyConnection], T]) -> T:
        """Run ``fn(connection)`` in a worker thread, alone on the connection. A connection
        DuckDB invalidated (a fatal error: a checkpoint on a full disk) is closed, and the file
        opened again at the next call (its write-ahead log replayed), instead of every call
        failing on it until a restart (a storage review)."""
        async with self._lock:
            if self._conn is None and self._invalidated:
                await asyncio.to_thread(self.open_sync)  # raises again while the cause lasts
                self._invalidated = False
                log.warning("analytics store %s: opened again after a fatal error", self.path)
            conn = self.connection
            work = asyncio.ensure_future(asyncio.to_thread(fn, conn))
            try:
                return await asyncio.shield(work)
            except asyncio.CancelledError:
                # a DuckDB call cannot be abandoned half-way: keep the connection to ourselves
                # until the thread is done, then let the cancellation through
                await asyncio.wait([work])
                raise
            except duckdb.Error as exc:
                if _fatal(exc):
                    log.error("analytics store %s: %s; it is opened again at the next use", self.path, exc)
                    self._invalidated = True
                    await asyncio.to_thread(self._drop_connection)
                raise

    def _drop_connection(self) -> None:
        with contextlib.suppress(duckdb.Error):  # an invalidated connection may refuse to close
            self.close_sync()

    async def fetchall(self, sql: str, params: Sequence[Any] | None = None) -> list[tuple[Any, ...]]:
        return await self.run(lambda conn: conn.execute(sql, params).fetchall())

    async def schema_version(self) -> int:
        rows = await self.fetchall("SELECT coalesce(max(version), 0) FROM schema_migrations")
        return int(rows[0][0])
