"""``llm-gateway replay``: rebuild the projections from the event log, optionally re-costing it.

::

    llm-gateway replay                       # the whole log, recorded costs
    llm-gateway replay --reprice             # re-cost with the current price table (backfill)
    llm-gateway replay --reprice --price-file prices.yaml --dry-run   # what would change
    llm-gateway replay --since 2026-11-01 --reprice
    llm-gateway replay --full --reprice      # empty the stores, rebuild everything

Where it runs: DuckDB lets one process write ``analytics.duckdb``. When a service owns it
(``llm-gateway serve`` in the embedded mode, or ``llm-gateway consume``), the command asks that
service to replay (``POST /v1/admin/replay``, admin key: ``--api-key`` or the first admin key of
the configuration) and shows its progress. When no service answers, it replays in this process.
``--url`` names the service (then it must answer); ``--local`` never asks one.

Semantics (immutable log, price versions, what a replay without ``--reprice`` does):
see :mod:`consumers.replay`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import sys
from collections.abc import Mapping
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

from analytics.owner import owner_urls, service_url, store_headers
from gateway.settings import Settings

if TYPE_CHECKING:
    from consumers.replay import Progress, ReplayOptions
    from gateway.pricing.pricefile import PriceFile


def register(sub: Any) -> None:
    parser = sub.add_parser(
        "replay",
        help="rebuild DuckDB, LLMUsage and health history from the event log (--reprice: re-cost it)",
        description="Rebuild the projections from the event log; --reprice re-costs history with the current prices.",
    )
    start = parser.add_mutually_exclusive_group()
    start.add_argument("--from-beginning", action="store_true", help="replay the whole log (the default)")
    start.add_argument("--since", help="only events created at/after this ISO 8601 time (e.g. 2026-11-01T00:00:00Z)")
    start.add_argument(
        "--from-position",
        help="start at this log position: a record number (embedded log) or partition:offset[,...] (Kafka)",
    )
    parser.add_argument("--reprice", action="store_true", help="re-cost every event with the current price table")
    parser.add_argument(
        "--price-file", type=Path, help="reprice with this price file instead of the configured one (implies --reprice)"
    )
    parser.add_argument("--full", action="store_true", help="empty the stores first, then rebuild from the beginning")
    parser.add_argument(
        "--drop-missing",
        action="store_true",
        help="with --full: remove the stored events the log does not hold (another log's, or past the log's "
        "retention: Kafka's, or log_retention_days); without it --full refuses to",
    )
    parser.add_argument("--dry-run", action="store_true", help="compute the summary and the diff, write nothing")
    parser.add_argument(
        "--health",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="rebuild the provider health history too (default: only with --full)",
    )
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    parser.add_argument(
        "--url", type=service_url, help="the service owning the stores (default: the local gateway or consumer)"
    )
    parser.add_argument("--api-key", help="admin API key for the service (default: the config's first admin key)")
    parser.add_argument("--local", action="store_true", help="replay in this process; never ask a service")
    parser.add_argument(
        "--group",
        default="llm-usage-projector",
        help="the live projector's consumer group (to tell whether it covered the range)",
    )
    parser.set_defaults(run=run)


def run(args: argparse.Namespace, settings: Settings) -> int:
    from analytics.http import parse_time
    from consumers.replay import ProgressBar, ReplayError, ReplayOptions, render_report
    from gateway.errors import InvalidRequest
    from gateway.pricing.pricefile import PriceFileError, load_price_file

    try:
        since = parse_time("since", args.since)
        prices = load_price_file(args.price_file) if args.price_file is not None else None
        if prices is None and args.reprice and settings.price_file is not None:
            # the configured prices go with the request: the service that replays (in Kafka mode a
            # `consume` member, often run without the gateway's config) repriced with its own,
            # and put history back at the built-in rates (a review: 249 events re-costed)
            prices = load_price_file(settings.price_file)
            print(f"replay: repricing with {settings.price_file} ({prices.version})", file=sys.stderr)
    except (InvalidRequest, PriceFileError) as e:
        print(f"replay: {e.message}", file=sys.stderr)
        return 2
    options = ReplayOptions(
        since=since,
        from_position=args.from_position,
        reprice=args.reprice or prices is not None,
        full=args.full,
        dry_run=args.dry_run,
        health=args.health,
        drop_missing=args.drop_missing,
    )
    try:
        options.check()
    except ReplayError as e:
        print(f"replay: {e}", file=sys.stderr)
        return 2
    bar = ProgressBar(sys.stderr)
    try:
        doc = asyncio.run(_replay(settings, args, options, prices, bar))
    except ReplayFailed as e:
        bar.finish()
        print(f"replay: {e}", file=sys.stderr)
        return 1
    bar.finish()
    print(json.dumps(doc, indent=2) if args.json else render_report(doc))
    return 0


class ReplayFailed(Exception):
    pass


async def _replay(settings: Settings, args: argparse.Namespace, options: Any, prices: Any, bar: Any) -> dict[str, Any]:
    if not args.local:
        urls = [args.url] if args.url else owner_urls(settings)
        for url in urls:
            store = {} if args.url else store_headers(settings)
            doc = await via_service(url, options, prices, args.api_key or settings.admin_key, bar, store)
            if doc is not None:
                return doc
        if args.url:
            raise ReplayFailed(f"cannot reach {args.url} (or it does not replay: no {ROUTE_HINT})")
        if not options.dry_run:
            print(
                f"replay: nothing answered at {', '.join(urls)}: replaying in this process, which holds the "
                "analytics store until it ends (a serve or consume on this data dir cannot start meanwhile; "
                "Ctrl-C stops it, nothing is lost)",
                file=sys.stderr,
            )
    return await in_process(settings, options, prices, bar, live_group=args.group)


ROUTE_HINT = "POST /v1/admin/replay"


def request_body(options: ReplayOptions, prices: PriceFile | None) -> dict[str, Any]:
    from gateway.pricing.pricefile import price_document

    return {
        "since": None if options.since is None else options.since.isoformat(),
        "fromPosition": options.from_position,
        "reprice": options.reprice,
        "full": options.full,
        "dropMissing": options.drop_missing,
        "dryRun": options.dry_run,
        "health": options.health,
        "prices": None if prices is None else price_document(prices),
    }


async def via_service(
    url: str,
    options: Any,
    prices: Any,
    api_key: str | None,
    progress: Any,
    store: Mapping[str, str] = MappingProxyType({}),
) -> dict[str, Any] | None:
    """The report of a replay run by the service at ``url``; None when nothing answers there,
    or the service does not replay (404: e.g. a gateway whose projection runs elsewhere)."""
    import aiohttp

    headers = {**store, **({"authorization": f"Bearer {api_key}"} if api_key else {})}
    timeout = aiohttp.ClientTimeout(total=None, connect=5, sock_read=300)
    started = False  # the service took the replay: from then on, going away is not "nobody there"
    try:
        async with (
            aiohttp.ClientSession(timeout=timeout) as session,
            session.post(
                f"{url.rstrip('/')}/v1/admin/replay", json=request_body(options, prices), headers=headers
            ) as response,
        ):
            if response.status == 404:
                return None
            started = response.status == 200
            if response.status != 200:
                body = await response.json(content_type=None)
                message = body.get("error", {}).get("message") if isinstance(body, dict) else body
                raise ReplayFailed(f"{url} answered {response.status}: {message}")
            async for raw in response.content:
                if not raw.strip():
                    continue
                line = json.loads(raw)
                if line.get("type") == "progress":
                    progress(int(line["done"]), int(line["total"]))
                elif line.get("type") == "result":
                    report: dict[str, Any] = line["report"]
                    return report
                elif line.get("type") == "error":
                    raise ReplayFailed(str(line.get("message")))
            raise ReplayFailed(f"{url} ended the replay stream without a result")
    except (aiohttp.ClientConnectionError, aiohttp.ClientPayloadError, TimeoutError) as e:
        if not started:
            return None  # nobody there: the caller replays in-process
        # the service went away mid-replay (a restart, a crash): replaying here now would fight it
        # for the store as it comes back; a full rebuild it began runs again when it starts
        again = " (it runs the full rebuild again when it starts)" if options.full else ""
        raise ReplayFailed(
            f"the replay at {url} was cut short: {type(e).__name__}: {e}; run it again once {url} answers{again}"
        ) from e


async def in_process(
    settings: Settings,
    options: ReplayOptions,
    prices: PriceFile | None,
    progress: Progress | None,
    *,
    live_group: str | None,
) -> dict[str, Any]:
    """Replay in this process over the DuckDB file (which no other process may hold)."""
    import duckdb

    from analytics.store import AnalyticsStore, StoreError
    from consumers.pipeline import analytics_path, build_sinks
    from consumers.replay import Replayer, ReplayError
    from consumers.replay_sources import build_replay_source
    from gateway.pricing.base import PriceBook
    from gateway.pricing.book import CompositePriceBook, load_price_book
    from gateway.pricing.pricefile import PriceFileError

    book: PriceBook | None = None
    if options.reprice:
        try:
            book = CompositePriceBook(prices) if prices is not None else load_price_book(settings.price_file)
        except PriceFileError as e:
            raise ReplayFailed(e.message) from e
    if not settings.kafka_bootstrap_servers:
        from gateway.eventlog.factory import EMBEDDED_LOG_FILE

        log_file = settings.data_dir / EMBEDDED_LOG_FILE
        if not log_file.is_file():
            # a mistyped data dir was created, given an empty DuckDB file, and replayed as empty
            raise ReplayFailed(f"no event log at {log_file}: is LLM_GATEWAY_DATA_DIR the gateway's data dir?")
    path = analytics_path(settings)
    created = not path.exists()
    store = AnalyticsStore(path)
    done = False
    try:
        try:
            await store.open()
        except (duckdb.IOException, StoreError) as e:
            raise ReplayFailed(
                f"cannot open {path} for writing ({e}); if a gateway or consumer owns it, "
                "let it replay: give its --url (and an admin --api-key)"
            ) from e
        replayer = Replayer(
            build_replay_source(settings),
            store,
            build_sinks(settings, store, live=False),
            price_book=book,
            progress=progress,
            live_group=live_group,
        )
        report = (await replayer.run(options)).to_dict()
        done = True
        return report
    except ReplayError as e:
        raise ReplayFailed(str(e)) from e
    finally:
        await store.close()
        if created and (not done or options.dry_run):
            # a store this replay made and did not fill (it failed, or was a dry run, which
            # writes nothing): left behind, ``costs`` read it as the whole history and said
            # "total $0" for a tenant that spent money (a review)
            remove_store(path)


def remove_store(path: Path) -> None:
    """Remove the DuckDB file ``path`` with its write-ahead log and spill directory."""
    for leftover in (path, path.with_name(path.name + ".wal")):
        leftover.unlink(missing_ok=True)
    shutil.rmtree(path.with_name(path.name + ".tmp"), ignore_errors=True)


__all__ = ["in_process", "register", "run", "via_service"]
