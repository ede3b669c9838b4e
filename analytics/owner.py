"""Where the process that owns the analytics store listens, for the operator commands (`costs`,
`sql`, `replay`) run without ``--url``.

The embedded ``serve`` projects in its own process; with Kafka, or with ``serve --no-project``
next to ``llm-gateway consume`` on the same data dir, the consumer does (port 8081). The
commands ask each address in turn and take the first that answers with the endpoint (a gateway
whose projection runs elsewhere answers 404); only when none does they open the files.

They send the admin key there, so an address another local user listens on is not asked (on
Linux, where ``/proc/net/tcp`` says who holds a listening socket): while the gateway was down,
any user could bind its port and collect the key (a review).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import logging
import os
import sys
from collections.abc import Callable, Coroutine, Mapping
from pathlib import Path
from typing import Any, TypeVar

from gateway.settings import Settings
from gateway.urls import http_url_problem

log = logging.getLogger(__name__)

T = TypeVar("T")

#: the kernel's tables of TCP sockets: a listening socket's local port and owner's uid
TCP_TABLES = (Path("/proc/net/tcp"), Path("/proc/net/tcp6"))
_LISTEN = "0A"


def owner_hint(settings: Settings) -> str:
    """What the commands say when no address asked has the endpoint."""
    return (
        "the analytics store lives in the process that projects the events (the gateway in the embedded "
        f"mode, else `llm-gateway consume`, e.g. --url http://127.0.0.1:{settings.consume_port})"
    )


def service_url(value: str) -> str:
    """``--url``: an http(s) URL with a host (an argparse ``type``: anything else is a one-line
    usage error, where a bad URL was a traceback of the HTTP client; a review)."""
    if (problem := http_url_problem(value)) is not None:
        raise argparse.ArgumentTypeError(f"{value!r} {problem}; e.g. http://127.0.0.1:8080")
    return value


def read_directly(path: Path, urls: list[str]) -> None:
    """Say on stderr that the numbers come from the file, not from a running projector."""
    print(
        f"note: nothing at {' or '.join(urls) or 'the usual ports'} serves the analytics store: read {path} "
        "as of its last projection (events not projected yet are not in it)",
        file=sys.stderr,
    )


#: the analytics store a command run without ``--url`` means (:func:`store_id`), sent when the
#: data dir was given (``LLM_GATEWAY_DATA_DIR``, the config's ``data_dir``): a service that owns
#: another store answers 404, as one that has none, and the command asks the next address or
#: reads the file. A review's ``LLM_GATEWAY_DATA_DIR=<a restored copy> llm-gateway replay --full``
#: rebuilt the live gateway's store, and ``costs`` gave its numbers, without a word.
STORE_HEADER = "x-llm-store-id"


def store_id(path: str | Path) -> str:
    """A store's name for :data:`STORE_HEADER`: a digest of its file's absolute path (the path
    itself is not sent)."""
    return hashlib.sha256(str(Path(path).resolve()).encode()).hexdigest()[:32]


def store_headers(settings: Settings) -> dict[str, str]:
    """:data:`STORE_HEADER` for the commands' requests, when the data dir was given."""
    if "data_dir" not in settings.model_fields_set:
        return {}  # the default: whatever store the local service owns (a container's, say)
    from consumers.pipeline import analytics_path

    return {STORE_HEADER: store_id(analytics_path(settings))}


class Unreachable(Exception):
    """An address asked has no such service (nothing listens, or not the store's owner)."""


def ask_owner(
    settings: Settings,
    url: str | None,
    api_key: str | None,
    ask: Callable[[str, str | None, Mapping[str, str]], Coroutine[Any, Any, T]],
) -> tuple[T | None, list[str]]:
    """``ask(address, key, store headers)`` of ``--url``, else of each :func:`owner_urls` in
    turn (an :class:`Unreachable` one: the next); None when none answered, and the addresses
    asked. With ``--url``, one that cannot be reached ends the command."""
    urls = [url] if url else owner_urls(settings)
    for candidate in urls:
        try:
            store = {} if url else store_headers(settings)
            return asyncio.run(ask(candidate, api_key or settings.admin_key, store)), urls
        except Unreachable as exc:
            if url:
                raise SystemExit(f"cannot reach {candidate}: {exc}; {owner_hint(settings)}") from exc
    return None, urls


def read_file(settings: Settings, urls: list[str], command: str, read: Callable[[], Coroutine[Any, Any, T]]) -> T:
    """``read()`` from the store's file, when no address asked answered: said on stderr
    (:func:`read_directly`); a refused input, or a store that cannot be read (missing, locked by
    another process, a full disk), is one line and exit 1."""
    import duckdb

    from analytics.store import StoreError
    from consumers.pipeline import analytics_path
    from gateway.errors import InvalidRequest

    try:
        result = asyncio.run(read())
    except InvalidRequest as exc:
        raise SystemExit(f"llm-gateway {command}: {exc.message}") from exc
    except (StoreError, duckdb.Error, OSError) as exc:
        raise SystemExit(
            f"nothing at {' or '.join(urls) or 'the usual ports'} serves the analytics store (a gateway whose "
            f"projection runs in `llm-gateway consume` does not) and its file cannot be read: {exc}; "
            f"{owner_hint(settings)}"
        ) from exc
    read_directly(analytics_path(settings), urls)
    return result


def owner_urls(settings: Settings) -> list[str]:
    """The addresses to ask, the likelier owner first; not those another user listens on."""
    ports = (
        [settings.consume_port, settings.port]
        if settings.kafka_bootstrap_servers
        else [settings.port, settings.consume_port]
    )
    trusted = {os.getuid(), 0}
    with contextlib.suppress(OSError):  # the service's user, for root running the commands (sudo)
        trusted.add(os.stat(settings.data_dir).st_uid)
    urls = []
    for port in ports:
        owners = listener_uids(port)
        if owners and not owners <= trusted:
            log.warning("port %s is held by another user (uid %s): not asked, nor sent the key", port, sorted(owners))
            continue
        urls.append(f"http://127.0.0.1:{port}")
    return urls


def listener_uids(port: int) -> set[int]:
    """The uids of the sockets listening on ``port`` (none known: empty)."""
    uids: set[int] = set()
    for table in TCP_TABLES:
        try:
            lines = table.read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if len(fields) > 7 and fields[3] == _LISTEN and int(fields[1].rsplit(":", 1)[1], 16) == port:
                uids.add(int(fields[7]))
    return uids
