"""The memory floor of the one-process embedded ``serve``: what DuckDB adds to a process, measured
step by step, against the gateway without it under load, in one run (not a test).

The issue's limit (peak RSS under load at most 120 MB) passes in Kafka mode and with ``serve
--no-project``, where no DuckDB is in the gateway's process, and is missed by the default
one-process ``serve``, which projects into DuckDB in the same process. This script measures
whether any one-process design can meet it:

1. **DuckDB's share.** A fresh child process takes the embedded ``serve``'s steps one at a time
   and reports its memory after each (``/proc/self/status``): the interpreter; the gateway's
   modules; ``import duckdb``; the analytics store opened as ``serve`` opens it (the product's
   schema, the 128MB ``duckdb_memory_limit``); the projector's DuckDB sinks (facts and health
   history, ``consumers.pipeline.build_sinks`` without Postgres) applying ``--batches`` batches of
   5,000 of the bench's events. DuckDB's share is the peak at the end less the peak before
   ``import duckdb``.
2. **The gateway without DuckDB, under load.** ``serve --no-project`` under wrk (json, c=32,
   0 ms upstream) for ``--seconds``; then the one-process ``serve`` the same way.

The floor of a one-process ``serve`` is (2)'s peak plus (1)'s share: the same gateway, with the
same DuckDB work beside it. Shared library pages count in RSS (``RssFile``) as in the bench's
peaks.

    python -m tests.bench.memory_floor [--seconds 20] [--batches 20] [--smoke]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import subprocess
import sys
import tempfile
from pathlib import Path

# the bench's helpers are imported where used: the child's first steps measure a bare process

LIMIT_MB = 120.0
BATCH = 5_000
#: events of the first batch: the least a one-process ``serve`` stores
FIRST = 100
_FIELDS = ("VmRSS", "RssAnon", "RssFile", "VmHWM")
GATEWAY = "+ the gateway's modules (`serve --no-project`)"
STORED = f"+ {FIRST} events through DuckDB facts + health history"


def _status() -> dict[str, float]:
    """This process's memory figures, in MB."""
    found: dict[str, float] = {}
    with open("/proc/self/status") as status:
        for line in status:
            key, _, value = line.partition(":")
            if key in _FIELDS:
                found[key] = int(value.split()[0]) / 1024
    return found


def _step(name: str) -> None:
    print(json.dumps({"step": name, **_status()}), flush=True)


def child(batches: int) -> None:
    """The embedded ``serve``'s steps, in this process, one at a time (``--child``)."""
    _step("python")
    import gateway.server  # noqa: F401 - what `serve --no-project` runs: no DuckDB in it
    from gateway.cli import build_parser
    from tests.bench import eventgen

    build_parser()  # with every command's parser, as `llm-gateway serve` builds it

    if "duckdb" in sys.modules:
        raise SystemExit("the gateway's modules import duckdb: the steps below would not measure it")
    _step(GATEWAY)
    import duckdb  # noqa: F401 - the step measured

    from analytics.store import AnalyticsStore
    from consumers.pipeline import build_sinks
    from gateway.event_json import decode_event
    from gateway.settings import Settings

    _step("+ import duckdb, the projector's modules")
    with tempfile.TemporaryDirectory(prefix="bench-floor-") as work:
        settings = Settings(data_dir=Path(work))
        store = AnalyticsStore(
            Path(work) / "analytics.duckdb", memory_limit=settings.duckdb_memory_limit, threads=settings.duckdb_threads
        )
        sinks = build_sinks(settings, store, live=True)

        async def apply(count: int, start: int) -> None:
            events = [decode_event(value) for _, value, _ in eventgen.encoded(count, start)]
            for sink in sinks:
                await sink.apply(events)

        async def run() -> None:
            await store.open()
            for sink in sinks:
                await sink.start()
            _step("+ analytics store open (product schema, 128MB limit)")
            await apply(FIRST, 0)
            _step(STORED)
            for batch in range(batches):
                await apply(BATCH, FIRST + batch * BATCH)
            _step(f"+ {batches} batches of {BATCH:,} (the projector's batch)")
            await store.close()

        asyncio.run(run())


def duckdb_steps(batches: int) -> list[dict[str, float | str]]:
    from tests.bench.common import REPO

    done = subprocess.run(
        [sys.executable, "-m", "tests.bench.memory_floor", "--child", "--batches", str(batches)],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
    )
    return [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]


def share_mb(steps: list[dict[str, float | str]]) -> float:
    """What DuckDB adds before it has stored more than a first batch: the peak then, less the
    peak with the gateway's modules loaded (a lower bound: the projector's batches add more)."""
    by_name = {s["step"]: float(s["VmHWM"]) for s in steps}
    return by_name[STORED] - by_name[GATEWAY]


def report(steps: list[dict[str, float | str]], noproj: float, embedded: float, seconds: int) -> str:
    from tests.bench.common import Target, fmt, table, targets_table

    rows = [[str(s["step"]), *(fmt(float(s[k]), 1) for k in _FIELDS)] for s in steps]
    share = share_mb(steps)
    floor = noproj + share
    out = ["## DuckDB in a process, step by step (MB)", "", table(["step", *_FIELDS], rows), ""]
    out += [f"## Under load: json, c=32, 0 ms upstream, {seconds} s each (peak RSS, MB)", ""]
    out.append(
        table(
            ["", "MB"],
            [
                ["`serve --no-project` (no DuckDB in the process)", fmt(noproj, 1)],
                [f"+ DuckDB's share: imported, store open, {FIRST} events stored (above)", fmt(share, 1)],
                ["= floor of a one-process `serve`", fmt(floor, 1)],
                ["`serve` (one process, measured)", fmt(embedded, 1)],
            ],
        )
    )
    targets = [
        Target("peak RSS, serve --no-project", noproj, LIMIT_MB, True, " MB"),
        Target("floor of a one-process serve", floor, LIMIT_MB, True, " MB", "--no-project's peak + DuckDB's share"),
        Target("peak RSS, one-process serve", embedded, LIMIT_MB, True, " MB"),
    ]
    out += ["", targets_table(targets)]
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m tests.bench.memory_floor", description=__doc__.split("\n")[0])
    p.add_argument("--seconds", type=int, default=20, help="seconds of load per serve mode")
    p.add_argument("--batches", type=int, default=20, help="batches of 5,000 events through the DuckDB sinks")
    p.add_argument("--smoke", action="store_true", help="1 batch, 3 s of load (CI)")
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    batches, seconds = (1, 3) if args.smoke else (args.batches, args.seconds)
    if args.child:
        child(batches)
        return 0
    from tests.bench import servers
    from tests.bench.common import say
    from tests.bench.sustained_memory import sustain

    if not servers.wrk_available():
        raise SystemExit("wrk is missing: python -m tests.bench.gateway_overhead --install")
    say(f"DuckDB's steps in a child process ({FIRST + batches * BATCH:,} events)")
    steps = duckdb_steps(batches)
    peaks = {}
    with tempfile.TemporaryDirectory(prefix="bench-floor-") as work, contextlib.ExitStack() as stack:
        log_dir = Path(work)
        upstream = servers.start_upstream(log_dir)
        stack.callback(upstream.stop)
        for name, project in (("gateway-noproj", False), ("gateway", True)):
            server = servers.start_gateway(name, upstream, log_dir, project=project)
            try:
                peaks[name] = sustain(server, name, seconds).peak_mb
                if not project and "duckdb" in Path(f"/proc/{server.pid}/maps").read_text():
                    raise SystemExit("serve --no-project has DuckDB loaded: the floor would count it twice")
            finally:
                server.stop()
    print(report(steps, peaks["gateway-noproj"], peaks["gateway"], seconds))
    return 0


if __name__ == "__main__":
    sys.exit(main())
