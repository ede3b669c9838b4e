"""``llm-gateway export-parquet``: the usage facts as Parquet files, one a UTC day.

While the gateway (or a consumer) runs, it owns the analytics store, so the command asks it
(``POST /v1/analytics/export``, an admin key) and the files land in that process's export
directory; when nothing answers, the command opens the store read-only itself and writes them
into this configuration's (``export_dir``, default ``<data_dir>/export``).
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Mapping
from datetime import date
from types import MappingProxyType
from typing import Any

from analytics.owner import Unreachable, ask_owner, read_file, service_url
from gateway.settings import Settings


def _day(value: str) -> str:
    """``--from`` / ``--to``: checked here as the endpoint checks them (a one-line usage error)."""
    try:
        if len(value) == 10:
            date.fromisoformat(value)
            return value
    except ValueError:
        pass
    raise argparse.ArgumentTypeError(f"{value!r} is not a UTC day as YYYY-MM-DD")


def register(sub: Any) -> None:
    parser = sub.add_parser(
        "export-parquet",
        help="write the usage facts as Parquet files, one a UTC day (for a data lake or another engine)",
        description="Write every usage fact of the days asked (default: all) to "
        "<export_dir>/usage_facts/day=YYYY-MM-DD/usage.parquet, replacing a day exported before.",
    )
    parser.add_argument("--from", dest="first", type=_day, help="first UTC day (YYYY-MM-DD), inclusive")
    parser.add_argument("--to", dest="last", type=_day, help="last UTC day (YYYY-MM-DD), inclusive")
    parser.add_argument("--json", action="store_true", help="print the JSON document instead of a table")
    parser.add_argument("--url", type=service_url, help="service to ask (default http://127.0.0.1:<port>)")
    parser.add_argument("--api-key", help="admin API key for the service (default: the first admin key configured)")
    parser.set_defaults(run=run)


def _body(args: argparse.Namespace) -> dict[str, str]:
    return {name: value for name, value in (("from", args.first), ("to", args.last)) if value}


async def _from_service(
    url: str, args: argparse.Namespace, api_key: str | None, store: Mapping[str, str] = MappingProxyType({})
) -> dict[str, Any]:
    import aiohttp

    headers = {**store, **({"authorization": f"Bearer {api_key}"} if api_key else {})}
    endpoint = f"{url.rstrip('/')}/v1/analytics/export"
    try:
        async with (
            aiohttp.ClientSession() as session,
            session.post(endpoint, json=_body(args), headers=headers, timeout=aiohttp.ClientTimeout(total=None)) as r,
        ):
            doc = await r.json(content_type=None)
    except aiohttp.ClientConnectionError as exc:
        raise Unreachable(str(exc)) from exc
    except ValueError as exc:
        raise SystemExit(f"{endpoint} did not answer as an llm-gateway (not JSON: {exc})") from exc
    if r.status == 404:
        raise Unreachable(f"{url} has no export endpoint")  # not the store's owner: ask the next
    if r.status != 200 or not isinstance(doc, dict):
        error = doc.get("error", {}) if isinstance(doc, dict) else {}
        raise SystemExit(f"error {r.status} ({error.get('code')}): {error.get('message', doc)}")
    return doc


async def _from_file(settings: Settings, args: argparse.Namespace) -> dict[str, Any]:
    import duckdb

    from analytics.export_http import parse_days
    from analytics.parquet_export import ExportDirTaken, export_range
    from analytics.store import AnalyticsStore
    from consumers import catch_up
    from consumers.pipeline import analytics_path, export_path
    from consumers.replay import pending_rebuild

    first, last = parse_days(_body(args))
    directory = export_path(settings).absolute()
    store = AnalyticsStore(analytics_path(settings), read_only=True, allowed_directories=[directory])
    await store.open()
    try:
        if await catch_up.pending(store) or await pending_rebuild(store) is not None:
            raise SystemExit(
                "llm-gateway export-parquet: the analytics store is not whole (a full rebuild or a catch-up "
                "was cut short): start the gateway (or consume) to finish it, then export"
            )
        days = await export_range(store, directory, first, last)
    except ExportDirTaken as exc:
        raise SystemExit(f"llm-gateway export-parquet: {exc}") from exc
    except (OSError, duckdb.IOException) as exc:  # the directory, not the store: a file there, full, not ours
        raise SystemExit(f"llm-gateway export-parquet: cannot write the export directory {directory}: {exc}") from exc
    finally:
        await store.close()
    return {"object": "list", "directory": str(directory), "data": [day.to_dict() for day in days]}


def render(doc: dict[str, Any]) -> str:
    from decimal import Decimal

    from gateway.pricing.base import format_usd

    days = doc.get("data") or []
    written = [d for d in days if d.get("path")]
    lines = []
    for d in days:
        if d.get("path"):
            unpriced = f", {d['unpricedCalls']} unpriced" if d.get("unpricedCalls") else ""
            cost = format_usd(Decimal(d["costUsd"]))
            lines.append(f"{d['day']}  {d['rows']:>9,} rows  ${cost}{unpriced}  {d['path']}")
        else:
            lines.append(f"{d['day']}  no usage facts: its file removed")
    total = sum((Decimal(d["costUsd"]) for d in written), Decimal(0))
    rows = sum(int(d["rows"]) for d in written)
    lines.append(f"{len(written)} day file(s), {rows:,} rows, ${format_usd(total)} in {doc.get('directory')}")
    return "\n".join(lines)


def run(args: argparse.Namespace, settings: Settings) -> int:

    if args.first and args.last and args.last < args.first:
        raise SystemExit("llm-gateway export-parquet: --to must not be before --from")
    doc, urls = ask_owner(
        settings, args.url, args.api_key, lambda url, key, store: _from_service(url, args, key, store)
    )
    if doc is None:
        doc = read_file(settings, urls, "export-parquet", lambda: _from_file(settings, args))
    print(json.dumps(doc, indent=2) if args.json else render(doc))
    return 0


__all__ = ["register", "render", "run"]
