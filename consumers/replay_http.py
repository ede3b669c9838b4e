"""``POST /v1/admin/replay``: run a replay inside the process that owns the DuckDB store.

DuckDB admits one writer process. While ``llm-gateway serve`` (embedded mode) or
``llm-gateway consume`` runs, it owns ``analytics.duckdb``, so ``llm-gateway replay`` asks it to
replay instead of opening the file. The replay runs next to the live projector, on the same store
(their writes interleave batch by batch), with its own sinks: a fresh health view, its own
Postgres pool.

Request (JSON, admin key)::

    {"since": "2026-11-01T00:00:00Z", "fromPosition": null, "reprice": true, "full": false,
     "dropMissing": false, "dryRun": false, "health": null, "prices": {<price file document>} | null}

``prices``: the price file to reprice with, as a document (``gateway.pricing.pricefile.
price_document``; the CLI reads and validates the operator's file and sends it, so the service
need not see the file); absent: the service's configured price file, read again now (the
*current* price table).

Response: ``application/x-ndjson``, one JSON object per line: ``{"type": "progress", "done": n,
"total": m}`` a few times a second, then ``{"type": "result", "report": {...}}`` or
``{"type": "error", "message": "..."}``. One replay at a time per process (409 otherwise).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from analytics.http import check_store
from analytics.store import AnalyticsStore
from consumers import catch_up
from consumers.projector import ProjectorStats
from consumers.replay import PendingRebuild, Replayer, ReplayError, ReplayOptions, pending_rebuild
from gateway.api.auth import Authenticator
from gateway.api.expect import add_post
from gateway.api.json_body import json_body
from gateway.errors import GatewayError, InvalidRequest, PermissionDenied
from gateway.pricing.base import PriceBook
from gateway.pricing.pricefile import PriceFileError
from gateway.settings import Settings

log = logging.getLogger(__name__)

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
    #: a full rebuild found cut short at start, run again (see :func:`resume_rebuild`)
    resuming: asyncio.Task[None] | None = None
    #: the live projector's stats, where ``/healthz`` shows such a rebuild
    stats: ProjectorStats | None = None

    async def whole(self) -> bool:
        """Whether the store holds the log as far as it has read it: no new store catching up with
        it, no full rebuild pending or running (they read the log again from its start). The
        retention trim waits for it; costs, SQL and the Parquet export for :meth:`answers_whole`."""
        if (self.stats is not None and self.stats.catching_up) or (
            self.resuming is not None and not self.resuming.done()
        ):
            return False
        return not await catch_up.pending(self.store) and await pending_rebuild(self.store) is None

    async def answers_whole(self) -> bool:
        """Whether totals over the store count the whole log as far as it was read (``/v1/costs``,
        SQL, the Parquet export): :meth:`whole`, and a new store filled from the log's start with
        no position of its group has read it to its end once (:meth:`read_to_the_end`)."""
        if self.stats is not None and self.stats.filling and not self.read_to_the_end():
            return False
        return await self.whole()

    def read_to_the_end(self) -> bool:
        """Whether the live projector has read the log to its end once (``ProjectorStats.reached_end``):
        a new store filled from the log's start holds part of each day until then. The retention
        trim needs no such wait: it deletes only what every reader has projected."""
        return self.stats is None or self.stats.reached_end

    def replayer(self, book: PriceBook | None, progress: Any = None) -> Replayer:
        from consumers.pipeline import build_sinks
        from consumers.replay_sources import build_replay_source

        return Replayer(
            build_replay_source(self.settings),
            self.store,
            build_sinks(self.settings, self.store, live=False),
            price_book=book,
            progress=progress,
            live_group=self.live_group,
            wait_for_live=self.wait_for_live,
        )


REPLAY: web.AppKey[ReplayService] = web.AppKey("replay_service", ReplayService)


def install_replay(
    app: web.Application,
    settings: Settings,
    store: AnalyticsStore,
    auth: Authenticator,
    *,
    live_group: str,
    wait_for_live: float = 30.0,
    stats: ProjectorStats | None = None,
) -> None:
    """Add ``POST /v1/admin/replay`` to an app whose lifecycle opens ``store`` and runs the
    projector of ``live_group`` (the replay waits for it to cover the range first); ``stats``:
    that projector's, where ``/healthz`` shows a rebuild this process runs again."""
    app[REPLAY] = ReplayService(settings, store, auth, live_group, wait_for_live, stats=stats)
    add_post(app, ROUTE, replay_handler)
    # on_startup handlers run after the cleanup contexts have started (the store is open)
    app.on_startup.append(resume_rebuild)
    app.on_shutdown.append(_stop_resuming)


#: after a resumed rebuild failed for a reason that may pass (a store down for longer than the
#: replay's own retries, a bug), it runs again after this many seconds, doubled each time up to
#: RESUME_RETRY_MAX: the stores stay short of the log until it succeeds
RESUME_RETRY = 30.0
RESUME_RETRY_MAX = 600.0


async def resume_rebuild(app: web.Application) -> None:
    """Run again, in the background, a full rebuild that this store says was cut short (the
    process that ran it died after the stores were emptied): until it ends they miss part of the
    log, and the live projector, past it already, would never bring it back."""
    service = app[REPLAY]
    pending = await pending_rebuild(service.store)
    if pending is not None:
        log.warning(
            "a full rebuild of the stores (replay --full) begun %s was cut short: they miss part of the "
            "log; running it again now",
            pending.started_at.isoformat(),
        )
        service.resuming = asyncio.create_task(_resume(service, pending), name="rebuild-resume")


async def _resume_if_cut(service: ReplayService) -> bool:
    """After a full rebuild that failed once the stores were emptied (a store down past the
    replay's retries): run it again in the background until it succeeds, as at a start. It was
    left so until a restart: the costs answered $0 and ``/healthz`` said ok (a review)."""
    if service.resuming is not None and not service.resuming.done():
        return True
    try:
        pending = await pending_rebuild(service.store)
    except Exception:  # the store itself cannot say: the next start will
        log.exception("cannot tell whether the stopped full rebuild left the stores short")
        return False
    if pending is None:
        return False
    log.warning("the full rebuild stopped short: the stores miss part of the log; it runs again in the background")
    service.resuming = asyncio.create_task(_resume(service, pending), name="rebuild-resume")
    return True


async def _resume(service: ReplayService, pending: PendingRebuild) -> None:
    """Until it succeeds: the same rebuild with the same prices, shown in ``/healthz`` (``rebuild``
    under the projector) while it runs or waits to run again."""
    shown: dict[str, object] = {"state": "running", "begun": pending.started_at.isoformat(), "done": 0, "total": 0}

    def progress(done: int, total: int) -> None:
        shown["done"], shown["total"] = done, total

    if service.stats is not None:
        service.stats.rebuild = shown
    try:
        book = pending.price_book(service.settings.price_file)
    except (PriceFileError, ValueError) as e:  # the mark's prices no longer read: no retry can help
        log.error(
            "the interrupted full rebuild cannot run again: %s; run llm-gateway replay --full to rebuild the stores",
            e,
        )
        shown.update(state="failed", error=f"{e}; run llm-gateway replay --full")
        return
    delay = RESUME_RETRY
    while True:
        shown.update(state="running", error=None)
        try:
            async with service.lock:
                # another replay may have rebuilt the stores meanwhile (an operator's `replay
                # --full` during the wait): running this one then emptied them again and undid
                # its prices (a re-test)
                now_pending = await pending_rebuild(service.store)
                if now_pending is None:
                    log.info("the interrupted full rebuild is not pending any more: another replay did it")
                    if service.stats is not None:
                        service.stats.rebuild = None
                    return
                if now_pending.started_at != pending.started_at:  # a newer one, cut short too: its prices
                    pending, book = now_pending, now_pending.price_book(service.settings.price_file)
                    shown["begun"] = pending.started_at.isoformat()
                report = await service.replayer(book, progress).run(pending.options())
        except Exception as e:
            if isinstance(e, ReplayError):
                log.error("the interrupted full rebuild failed again (%s); trying again in %.0fs", e, delay)
            else:
                log.exception("the interrupted full rebuild failed again; trying again in %.0fs", delay)
            shown.update(state="failed", error=f"{type(e).__name__}: {e}", retryInSeconds=delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, RESUME_RETRY_MAX)
            continue
        for warning in report.warnings:
            log.warning("the interrupted full rebuild: %s", warning)
        log.info("the interrupted full rebuild is done: %d events in the stores again", report.events_applied)
        if service.stats is not None:
            service.stats.rebuild = None
        return


async def _stop_resuming(app: web.Application) -> None:
    task = app[REPLAY].resuming
    if task is not None and not task.done():
        task.cancel()  # the marker stays: the next start runs it again
        with contextlib.suppress(asyncio.CancelledError):
            await task


# --- the price file as a request document ---------------------------------------------------------


# --- the handler --------------------------------------------------------------------------------


def options_from_body(body: object) -> ReplayOptions:
    from analytics.http import parse_time

    if not isinstance(body, dict):
        raise InvalidRequest("the body must be a JSON object")
    allowed = {"since", "fromPosition", "reprice", "full", "dropMissing", "dryRun", "health", "prices"}
    unknown = sorted(set(body) - allowed)
    if unknown:
        raise InvalidRequest(f"unknown fields {unknown}; allowed: {sorted(allowed)}")
    for name in ("reprice", "full", "dropMissing", "dryRun"):
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
        drop_missing=bool(body.get("dropMissing", False)),
        dry_run=bool(body.get("dryRun", False)),
        health=body.get("health"),
    )
    try:
        options.check()
    except ReplayError as e:
        raise InvalidRequest(_in_body_words(str(e))) from e
    return options


#: the CLI's flags, as the request body names them (ReplayOptions words its errors for the CLI)
_BODY_FIELDS = {
    "--from-position": "'fromPosition'",
    "--since": "'since'",
    "--full": "'full'",
    "--health": "'health'",
    "--drop-missing": "'dropMissing'",
}


def _in_body_words(message: str) -> str:
    for flag, name in _BODY_FIELDS.items():
        message = message.replace(flag, name)
    return message


async def replay_handler(request: web.Request) -> web.StreamResponse:
    service = request.app[REPLAY]
    principal = service.auth.authenticate(request)
    if not principal.admin:
        raise PermissionDenied("replaying the event log needs an admin API key")
    check_store(request, service.store)
    body = await json_body(request, empty={})
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
                from gateway.pricing.book import book_from_document

                book = book_from_document(body["prices"])
            else:
                from gateway.pricing.book import load_price_book

                book = load_price_book(service.settings.price_file)
        except PriceFileError as e:
            raise InvalidRequest(str(e), param="prices") from e
    lock = service.lock
    if lock.locked():
        raise ReplayBusy(
            "a replay, the log's retention trim or a Parquet export is running in this process: try again later"
        )
    async with lock:
        return await _stream(request, service, options, book)


async def _stream(
    request: web.Request, service: ReplayService, options: ReplayOptions, book: PriceBook | None
) -> web.StreamResponse:
    response = web.StreamResponse(headers={"content-type": NDJSON, "cache-control": "no-store"})
    await response.prepare(request)
    state = {"done": 0, "total": 0}

    def progress(done: int, total: int) -> None:
        state["done"], state["total"] = done, total

    async def tick() -> None:
        while True:
            await asyncio.sleep(PROGRESS_INTERVAL)
            await _line(response, {"type": "progress", **state})

    replayer = service.replayer(book, progress)
    ticker = asyncio.create_task(tick(), name="replay-progress")
    try:
        report = await replayer.run(options)
    except ReplayError as e:
        message: dict[str, Any] = {"type": "error", "message": str(e)}
        if options.full and await _resume_if_cut(service):
            message["message"] += (
                "; the stores miss part of the log: the rebuild runs again in the background (/healthz)"
            )
    except Exception:  # a bug: the stores may be short all the same
        if options.full:
            await _resume_if_cut(service)
        raise
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


__all__ = ["REPLAY", "ROUTE", "install_replay", "replay_handler"]
