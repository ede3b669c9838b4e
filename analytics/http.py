"""Analytics over HTTP: ``GET /v1/costs`` (and the SQL endpoint), on whichever process owns the
DuckDB store (the embedded gateway, or ``llm-gateway consume``)."""

from __future__ import annotations

import re
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path

import duckdb
from aiohttp import web

from analytics.costs import GROUPS, CostTrackingService
from analytics.store import AnalyticsStore, StoreError
from gateway.api.auth import Authenticator
from gateway.api.metadata import METADATA_PARAM, metadata_problem
from gateway.api.query import only_parameters
from gateway.errors import GatewayError, InvalidRequest, PermissionDenied, RouteNotFound
from gateway.events import MAX_METADATA_PAIRS

COSTS: web.AppKey[CostTrackingService] = web.AppKey("cost_tracking", CostTrackingService)
STORE: web.AppKey[AnalyticsStore] = web.AppKey("analytics_store", AnalyticsStore)
AUTH: web.AppKey[Authenticator] = web.AppKey("analytics_auth", Authenticator)

MAX_ROWS = 10_000


def parse_time(name: str, value: str | None) -> datetime | None:
    """ISO 8601 with a timezone (``Z`` allowed); a date alone means midnight UTC. Returned in UTC."""
    if value is None or value == "":
        return None
    text = value.strip().replace(" ", "+") if "T" in value else value.strip()
    if _FINER_THAN_MICROSECONDS.search(text):
        # Python drops the digits past the sixth: a start 0.4 µs after an event took the event in
        raise InvalidRequest(
            f"'{name}' may have at most 6 decimals of a second (microseconds), got {value!r}", param=name
        )
    try:
        parsed = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError as exc:
        raise InvalidRequest(f"'{name}' must be an ISO 8601 date-time, got {value!r}", param=name) from exc
    if parsed.tzinfo is None:
        if not _DATE_ONLY.fullmatch(text):  # a time without a zone ("T" or a space before it)
            raise InvalidRequest(f"'{name}' must carry a timezone (e.g. 2026-01-01T00:00:00Z)", param=name)
        parsed = parsed.replace(tzinfo=UTC)
    try:
        return parsed.astimezone(UTC)
    except OverflowError as exc:  # e.g. 0001-01-01T00:00:00+01:00 is before year 1 in UTC
        raise InvalidRequest(f"'{name}' is out of range in UTC, got {value!r}", param=name) from exc


def parse_window(start_text: str | None, end_text: str | None) -> tuple[datetime | None, datetime | None]:
    """A cost query's window (``start`` inclusive, ``end`` exclusive, either open), checked: the
    HTTP API's and the ``costs`` command's reading the file (which took an end before its start
    and answered an empty report: review)."""
    start = parse_time("start", start_text)
    end = parse_time("end", end_text)
    if start and end and end <= start:
        raise InvalidRequest("'end' must be after 'start'", param="end")
    return start, end


def parse_limit(text: str | None) -> int:
    """How many usage rows a cost report lists: 0 to MAX_ROWS (default MAX_ROWS)."""
    if text is None:
        return MAX_ROWS
    if not (text.isascii() and text.isdigit()) or not 0 <= int(text) <= MAX_ROWS:
        raise InvalidRequest(f"'limit' must be an integer from 0 to {MAX_ROWS}", param="limit")
    return int(text)


_DATE_ONLY = re.compile(r"\d{4}-\d{2}-\d{2}")
_FINER_THAN_MICROSECONDS = re.compile(r"[.,]\d{7}")


class StoreNotWhole(GatewayError):
    """The store is being filled from the log (a full rebuild, a new store catching up): what it
    holds now is part of the history, and a total over it would be short."""

    status = 503
    type = "server_error"
    code = "store_rebuilding"
    headers = {"retry-after": "10"}


async def refuse_partial_store(request: web.Request, what: str) -> None:
    """:class:`StoreNotWhole` while the store misses part of the log. ``/v1/costs`` answered 200
    with a tenant's total at a tenth of its value, rising, through a ``replay --full`` (a review);
    the Parquet export refused the same state already."""
    from consumers.replay_http import REPLAY  # here: consumers imports this module

    service = request.app.get(REPLAY)
    if service is not None and not await service.answers_whole():
        raise StoreNotWhole(
            f"the analytics store is being filled from the log (a full rebuild, or a new store catching up): "
            f"{what} would count part of the history; try again once it is done (GET /healthz)"
        )


class AnalyticsUnavailable(GatewayError):
    """The analytics store cannot answer now (not open: the process starting or stopping)."""

    status = 503
    type = "server_error"
    code = "analytics_unavailable"


#: the query parameters of ``GET /v1/costs`` (and ``metadata.<key>``: a filter)
COSTS_PARAMETERS = ("tenantId", "start", "end", "limit", "groupBy")


def parse_attribution(query: Mapping[str, str]) -> tuple[dict[str, str] | None, str | None]:
    """A cost query's metadata filter (``metadata.<key>=<value>`` parameters) and its split
    (``groupBy``: ``provider``, ``model``, ``day`` or ``metadata.<key>``), checked."""
    metadata = {
        name.removeprefix(METADATA_PARAM): value for name, value in query.items() if name.startswith(METADATA_PARAM)
    }
    # a pair no call can carry (a line break a bad URL left, a NUL) would answer "spent $0"
    if (problem := metadata_problem(metadata, MAX_METADATA_PAIRS)) is not None:
        raise problem
    group_by = query.get("groupBy")
    if group_by is not None:
        key = group_by.removeprefix(METADATA_PARAM)
        if group_by.startswith(METADATA_PARAM) and (problem := metadata_problem({key: ""})) is not None:
            raise InvalidRequest(f"'groupBy': {problem.message}", param="groupBy", code="invalid_value")
        if not group_by.startswith(METADATA_PARAM) and group_by not in GROUPS:
            raise InvalidRequest(
                f"'groupBy' must be one of {', '.join(GROUPS)} or metadata.<key>, got {group_by[:80]!r}",
                param="groupBy",
                code="invalid_value",
            )
    return metadata or None, group_by


def check_store(request: web.Request, store: AnalyticsStore) -> None:
    """A command asking for another data dir's store (``STORE_HEADER``) is told this is not it."""
    from analytics.owner import STORE_HEADER, store_id

    asked = request.headers.get(STORE_HEADER)
    if asked is not None and asked != store_id(store.path):
        raise RouteNotFound(f"this service owns another analytics store than the one asked for ({STORE_HEADER})")


def admin_only(request: web.Request, why: str) -> None:
    """The analytics endpoints that see every tenant (SQL, the Parquet export): an admin key, and
    the store the command asked for. ``why``: the refusal's message."""
    if not request.app[AUTH].authenticate(request).admin:
        raise PermissionDenied(why)
    check_store(request, request.app[STORE])


async def costs(request: web.Request) -> web.Response:
    auth = request.app[AUTH]
    principal = auth.authenticate(request)
    check_store(request, request.app[STORE])  # after the key: no one else learns a store's id
    query = request.query
    only_parameters(query, COSTS_PARAMETERS, (METADATA_PARAM,))
    tenant = query.get("tenantId") or None
    if tenant is None:
        if principal.admin and auth.open:
            raise InvalidRequest("Missing required query parameter: 'tenantId'", param="tenantId")
        tenant = principal.tenant
    tenant = auth.tenant_for(principal, tenant)
    start, end = parse_window(query.get("start"), query.get("end"))
    limit = parse_limit(query.get("limit"))
    metadata, group_by = parse_attribution(query)
    try:
        await refuse_partial_store(request, "its costs")
        result = await request.app[COSTS].get_costs_for_tenant(
            tenant, start, end, limit=limit, metadata=metadata, group_by=group_by
        )
    except (StoreError, duckdb.Error) as exc:  # was a 500 (a store DuckDB invalidated, a full disk)
        raise AnalyticsUnavailable(str(exc)) from exc
    return web.Response(body=result.to_json(), content_type="application/json")


def install_analytics(
    app: web.Application, store: AnalyticsStore, auth: Authenticator, export_dir: Path | None = None
) -> None:
    """Add the analytics routes to an app whose lifecycle opens ``store``; ``export_dir``: where
    the Parquet export writes (one of the store's allowed directories), None for no export."""
    app[STORE] = store
    app[COSTS] = CostTrackingService(store)
    app[AUTH] = auth
    app.router.add_get("/v1/costs", costs)

    from analytics.sql_http import install_sql  # imported here: sql_http imports this module

    install_sql(app)
    if export_dir is not None:
        from analytics.export_http import install_export

        install_export(app, export_dir)
