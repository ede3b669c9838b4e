"""The embedded gateway's memory under sustained load, against another tree in the same run.

``gateway_overhead`` interleaves short cells (3 s) over many targets, so no target is ever
under load for long: what a gateway keeps per request for a while (health windows hold a
minute of attempts) or what grows with the stored history (DuckDB) hardly shows there. This
script keeps one ``llm-gateway serve`` (embedded log and projector, as ``serve`` runs by
default) under continuous wrk load (json, 0 ms upstream) and samples its memory every few
seconds; then the same for ``--alt-src`` (e.g. a ``git archive`` of an older commit), so the
two trees meet the same machine in one run. Targets run one after the other (each needs the
load alone): repeat with ``--order alt-first`` to see the drift between them::

    python -m tests.bench.sustained_memory --seconds 90 [--alt-src /path/to/tree] [--smoke]

Printed per target: requests served, server CPU per request, RSS at a quarter, half, three
quarters and the end of the load, the peak (``VmHWM``), and the anonymous RSS at the end
(``RssAnon``: what the process itself holds, without the shared libraries' pages).
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from tests.bench import servers
from tests.bench.common import Child, cpu_seconds, fmt, peak_rss_mb, say, status_mb, table
from tests.bench.gateway_overhead import Cell, run_wrk

#: seconds of load between two memory samples
STEP = 3


@dataclass
class Run:
    name: str
    requests: int = 0
    cpu_ms: float = 0.0
    rss_mb: list[float] = field(default_factory=list)  # after each step
    peak_mb: float = 0.0
    anon_mb: float = 0.0


def sustain(server: Child, name: str, seconds: int) -> Run:
    run = Run(name)
    cell = Cell(delay_ms=0, stream=False, concurrency=32)
    before = cpu_seconds(server.pid)
    for _ in range(max(1, seconds // STEP)):
        result = run_wrk(server.port, cell, STEP)
        run.requests += int(result["requests"])
        run.rss_mb.append(status_mb(server.pid, "VmRSS"))
    run.cpu_ms = (cpu_seconds(server.pid) - before) * 1000 / max(run.requests, 1)
    run.peak_mb = peak_rss_mb(server.pid)
    run.anon_mb = status_mb(server.pid, "RssAnon")
    say(f"{name}: {run.requests:,} requests, peak {run.peak_mb:.0f} MB, anonymous at the end {run.anon_mb:.0f} MB")
    return run


def report(runs: list[Run], seconds: int) -> str:
    def at(run: Run, share: float) -> str:
        return fmt(run.rss_mb[max(0, round(share * len(run.rss_mb)) - 1)], 0)

    headers = ["target", "requests", "CPU ms/req", "RSS 1/4", "RSS 1/2", "RSS 3/4", "RSS end", "peak (VmHWM)"]
    headers.append("RssAnon end")
    rows = [
        [r.name, f"{r.requests:,}", fmt(r.cpu_ms, 3), at(r, 0.25), at(r, 0.5), at(r, 0.75), at(r, 1.0),
         fmt(r.peak_mb, 0), fmt(r.anon_mb, 0)]
        for r in runs
    ]  # fmt: skip
    return f"## Sustained load: json, c=32, 0 ms upstream, {seconds} s per target (MB)\n\n" + table(headers, rows)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m tests.bench.sustained_memory", description=__doc__.split("\n")[0])
    p.add_argument("--seconds", type=int, default=90, help="seconds of continuous load per target")
    p.add_argument("--alt-src", type=Path, help="also run `serve` from this source tree (gateway-alt)")
    p.add_argument("--order", choices=["alt-last", "alt-first"], default="alt-last")
    p.add_argument("--smoke", action="store_true", help="6 s, this tree only (CI)")
    args = p.parse_args(argv)
    if not servers.wrk_available():
        raise SystemExit("wrk is missing: python -m tests.bench.gateway_overhead --install")
    seconds = 6 if args.smoke else args.seconds
    trees: list[tuple[str, Path | None]] = [("gateway", None)]
    if args.alt_src and not args.smoke:
        trees.insert(0 if args.order == "alt-first" else 1, ("gateway-alt", args.alt_src))
    runs = []
    with tempfile.TemporaryDirectory(prefix="bench-sustained-") as work, contextlib.ExitStack() as stack:
        log_dir = Path(work)
        upstream = servers.start_upstream(log_dir)
        stack.callback(upstream.stop)
        for name, src in trees:
            server = servers.start_gateway(name, upstream, log_dir, src=src)
            try:
                runs.append(sustain(server, name, seconds))
            finally:
                server.stop()
    print(report(runs, seconds))
    return 0


if __name__ == "__main__":
    sys.exit(main())
