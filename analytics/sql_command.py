"""``llm-gateway sql "SELECT ..."``: read-only SQL over the analytics store.

DuckDB lets one process open the database file for writing. While the gateway (or a consumer)
runs, it owns the file, so the command asks it: ``POST /v1/analytics/sql`` (admin key). When
nothing answers, the command opens the file read-only itself and runs the query through the
same checks (analytics/sql.py). Output: an aligned table (default), CSV or JSON.

The API key: ``--api-key``, else the first admin key of the settings (``LLM_GATEWAY_API_KEYS``,
the same configuration the service reads), else none (a gateway without keys is open).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Mapping
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

from analytics.owner import Unreachable, ask_owner, owner_hint, read_directly, service_url
from analytics.sql_limits import DEFAULT_MAX_ROWS, DEFAULT_TIMEOUT, MAX_ROWS_LIMIT, MAX_TIMEOUT
from gateway.settings import Settings

if TYPE_CHECKING:  # analytics.sql imports DuckDB: only when the command runs
    from analytics.sql import SqlResult

#: table cells longer than this are cut (CSV and JSON are never cut)
MAX_CELL = 80


def register(sub: Any) -> None:
    parser = sub.add_parser(
        "sql",
        help="run one read-only SQL query (SELECT) over the analytics store",
        description="Run one read-only SQL query over the analytics store (usage_facts, llm_usage, "
        "provider_health_history and the v_* views: SELECT view_name, comment FROM duckdb_views()).",
    )
    parser.add_argument("query", help='one SELECT statement, e.g. "SELECT * FROM v_cost_daily"')
    parser.add_argument("--format", choices=("table", "csv", "json"), default="table")
    parser.add_argument(
        "--max-rows", type=int, default=DEFAULT_MAX_ROWS, help=f"rows to return, at most {MAX_ROWS_LIMIT}"
    )
    parser.add_argument(
        "--timeout",
        type=float,
        default=DEFAULT_TIMEOUT,
        help=f"seconds before the query is stopped (<= {MAX_TIMEOUT:g})",
    )
    parser.add_argument("--url", type=service_url, help="service to ask (default http://127.0.0.1:<port>)")
    parser.add_argument("--api-key", help="admin API key for the service (default: the first admin key configured)")
    parser.set_defaults(run=run)


async def _from_service(
    url: str, args: argparse.Namespace, api_key: str | None, hint: str, store: Mapping[str, str] = MappingProxyType({})
) -> SqlResult:
    import aiohttp

    from analytics.sql import SqlResult

    headers = {**store, **({"authorization": f"Bearer {api_key}"} if api_key else {})}
    body = {"sql": args.query, "maxRows": args.max_rows, "timeoutSeconds": args.timeout, "format": "json"}
    endpoint = f"{url.rstrip('/')}/v1/analytics/sql"
    try:
        async with (
            aiohttp.ClientSession() as session,
            session.post(
                endpoint, json=body, headers=headers, timeout=aiohttp.ClientTimeout(total=args.timeout + 30)
            ) as response,
        ):
            doc = await response.json(content_type=None)
    except aiohttp.ClientConnectionError as exc:
        raise Unreachable(str(exc)) from exc
    except (aiohttp.ContentTypeError, ValueError) as exc:
        raise SystemExit(f"{endpoint} did not answer as an llm-gateway (not JSON: {exc})") from exc
    if response.status == 404:
        if not args.url:
            raise Unreachable(f"{url} has no SQL endpoint")  # not the store's owner: ask the next
        raise SystemExit(f"{url} has no SQL endpoint: {hint}")
    if response.status != 200:
        error = doc.get("error", {}) if isinstance(doc, dict) else {}
        raise SystemExit(f"error {response.status} ({error.get('code')}): {error.get('message', doc)}")
    return SqlResult.from_dict(doc)


def _store_path(settings: Settings) -> Path:
    from consumers.pipeline import analytics_path

    return analytics_path(settings)


async def _from_file(settings: Settings, args: argparse.Namespace) -> SqlResult:
    from analytics.sql import SqlService
    from analytics.store import AnalyticsStore
    from consumers.pipeline import analytics_path

    store = AnalyticsStore(analytics_path(settings), read_only=True)
    await store.open()
    try:
        return await SqlService(store).query(args.query, max_rows=args.max_rows, timeout=args.timeout)
    finally:
        await store.close()


def render_table(result: SqlResult) -> str:
    from analytics.sql import cell_text

    names = [c.name for c in result.columns]
    cells = [[_cut(cell_text(v)) for v in row] for row in result.rows]
    widths = [max([len(name), *(len(row[i]) for row in cells)]) for i, name in enumerate(names)]
    numeric = [_is_numeric(c.type) for c in result.columns]

    def line(row: list[str]) -> str:
        return "  ".join(
            cell.rjust(width) if right else cell.ljust(width)
            for cell, width, right in zip(row, widths, numeric, strict=True)
        ).rstrip()

    lines = [line(names), "  ".join("-" * w for w in widths)] + [line(row) for row in cells]
    count = len(result.rows)
    footer = f"({count} row{'s' if count != 1 else ''}"
    footer += f"; more rows exist: raise --max-rows, at most {MAX_ROWS_LIMIT})" if result.truncated else ")"
    return "\n".join([*lines, footer])


def _cut(text: str) -> str:
    text = text.replace("\n", "\\n")
    return text if len(text) <= MAX_CELL else text[: MAX_CELL - 1] + "…"


def _is_numeric(kind: str) -> bool:
    return kind.split("(")[0] in {
        "TINYINT", "SMALLINT", "INTEGER", "BIGINT", "HUGEINT", "UTINYINT", "USMALLINT", "UINTEGER", "UBIGINT",
        "UHUGEINT", "FLOAT", "DOUBLE", "DECIMAL",
    }  # fmt: skip


def run(args: argparse.Namespace, settings: Settings) -> int:
    import duckdb

    from analytics.sql import SqlError
    from analytics.store import StoreError

    if not 1 <= args.max_rows <= MAX_ROWS_LIMIT:
        raise SystemExit(f"--max-rows must be from 1 to {MAX_ROWS_LIMIT}")
    if not 0 < args.timeout <= MAX_TIMEOUT:
        raise SystemExit(f"--timeout must be more than 0 and at most {MAX_TIMEOUT:g} seconds")
    hint = owner_hint(settings)
    result, urls = ask_owner(
        settings, args.url, args.api_key, lambda candidate, key, store: _from_service(candidate, args, key, hint, store)
    )
    url = " or ".join(urls)
    if result is None:
        try:
            result = asyncio.run(_from_file(settings, args))
            read_directly(_store_path(settings), urls)
        except SqlError as err:
            raise SystemExit(f"error ({err.code}): {err}") from err
        except StoreError as err:
            raise SystemExit(
                f"nothing at {url} serves the analytics store (a gateway whose projection runs in "
                f"`llm-gateway consume` does not) and no readable analytics store: {err}; {owner_hint(settings)}"
            ) from err
        except duckdb.Error as err:  # e.g. another process holds the file's lock
            raise SystemExit(
                f"no gateway answers at {url} and the analytics file cannot be opened ({err}); "
                "if a gateway or consumer runs elsewhere, pass its --url"
            ) from err
    if args.format == "json":
        print(result.to_json())
    elif args.format == "csv":
        sys.stdout.write(result.to_csv())
    else:
        print(render_table(result))
    if result.truncated and args.format != "table":
        print(f"warning: only the first {result.max_rows} rows were returned (--max-rows)", file=sys.stderr)
    return 0


__all__ = ["register", "render_table", "run"]
