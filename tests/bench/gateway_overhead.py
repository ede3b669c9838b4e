"""Gateway overhead, side by side with its baselines in one run (not a test).

Targets, each a separate process, all behind one fast upstream (``tests/bench/upstream.py``):
``direct`` (the upstream itself), ``minimal`` (an aiohttp pass-through, the floor for
Python), ``gateway`` (``llm-gateway serve``, usage events on the embedded log),
``gateway-kafka`` (the same on Kafka) and ``litellm`` (the LiteLLM proxy); optional
``gateway-noproj`` (``serve --no-project``: the embedded log, projection left to a
``consume`` process that does not run here, as for ``gateway-kafka``) and
``gateway-alt`` / ``gateway-kafka-alt`` (``--alt-src``: the gateway, embedded or on Kafka, served
from another source tree, e.g. a patched copy, for a before/after in one run) and ``shaped``
(``tests/bench/shaped_proxy.py``: the minimal proxy doing its plumbing the gateway's way,
without the gateway's work: attribution).
Load: ``wrk`` with ``tests/bench/post.lua``. Rounds interleave every target within each cell (upstream delay x
streaming x concurrency); ratios are taken per round, then the median across rounds.

    python -m tests.bench.gateway_overhead --smoke                 # seconds; CI
    python -m tests.bench.gateway_overhead --install               # wrk (apt), LiteLLM (venv)
    python -m tests.bench.gateway_overhead --start-kafka           # full run, private broker

Server CPU ms/request: /proc/<pid>/stat utime+stime around the load window over the
requests served. Peak RSS: /proc/<pid>/status VmHWM.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import os
import subprocess
import sys
import tempfile
from collections import defaultdict
from dataclasses import dataclass, replace
from pathlib import Path

from tests.bench import servers
from tests.bench.common import (
    BENCH_DIR,
    Child,
    Target,
    cpu_seconds,
    fmt,
    machine,
    median,
    peak_rss_mb,
    say,
    services,
    table,
    targets_table,
)

LUA = BENCH_DIR / "post.lua"
GATEWAYS = ("gateway", "gateway-alt", "gateway-noproj", "gateway-kafka", "gateway-kafka-alt")


@dataclass(frozen=True)
class Cell:
    delay_ms: int
    stream: bool
    concurrency: int

    @property
    def mode(self) -> str:
        return "stream" if self.stream else "json"


@dataclass
class Sample:
    rps: float
    p50_ms: float
    p99_ms: float
    cpu_ms: float
    rss_mb: float
    errors: int
    requests: int


Results = dict[tuple[str, Cell], list[Sample]]


def run_wrk(port: int, cell: Cell, seconds: int) -> dict[str, float]:
    url = f"http://127.0.0.1:{port}/v1/chat/completions"
    cmd = ["wrk", "-t1", f"-c{cell.concurrency}", f"-d{seconds}s", "--timeout", "10s", "-s", str(LUA), url]
    if cell.stream:
        cmd += ["--", "stream"]
    env = {**os.environ, "BENCH_API_KEY": servers.BENCH_KEY}
    out = subprocess.run(cmd, capture_output=True, text=True, check=True, timeout=seconds + 60, env=env).stdout
    line = next(x for x in out.splitlines() if x.startswith("BENCH "))
    return json.loads(line.removeprefix("BENCH "))


def measure(server: Child, cell: Cell, seconds: int) -> Sample:
    before = cpu_seconds(server.pid)
    result = run_wrk(server.port, cell, seconds)
    cpu = cpu_seconds(server.pid) - before
    n = int(result["requests"])
    return Sample(
        rps=n / (result["duration_us"] / 1e6),
        p50_ms=result["p50_us"] / 1000,
        p99_ms=result["p99_us"] / 1000,
        cpu_ms=cpu * 1000 / max(n, 1),
        rss_mb=peak_rss_mb(server.pid),
        errors=int(result["socket_errors"] + result["non2xx"]),
        requests=n,
    )


def start_targets(args: argparse.Namespace, kafka: str | None, log_dir: Path, stack: contextlib.ExitStack) -> dict:
    upstream = servers.start_upstream(log_dir)
    stack.callback(upstream.stop)
    targets: dict[str, Child] = {"direct": upstream}
    starters = {
        "minimal": lambda: servers.start_minimal(upstream, log_dir),
        "shaped": lambda: servers.start_shaped(upstream, log_dir),
        "gateway": lambda: servers.start_gateway("gateway", upstream, log_dir),
        "gateway-noproj": lambda: servers.start_gateway("gateway-noproj", upstream, log_dir, project=False),
        "gateway-alt": lambda: servers.start_gateway("gateway-alt", upstream, log_dir, src=args.alt_src),
        "gateway-kafka": lambda: servers.start_gateway("gateway-kafka", upstream, log_dir, kafka) if kafka else None,
        "gateway-kafka-alt": lambda: (
            servers.start_gateway("gateway-kafka-alt", upstream, log_dir, kafka, src=args.alt_src) if kafka else None
        ),
        "litellm": lambda: servers.start_litellm(upstream, log_dir) if servers.litellm_available() else None,
    }
    for name in args.targets:
        if name == "direct":
            continue
        say(f"starting {name}")
        child = starters[name]()
        if child is None:
            why = "no Kafka" if name.startswith("gateway-kafka") else "no LiteLLM venv; see --install"
            say(f"{name}: SKIPPED ({why})")
            continue
        stack.callback(child.stop)
        targets[name] = child
    return targets


def run_rounds(args: argparse.Namespace, targets: dict[str, Child], cells: list[Cell]) -> Results:
    results: Results = defaultdict(list)
    names = list(targets)
    if args.warmup:
        servers.set_delay(targets["direct"], 0)
        for name, (stream) in itertools.product(names, (False, True)):
            measure(targets[name], Cell(0, stream, 8), args.warmup)
    for r in range(args.rounds):
        order = names[r % len(names) :] + names[: r % len(names)]
        for cell in cells:
            servers.set_delay(targets["direct"], cell.delay_ms)
            for name in order:
                sample = measure(targets[name], cell, args.duration)
                results[(name, cell)].append(sample)
                say(f"round {r + 1} {cell} {name}: {sample.rps:,.0f} rps, p50 {sample.p50_ms:.2f} ms")
    return results


def per_round(results: Results, a: str, b: str, cell: Cell, metric: str, op: str) -> float | None:
    """Median over rounds of a (metric of a) op (metric of b) taken in the same round."""
    pairs = list(zip(results.get((a, cell), []), results.get((b, cell), []), strict=False))
    if not pairs:
        return None
    values = [
        getattr(x, metric) / getattr(y, metric) if op == "/" else getattr(x, metric) - getattr(y, metric)
        for x, y in pairs
        if op != "/" or getattr(y, metric)
    ]
    return median(values) if values else None


def results_table(results: Results, cells: list[Cell], names: list[str]) -> str:
    rows = []
    for cell in cells:
        for name in names:
            samples = results.get((name, cell))
            if not samples:
                continue
            rows.append(
                [
                    name,
                    f"{cell.delay_ms} ms",
                    cell.mode,
                    str(cell.concurrency),
                    fmt(median([s.rps for s in samples]), 0),
                    fmt(median([s.p50_ms for s in samples])),
                    fmt(median([s.p99_ms for s in samples])),
                    fmt(per_round(results, name, "direct", cell, "p50_ms", "-")),
                    fmt(median([s.cpu_ms for s in samples]), 3),
                    fmt(per_round(results, name, "minimal", cell, "cpu_ms", "/")),
                    fmt(max(s.rss_mb for s in samples), 0),
                    str(sum(s.errors for s in samples)),
                ]
            )
    headers = ["target", "upstream delay", "mode", "conc", "RPS", "p50 ms", "p99 ms", "+p50 vs direct ms",
               "server CPU ms/req", "CPU x minimal", "peak RSS MB", "errors"]  # fmt: skip
    return table(headers, rows)


def check_targets(results: Results, cells: list[Cell], names: list[str]) -> list[Target]:
    high = max(c.concurrency for c in cells)
    conc = 32 if any(c.concurrency == 32 for c in cells) else high
    json_hi, stream_hi, json_c1 = Cell(0, False, conc), Cell(0, True, conc), Cell(0, False, 1)
    no_litellm = (
        ""
        if "litellm" in names
        else "LiteLLM not in --targets" + ("" if servers.litellm_available() else " (not installed: --install)")
    )

    def erred(*cells: tuple[str, Cell]) -> bool:
        """A cell the figure is made of had an error: a figure of failed answers says nothing."""
        return any(s.errors or not s.requests for cell in cells for s in results.get(cell, []))

    out = []
    for gw in (g for g in GATEWAYS if g in names):
        rss = max((s.rss_mb for (n, _), ss in results.items() if n == gw for s in ss), default=None)
        cpu = per_round(results, gw, "minimal", json_hi, "cpu_ms", "/")
        rps = per_round(results, gw, "litellm", json_hi, "rps", "/")
        added = per_round(results, gw, "direct", json_c1, "p50_ms", "-")
        stream = per_round(results, gw, "minimal", stream_hi, "rps", "/")
        targets = [
            (Target(f"{gw}: CPU/req vs minimal (json, c={conc})", cpu, 2.5, True, "x"), (json_hi,), "minimal"),
            (Target(f"{gw}: RPS vs LiteLLM (json, c={conc})", rps, 10, False, "x", no_litellm), (json_hi,), "litellm"),
            (Target(f"{gw}: added p50 over direct (json, c=1)", added, 0.5, True, " ms"), (json_c1,), "direct"),
            (Target(f"{gw}: stream RPS vs minimal (c={conc})", stream, 0.5, False, "x"), (stream_hi,), "minimal"),
            (Target(f"{gw}: peak RSS under load", rss, 120, True, " MB"), tuple(cells), None),
        ]
        for target, used, base in targets:
            if erred(*((gw, c) for c in used), *(((base, c) for c in used) if base else ())):
                target = replace(target, value=None, note="errors in its cells (see ERRORS below)")
            out.append(target)
    return out


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m tests.bench.gateway_overhead", description=__doc__.split("\n")[0])
    p.add_argument("--smoke", action="store_true", help="one short round of a few cells (CI)")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--duration", type=int, default=5, help="seconds of load per cell")
    p.add_argument("--warmup", type=int, default=1, help="seconds of warm-up per target (0: none)")
    p.add_argument("--concurrency", type=int, nargs="+", default=[1, 32, 64])
    p.add_argument("--delays", type=int, nargs="+", default=[0, 50], help="upstream delays, ms")
    p.add_argument("--modes", nargs="+", default=["json", "stream"], choices=["json", "stream"])
    p.add_argument("--targets", nargs="+", default=["direct", "minimal", "gateway", "gateway-kafka", "litellm"])
    p.add_argument(
        "--alt-src", type=Path, help="target gateway-alt: serve from this source tree (before/after a patch)"
    )
    p.add_argument("--install", action="store_true", help="install wrk (apt) and LiteLLM (venv) if missing")
    p.add_argument("--start-kafka", action="store_true", help="start a private broker without LLM_GATEWAY_TEST_KAFKA")
    args = p.parse_args(argv)
    if args.alt_src and not any(name.endswith("-alt") for name in args.targets):
        args.targets.insert(args.targets.index("gateway") + 1, "gateway-alt")
    if args.smoke:
        # a warm-up second per target: LiteLLM answers its first requests in about a second
        args.rounds, args.duration, args.warmup, args.delays, args.concurrency = 1, 1, 1, [0], [1, 32]
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.install:
        servers.install_tools()
    if not servers.wrk_available():
        say("wrk is missing: run with --install (apt-get install wrk)")
        return 2
    cells = [Cell(d, m == "stream", c) for d in args.delays for m in args.modes for c in args.concurrency]
    want_kafka = any(name.startswith("gateway-kafka") for name in args.targets)
    with (
        services(kafka=want_kafka, postgres=False, start=args.start_kafka) as svc,
        tempfile.TemporaryDirectory(prefix="bench-overhead-") as tmp,
        contextlib.ExitStack() as stack,
    ):
        targets = start_targets(args, svc.kafka, Path(tmp), stack)
        results = run_rounds(args, targets, cells)
    names = [n for n in args.targets if n in targets]
    print(f"\n## Gateway overhead ({machine()})\n")
    print(f"{args.rounds} interleaved rounds x {args.duration} s per cell; medians over rounds; wrk -t1")
    skipped = [n for n in args.targets if n not in targets]
    print(f"skipped: {', '.join(skipped)} (no Kafka / no LiteLLM venv)\n" if skipped else "")
    print(results_table(results, cells, names))
    print()
    print(targets_table(check_targets(results, cells, names)))
    broken = [f"{n} {c}" for (n, c), ss in results.items() if any(s.errors or not s.requests for s in ss)]
    if broken:
        print(f"\nERRORS (non-2xx or socket errors, or no request served): {', '.join(broken)}")
    return 1 if broken else 0


if __name__ == "__main__":
    sys.exit(main())
