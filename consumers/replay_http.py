"""``POST /v1/admin/replay``: run a replay inside the process that owns the DuckDB store.

DuckDB admits one writer process. While ``llm-gateway serve`` (embedded mode) or
``llm-gateway consume`` runs, it owns ``analytics.duckdb``, so ``llm-gateway replay`` asks it to
replay instead of opening the file. The replay runs next to the live projector, on the same store
(their writes interleave batch by batch), with its own sinks: a fresh health view, its own
Postgres pool.

Request (JSON, admin key)::

    {"since": "2026-11-01T00:00:00Z", "fromPosition": null, "reprice": true, "full": false,
     "dryRun": false, "health": null, "prices": {<price file document>} | null}

``prices``: the price file to reprice with, as a document (:func:`price_document`; the CLI reads
and validates the operator's file and sends it, so the service need not see the file); absent:
the service's configured price file, read again now (the *current* price table).

Response: ``application/x-ndjson``, one JSON object per line: ``{"type": "progress", "done": n,
"total": m}`` a few times a second, then ``{"type": "result", "report": {...}}`` or
``{"type": "error", "message": "..."}``. One replay at a time per process (409 otherwise).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from analytics.store import AnalyticsStore
from consumers.replay import Replayer, ReplayError, ReplayOptions
from gateway.api.auth import Authenticator
from gateway.errors import GatewayError, InvalidRequest, PermissionDenied
from gateway.pricing.base import PriceBook
from gateway.pricing.pricefile import PriceFile, PriceFileError, parse_price_file
from gateway.settings import Settings

ROUTE = "/v1/admin/replay"
NDJSON = "application/x-ndjson"
PROGRESS_INTERVAL = 0.25


class ReplayBusy(GatewayError):
    status = 409
    type = "invalid_request_error"
    code = "replay_in_progress"


@dataclass
class ReplayService:
    settings: Settings
    store: AnalyticsStore
    auth: Authenticator
    live_group: str
    wait_for_live: float = 30.0
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)


REPLAY: web.AppKey[ReplayService] = web.AppKey("replay_service", ReplayService)


def install_replay(
    app: web.Application,
    settings: Settings,
    store: AnalyticsStore,
    auth: Authenticator,
    *,
    live_group: str,
    wait_for_live: float = 30.0,
) -> None:
    """Add ``POST /v1/admin/replay`` to an app whose lifecycle opens ``store`` and runs the
    projector of ``live_group`` (the replay waits for it to cover the range first)."""
    app[REPLAY] = ReplayService(settings, store, auth, live_group, wait_for_live)
    app.router.add_post(ROUTE, replay_handler)


# --- the price file as a request document ---------------------------------------------------------


def price_document(prices: PriceFile) -> dict[str, Any]:
    """A price file as a JSON document that :func:`parse_price_file` reads back to the same
    entries, label and version (rates as exact decimal text per 1K tokens)."""
    entries = []
    for entry in prices.entries:
        item: dict[str, Any] = {"model": entry.model, "provider": entry.provider or "*"}
        if entry.effective_from is not None:
            item["effective_from"] = entry.effective_from.isoformat()
        for name in ("input", "output", "cached_input", "cache_write"):
            value = getattr(entry.rate, name)
            if value is not None:
                item[f"{name}_per_1k"] = format(value, "f")
        entries.append(item)
    doc: dict[str, Any] = {"prices": entries}
    if prices.label is not None:
        doc["version"] = prices.label
    return doc


def book_from_document(doc: object) -> PriceBook:
    from gateway.pricing.book import CompositePriceBook

    return CompositePriceBook(parse_price_file(doc, source="the request's price file"))


# --- the handler --------------------------------------------------------------------------------


def options_from_body(body: object) -> ReplayOptions:
    from analytics.http import parse_time

    if not isinstance(body, dict):
        raise InvalidRequest("the body must be a JSON object")
    allowed = {"since", "fromPosition", "reprice", "full", "dryRun", "health", "prices"}
    unknown = sorted(set(body) - allowed)
    if unknown:
        raise InvalidRequest(f"unknown fields {unknown}; allowed: {sorted(allowed)}")
    for name in ("reprice", "full", "dryRun"):
        if not isinstance(body.get(name, False), bool):
            raise InvalidRequest(f"'{name}' must be a boolean", param=name)
    if body.get("health") is not None and not isinstance(body["health"], bool):
        raise InvalidRequest("'health' must be a boolean or null", param="health")
    for name in ("since", "fromPosition"):
        if body.get(name) is not None and not isinstance(body[name], str):
            raise InvalidRequest(f"'{name}' must be a string", param=name)
    options = ReplayOptions(
        since=parse_time("since", body.get("since")),
        from_position=body.get("fromPosition"),
        reprice=bool(body.get("reprice", False)) or body.get("prices") is not None,
        full=bool(body.get("full", False)),
        dry_run=bool(body.get("dryRun", False)),
        health=body.get("health"),
    )
    try:
        options.check()
    except ReplayError as e:
        raise InvalidRequest(_in_body_words(str(e))) from e
    return options


#: the CLI's flags, as the request body names them (ReplayOptions words its errors for the CLI)
_BODY_FIELDS = {"--from-position": "'fromPosition'", "--since": "'since'", "--full": "'full'", "--health": "'health'"}


def _in_body_words(message: str) -> str:
    for flag, name in _BODY_FIELDS.items():
        message = message.replace(flag, name)
    return message


async def replay_handler(request: web.Request) -> web.StreamResponse:
    service = request.app[REPLAY]
    principal = service.auth.authenticate(request)
    if not principal.admin:
        raise PermissionDenied("replaying the event log needs an admin API key")
    try:
        body = await request.json() if request.can_read_body else {}
    except ValueError as e:
        raise InvalidRequest(f"the body is not valid JSON: {e}") from e
    options = options_from_body(body)
    if options.from_position is not None:
        from consumers.replay_sources import ReplayRangeError, check_position

        try:
            check_position(service.settings, options.from_position)
        except ReplayRangeError as e:
            raise InvalidRequest(str(e), param="fromPosition") from e
    book: PriceBook | None = None
    if options.reprice:
        try:
            if body.get("prices") is not None:
                book = book_from_document(body["prices"])
            else:
                from gateway.pricing.book import load_price_book

                book = load_price_book(service.settings.price_file)
        except PriceFileError as e:
            raise InvalidRequest(str(e), param="prices") from e
    lock = service.lock
    if lock.locked():
        raise ReplayBusy("a replay is already running in this process")
    async with lock:
        return await _stream(request, service, options, book)


async def _stream(
    request: web.Request, service: ReplayService, options: ReplayOptions, book: PriceBook | None
) -> web.StreamResponse:
    from consumers.pipeline import build_sinks
    from consumers.replay_sources import build_replay_source

    response = web.StreamResponse(headers={"content-type": NDJSON, "cache-control": "no-store"})
    await response.prepare(request)
    state = {"done": 0, "total": 0}

    def progress(done: int, total: int) -> None:
        state["done"], state["total"] = done, total

    async def tick() -> None:
        while True:
            await asyncio.sleep(PROGRESS_INTERVAL)
            await _line(response, {"type": "progress", **state})

    replayer = Replayer(
        build_replay_source(service.settings),
        service.store,
        build_sinks(service.settings, service.store),
        price_book=book,
        progress=progress,
        live_group=service.live_group,
        wait_for_live=service.wait_for_live,
    )
    ticker = asyncio.create_task(tick(), name="replay-progress")
    try:
        report = await replayer.run(options)
    except ReplayError as e:
        message: dict[str, Any] = {"type": "error", "message": str(e)}
    else:
        message = {"type": "result", "report": report.to_dict()}
    finally:
        ticker.cancel()
        with contextlib.suppress(asyncio.CancelledError, ConnectionError):
            await ticker
    with contextlib.suppress(ConnectionError):  # the client left: the replay is done anyway
        await _line(response, message)
        await response.write_eof()
    return response


async def _line(response: web.StreamResponse, doc: dict[str, Any]) -> None:
    await response.write(json.dumps(doc).encode() + b"\n")


__all__ = ["REPLAY", "ROUTE", "book_from_document", "install_replay", "price_document", "replay_handler"]
