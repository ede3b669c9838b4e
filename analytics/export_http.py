"""``POST /v1/analytics/export``: the usage facts as Parquet files, one a UTC day, written by the
process that owns the analytics store into its export directory (``export_dir``; see
analytics/parquet_export.py). For admin keys only: the files hold every tenant's usage.

Request (JSON, every field optional): ``{"from": "2026-11-01", "to": "2026-11-30"}``, UTC days,
both inclusive; without them, every day the store holds. Response: ``{"object": "list",
"directory": <the export directory>, "data": [{"day", "path", "rows", "costUsd",
"unpricedCalls", "bytes"}]}``, a day whose facts are gone with ``path: null`` (its old file
removed). The directory is the server's setting, never the request's: a key cannot make the
gateway write elsewhere.
"""

from __future__ import annotations

import asyncio
from datetime import date
from pathlib import Path
from typing import Any

import duckdb
from aiohttp import web

from analytics.http import STORE, AnalyticsUnavailable, admin_only
from analytics.parquet_export import ExportDirTaken, export_range
from analytics.store import StoreError
from gateway.api.expect import add_post
from gateway.api.json_body import json_body
from gateway.errors import GatewayError, InvalidRequest

PATH = "/v1/analytics/export"
EXPORT_DIR: web.AppKey[Path] = web.AppKey("analytics_export_dir", Path)
#: one export at a time per process (two would write the same days twice over)
_LOCK: web.AppKey[asyncio.Lock] = web.AppKey("analytics_export_lock", asyncio.Lock)
FIELDS = ("from", "to")


class ExportRefused(GatewayError):
    """The store cannot be exported now (being rebuilt), or not into this directory."""

    status = 409
    type = "invalid_request_error"
    code = "export_refused"


class ExportFailed(GatewayError):
    """The export directory could not be written (missing, a file, a full disk, no permission)."""

    status = 503
    type = "server_error"
    code = "export_failed"


async def export_parquet(request: web.Request) -> web.Response:
    admin_only(request, "the Parquet export needs an admin API key: its files hold every tenant's usage")
    first, last = parse_days(await json_body(request, empty={}))
    directory = request.app[EXPORT_DIR]
    # a replay or the retention trim: their lock; a store being filled from the log: its days are
    # partial (an export during a `replay --full` replaced ten good days with a tenth of their
    # rows and answered 200: a review)
    from consumers.replay_http import REPLAY

    service = request.app.get(REPLAY)
    lock = service.lock if service is not None else request.app[_LOCK]
    if lock.locked():
        raise ExportRefused(
            "a replay, the log's retention trim or another export runs in this process: try again later"
        )
    try:
        async with lock:
            if service is not None and not await service.answers_whole():
                raise ExportRefused(
                    "the analytics store is being filled from the log (a new store catching up, or a full "
                    "rebuild): its days are not whole yet; export once it is done (GET /healthz)"
                )
            days = await export_range(request.app[STORE], directory, first, last)
    except ExportDirTaken as exc:
        raise ExportRefused(str(exc), code="export_dir_taken") from exc
    except (OSError, duckdb.IOException) as exc:  # the directory gone, a file, full (DuckDB's write), not ours
        raise ExportFailed(f"cannot write the export directory {directory}: {exc}") from exc
    except (StoreError, duckdb.Error) as exc:  # a store not open, invalidated
        raise AnalyticsUnavailable(f"the export failed: {exc}") from exc
    body = {"object": "list", "directory": str(directory), "data": [day.to_dict() for day in days]}
    return web.json_response(body)


def parse_days(body: Any) -> tuple[date | None, date | None]:
    """``from`` and ``to`` of a request body (UTC days, inclusive, either left out)."""
    if not isinstance(body, dict):
        raise InvalidRequest('the request body must be a JSON object: {"from": "2026-11-01", "to": "2026-11-30"}')
    for name in body:
        if name not in FIELDS:
            raise InvalidRequest(
                f"Unrecognized request argument supplied: {name!r} (this endpoint reads from, to)",
                param=name,
                code="unknown_parameter",
            )
    first, last = parse_day("from", body.get("from")), parse_day("to", body.get("to"))
    if first and last and last < first:
        raise InvalidRequest("'to' must not be before 'from'", param="to")
    return first, last


def parse_day(name: str, value: object) -> date | None:
    """A UTC calendar day, ``YYYY-MM-DD``; None for none."""
    if value is None:
        return None
    if isinstance(value, str) and len(value) == 10 and value.isascii():
        try:
            return date.fromisoformat(value)
        except ValueError:
            pass
    raise InvalidRequest(f"'{name}' must be a UTC day as YYYY-MM-DD, got {value!r}", param=name)


def install_export(app: web.Application, directory: Path) -> None:
    """Add ``POST /v1/analytics/export`` to an app on which ``install_analytics`` put the store and
    the authenticator. ``directory``: the export directory, among the store's allowed ones."""
    app[EXPORT_DIR] = directory.absolute()  # the answer names it: not relative to the server's cwd
    app[_LOCK] = asyncio.Lock()
    add_post(app, PATH, export_parquet)
