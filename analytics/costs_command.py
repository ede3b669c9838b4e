"""``llm-gateway costs``: a tenant's costs, from the running service or the DuckDB file.

DuckDB lets one process write a database file. While the gateway (or a consumer) runs, it owns
the file, so the CLI asks it over HTTP (``GET /v1/costs``); when nothing runs, the CLI opens the
file read-only.
"""

from __future__ import annotations

import argparse
import asyncio
import json
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

from analytics.owner import owner_hint, owner_urls, read_file, service_url, store_headers
from gateway.api.metadata import METADATA_PARAM
from gateway.settings import Settings


def register(sub: Any) -> None:
    parser = sub.add_parser("costs", help="show a tenant's costs (exact) over a time window")
    parser.add_argument("--tenant", required=True)
    parser.add_argument("--start", help="ISO 8601, inclusive (e.g. 2026-11-01 or 2026-11-01T00:00:00Z)")
    parser.add_argument("--end", help="ISO 8601, exclusive")
    parser.add_argument("--json", action="store_true", help="print the JSON document instead of a table")
    parser.add_argument("--url", type=service_url, help="service to ask (default http://127.0.0.1:<port>)")
    parser.add_argument(
        "--api-key", help="API key for the service (tenant or admin; default: the first admin key configured)"
    )
    parser.add_argument("--limit", type=int, default=50, help="usage rows to list, 0 to 10000 (totals cover all)")
    parser.add_argument(
        "--metadata",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        type=_pair,
        help="only the calls with this metadata pair (repeat: each of them)",
    )
    parser.add_argument(
        "--group-by", help="split the totals by provider, model, day or metadata.<key> (e.g. metadata.team)"
    )
    parser.set_defaults(run=run)


async def _from_service(
    url: str, args: argparse.Namespace, api_key: str | None, store: Mapping[str, str] = MappingProxyType({})
) -> dict[str, Any] | None:
    import aiohttp

    window = {"tenantId": args.tenant, "start": args.start, "end": args.end, "limit": str(args.limit)}
    params = {k: v for k, v in window.items() if v}
    # a filter's or --group-by's empty value goes too: the service says what is wrong with it
    params.update(_filters(args))
    if args.group_by is not None:
        params["groupBy"] = args.group_by
    headers = {**store, **({"authorization": f"Bearer {api_key}"} if api_key else {})}
    try:
        async with (
            aiohttp.ClientSession() as session,
            session.get(
                f"{url.rstrip('/')}/v1/costs", params=params, headers=headers, timeout=aiohttp.ClientTimeout(total=30)
            ) as response,
        ):
            if response.status == 404:
                return None  # not the store's owner (a gateway whose projection runs elsewhere)
            body = await response.json(content_type=None)
            if response.status != 200:
                message = body.get("error", {}).get("message") if isinstance(body, dict) else body
                raise SystemExit(f"error {response.status}: {message}")
            return body if isinstance(body, dict) else None
    except (aiohttp.ClientConnectionError, TimeoutError):
        return None


async def _from_file(settings: Settings, args: argparse.Namespace) -> dict[str, Any]:
    from analytics.costs import CostTrackingService
    from analytics.http import parse_attribution, parse_limit, parse_window
    from analytics.store import AnalyticsStore
    from consumers.pipeline import analytics_path

    start, end = parse_window(args.start, args.end)  # the checks the HTTP API makes
    limit = parse_limit(str(args.limit))
    asked = _filters(args)
    split = {} if args.group_by is None else {"groupBy": args.group_by}
    metadata, group_by = parse_attribution({**asked, **split})
    store = AnalyticsStore(analytics_path(settings), read_only=True)
    await store.open()
    try:
        result = await CostTrackingService(store).get_costs_for_tenant(
            args.tenant, start, end, limit=limit, metadata=metadata, group_by=group_by
        )
        return result.to_dict()
    finally:
        await store.close()


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


def render_table(doc: dict[str, Any]) -> str:
    lines = [
        f"tenant {doc['tenantId']}: total ${doc['totalCost']} over {_count(doc['usageCount'], 'call')}, "
        f"{_count(doc['totalTokens'], 'token')}"
        + (f" ({_count(doc['unpricedCount'], 'unpriced call')})" if doc.get("unpricedCount") else "")
    ]
    if doc.get("metadata"):
        lines[0] += " with metadata " + ", ".join(f"{k}={v}" for k, v in doc["metadata"].items())
    if doc.get("groupBy") is not None:
        lines.append(f"by {doc['groupBy']}:")
        groups = doc.get("groups") or []
        groups_table: list[tuple[str, ...]] = [("value", "cost", "calls", "tokens", "unpriced")]
        groups_table += [
            (
                "(none)" if g["value"] is None else str(g["value"]),
                f"${g['totalCost']}",
                str(g["usageCount"]),
                str(g["totalTokens"]),
                str(g["unpricedCount"]),
            )
            for g in groups
        ]
        lines += _aligned(groups_table, indent="  ")
        if doc.get("groupsTruncated"):
            kept = "the newest" if doc["groupBy"] == "day" else "the largest"
            lines.append(f"  (more groups than these {len(groups):,}, {kept}: narrow the window or filter)")
    rows = doc.get("usage") or []
    if rows:
        header = ("createdAt", "provider", "model", "promptTokens", "completionTokens", "costUsd")
        cells = [tuple(str(r.get(k) if r.get(k) is not None else "unpriced") for k in header) for r in rows]
        table: list[tuple[str, ...]] = [header, *cells]
        lines += _aligned(table)
    return "\n".join(lines)


def _aligned(table: list[tuple[str, ...]], indent: str = "") -> list[str]:
    widths = [max(len(row[i]) for row in table) for i in range(len(table[0]))]
    return [indent + "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)) for row in table]


def _filters(args: argparse.Namespace) -> dict[str, str]:
    """The ``--metadata`` pairs as the API's ``metadata.<key>`` parameters; a key given twice is
    refused, as the API refuses a parameter given twice (the last one was kept)."""
    filters: dict[str, str] = {}
    for key, value in args.metadata:
        name = f"{METADATA_PARAM}{key}"
        if name in filters:
            raise SystemExit(f"--metadata {key}=... given twice: a call has one value for a key")
        filters[name] = value
    return filters


def _pair(text: str) -> tuple[str, str]:
    key, equals, value = text.partition("=")
    if not equals or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    return key, value


def run(args: argparse.Namespace, settings: Settings) -> int:

    urls = [args.url] if args.url else owner_urls(settings)
    doc = None
    for url in urls:
        store = {} if args.url else store_headers(settings)
        doc = asyncio.run(_from_service(url, args, args.api_key or settings.admin_key, store))
        if doc is not None:
            break
    if doc is None:
        if args.url:
            raise SystemExit(f"cannot reach {url}, or it has no cost store: {owner_hint(settings)}")
        doc = read_file(settings, urls, "costs", lambda: _from_file(settings, args))
    print(json.dumps(doc, indent=2) if args.json else render_table(doc))
    return 0


__all__ = ["register", "render_table", "run"]
