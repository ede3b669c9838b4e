"""What a PostgreSQL URL says beyond what asyncpg reads itself: a Prisma URL's schema and client
parameters, which asyncpg would send the server as settings (refused: "unrecognized
configuration parameter"). Read by the settings (a PgBouncer URL is refused at start) and by the
Postgres sink."""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import parse_qsl, quote, urlencode, urlsplit, urlunsplit

#: query parameters of a Prisma database URL (or libpq's) that are the client's, not the server's:
#: asyncpg sends the ones it does not know to the server as settings, which refused the
#: connection ("unrecognized configuration parameter"). The pool's size and timeouts are the sink's.
CLIENT_PARAMETERS = frozenset(
    {
        "connection_limit",
        "pool_timeout",
        "socket_timeout",
        "sslaccept",
        "sslidentity",
        "max_connection_lifetime",
        "max_idle_connection_lifetime",
        "statement_cache_size",
        "pgbouncer",
    }
)


@dataclass(frozen=True)
class DsnOptions:
    """What a database URL says beyond what asyncpg reads itself."""

    #: the URL without the client's parameters
    dsn: str
    #: Prisma's ``?schema=``: the table's schema
    schema: str | None = None
    application_name: str | None = None
    #: libpq's and Prisma's ``connect_timeout`` (seconds)
    connect_timeout: float | None = None
    #: Prisma's ``pgbouncer=true``: the URL is a PgBouncer's (refused by ``gateway.settings``)
    pgbouncer: bool = False


def dsn_options(dsn: str) -> DsnOptions:
    parts = urlsplit(dsn)
    if not parts.query:
        return DsnOptions(dsn)
    found: dict[str, str] = {}
    kept = []
    for name, value in parse_qsl(parts.query, keep_blank_values=True):
        if name in ("schema", "connect_timeout") or name in CLIENT_PARAMETERS:
            found[name] = value
            continue
        if name == "application_name":
            found[name] = value
        kept.append((name, value))
    try:
        timeout = float(found["connect_timeout"]) if found.get("connect_timeout") else None
    except ValueError:
        timeout = None
    return DsnOptions(
        dsn=urlunsplit(parts._replace(query=urlencode(kept, quote_via=quote))),
        schema=found.get("schema") or None,
        application_name=found.get("application_name"),
        connect_timeout=timeout if timeout is not None and timeout > 0 else None,
        pgbouncer=found.get("pgbouncer", "").lower() == "true",
    )
