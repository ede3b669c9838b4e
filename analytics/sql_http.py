"""``POST /v1/analytics/sql``: read-only SQL over the analytics store, for admin keys only.

Request (JSON): ``{"sql": "SELECT ...", "maxRows": 1000, "timeoutSeconds": 30, "format": "json"}``;
only ``sql`` is required. ``format``: ``json`` (default) or ``csv``.

Response: ``json`` -> ``{"columns": [{"name", "type"}], "rows": [[...]], "rowCount", "truncated",
"maxRows", "elapsedMs"}`` with exact values (see analytics/sql.py); ``csv`` -> ``text/csv`` with a
header row, and the same facts in ``x-llm-sql-row-count`` / ``x-llm-sql-truncated`` headers.

Who may call it: an admin key (``api_keys`` entry with ``admin: true``); a tenant key gets 403,
since SQL sees every tenant's rows. A gateway without keys (local use) treats every caller as
admin, as for the rest of its API. Errors use the OpenAI error format: 400 with code
``sql_not_allowed`` (not one read-only query), ``sql_error`` (DuckDB refused it: syntax, unknown
column, ...), ``sql_timeout`` or ``sql_result_too_large`` (over ``MAX_RESULT_BYTES`` of text);
503 ``analytics_unavailable`` while the store is not open.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from functools import partial
from typing import Any

import duckdb
from aiohttp import web

from analytics.http import STORE, AnalyticsUnavailable, admin_only, refuse_partial_store
from analytics.sql import SqlBusy, SqlError, SqlResult, SqlService
from analytics.sql_limits import DEFAULT_MAX_ROWS, DEFAULT_TIMEOUT, MAX_ROWS_LIMIT, MAX_TIMEOUT
from analytics.store import StoreError
from gateway.api.drain import at_stop
from gateway.api.expect import add_post
from gateway.api.json_body import json_body
from gateway.api.middleware import client_gone
from gateway.errors import GatewayError, InvalidRequest

SQL: web.AppKey[SqlService] = web.AppKey("analytics_sql", SqlService)
PATH = "/v1/analytics/sql"
FORMATS = ("json", "csv")


async def sql_query(request: web.Request) -> web.Response:
    started = asyncio.get_running_loop().time()  # the query's time limit counts from here
    admin_only(request, "SQL analytics needs an admin API key: SQL sees every tenant's usage")
    body = await _json_body(request)
    sql = body.get("sql")
    if not isinstance(sql, str) or not sql.strip():
        raise InvalidRequest("'sql' must be a non-empty string holding one SELECT query", param="sql")
    max_rows = _number(body, "maxRows", DEFAULT_MAX_ROWS, 1, MAX_ROWS_LIMIT, integer=True)
    timeout = _number(body, "timeoutSeconds", DEFAULT_TIMEOUT, 0, MAX_TIMEOUT, integer=False)
    fmt = body.get("format", "json")
    if fmt not in FORMATS:
        raise InvalidRequest(f"'format' must be one of {', '.join(FORMATS)}", param="format")
    try:
        await refuse_partial_store(request, "a query")
        result = await request.app[SQL].query(
            sql, max_rows=int(max_rows), timeout=float(timeout), gone=partial(client_gone, request), started=started
        )
    except SqlBusy as exc:  # the service's state, not the query's fault
        raise SqlServiceBusy(str(exc)) from exc
    except SqlError as exc:
        raise InvalidRequest(str(exc), param="sql", code=exc.code) from exc
    except (StoreError, duckdb.Error) as exc:  # a store not open, or invalidated (a full disk): was a 500
        raise AnalyticsUnavailable(str(exc)) from exc
    # up to MAX_RESULT_BYTES of text: encoded in a worker thread, not on the gateway's event loop
    if fmt == "csv":
        headers = {"x-llm-sql-row-count": str(len(result.rows)), "x-llm-sql-truncated": str(result.truncated).lower()}
        text = await asyncio.to_thread(_encoded, result, result.to_csv)
        return web.Response(text=text, content_type="text/csv", charset="utf-8", headers=headers)
    return web.Response(text=await asyncio.to_thread(_encoded, result, result.to_json), content_type="application/json")


class SqlServiceBusy(GatewayError):
    status = 503
    type = "server_error"
    code = "sql_busy"
    headers = {"retry-after": "5"}


def _encoded(result: SqlResult, encode: Callable[[], str]) -> str:
    """``encode()``, then the result's rows dropped here, a few at a time: dropped on the event
    loop when the handler returned, 100,000 rows held it 67 ms (a re-test)."""
    text = encode()
    result.release()
    return text


async def _json_body(request: web.Request) -> dict[str, Any]:
    body = await json_body(request, empty=None)
    if not isinstance(body, dict):
        raise InvalidRequest('the request body must be a JSON object: {"sql": "SELECT ..."}')
    return body


def _number(body: dict[str, Any], name: str, default: float, low: float, high: float, *, integer: bool) -> float:
    """``body[name]``: an integer in [low, high], or a number in (low, high]."""
    value = body.get(name)
    if value is None:
        return default
    if integer:
        if isinstance(value, int) and not isinstance(value, bool) and low <= value <= high:
            return value
        raise InvalidRequest(f"'{name}' must be an integer from {low:g} to {high:g}", param=name)
    if isinstance(value, int | float) and not isinstance(value, bool) and low < value <= high:
        return float(value)
    raise InvalidRequest(f"'{name}' must be a number of seconds, more than {low:g} and at most {high:g}", param=name)


def install_sql(app: web.Application) -> None:
    """Add ``POST /v1/analytics/sql`` to an app on which ``install_analytics`` put the store and
    the authenticator (``STORE``, ``AUTH``). Idempotent."""
    if SQL in app:
        return
    service = SqlService(app[STORE])
    app[SQL] = service
    add_post(app, PATH, sql_query)

    # a stop interrupts them at once, before it waits for the requests in flight (and before the
    # store closes: cleanup runs after shutdown)
    at_stop(app, service.interrupt_all)
