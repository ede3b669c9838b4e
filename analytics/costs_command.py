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
    parser.set_defaults(run=run)


async def _from_service(
    url: str, args: argparse.Namespace, api_key: str | None, store: Mapping[str, str] = MappingProxyType({})
) -> dict[str, Any] | None:
    import aiohttp

    params = {
        k: v
        for k, v in {"tenantId": args.tenant, "start": args.start, "end": args.end, "limit": str(args.limit)}.items()
        if v
    }
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
    from analytics.http import parse_limit, parse_window
    from analytics.store import AnalyticsStore
    from consumers.pipeline import analytics_path

    start, end = parse_window(args.start, args.end)  # the checks the HTTP API makes
    limit = parse_limit(str(args.limit))
    store = AnalyticsStore(analytics_path(settings), read_only=True)
    await store.open()
    try:
        result = await CostTrackingService(store).get_costs_for_tenant(args.tenant, start, end, limit=limit)
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
    rows = doc.get("usage") or []
    if rows:
        header = ("createdAt", "provider", "model", "promptTokens", "completionTokens", "costUsd")
        table = [header] + [tuple(str(r.get(k) if r.get(k) is not None else "unpriced") for k in header) for r in rows]
        widths = [max(len(row[i]) for row in table) for i in range(len(header))]
        for row in table:
            lines.append("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)))
    return "\n".join(lines)


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
