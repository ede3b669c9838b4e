"""Where the gateway's CPU goes under load: py-spy samples ``llm-gateway serve`` while wrk
drives it through the bench upstream, then prints the top functions by self and by total time.

    python -m tests.bench.profile_gateway --install            # py-spy into a tools venv
    python -m tests.bench.profile_gateway --seconds 15 --concurrency 32 [--stream] [--kafka]
    python -m tests.bench.profile_gateway --flamegraph /tmp/gw.svg

py-spy samples from outside the process (ptrace; root here), so the gateway runs unmodified.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import re
import subprocess
import sys
import tempfile
from pathlib import Path

from tests.bench import servers
from tests.bench.common import say, services, table
from tests.bench.gateway_overhead import LUA, Cell, measure

TOOLS_VENV = servers.VENVS / "tools"
PY_SPY = TOOLS_VENV / "bin" / "py-spy"
_LINE = re.compile(r":\d+\)$")


def install_py_spy() -> None:
    if not PY_SPY.is_file():
        subprocess.run([sys.executable, "-m", "venv", str(TOOLS_VENV)], check=True)
        subprocess.run([str(TOOLS_VENV / "bin" / "pip"), "install", "-q", "py-spy"], check=True)


def frame_name(frame: str) -> str:
    """``handle (aiohttp/web_protocol.py:512)`` -> ``handle (aiohttp/web_protocol.py)``."""
    frame = _LINE.sub(")", frame)
    return re.sub(r"\(/.*?/(site-packages|lib/python3\.\d+|main)/", "(", frame)


def summarize(raw: Path, top: int) -> tuple[str, str, int]:
    own: collections.Counter[str] = collections.Counter()
    total: collections.Counter[str] = collections.Counter()
    samples = 0
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        frames = [frame_name(f) for f in stack.split(";")]
        n = int(count)
        samples += n
        own[frames[-1]] += n
        for name in set(frames):
            total[name] += n

    def rows(counter: collections.Counter[str]) -> list[list[str]]:
        return [[f"{100 * n / max(samples, 1):.1f}%", name[:110]] for name, n in counter.most_common(top)]

    return table(["self", "function"], rows(own)), table(["total", "function"], rows(total)), samples


def profile(args: argparse.Namespace, kafka: str | None, log_dir: Path) -> Path:
    upstream = servers.start_upstream(log_dir)
    stack = contextlib.ExitStack()
    stack.callback(upstream.stop)
    with stack:
        gateway = servers.start_gateway("gateway", upstream, log_dir, kafka, project=args.project)
        stack.callback(gateway.stop)
        cell = Cell(0, args.stream, args.concurrency)
        measure(gateway, cell, 2)  # warm-up
        url = f"http://127.0.0.1:{gateway.port}/v1/chat/completions"
        wrk = ["wrk", "-t1", f"-c{args.concurrency}", f"-d{args.seconds + 3}s", "-s", str(LUA), url]
        load = subprocess.Popen([*wrk, *(["--", "stream"] if args.stream else [])], stdout=subprocess.PIPE, text=True)
        raw = log_dir / "profile.txt"
        spy = [str(PY_SPY), "record", "-p", str(gateway.pid), "-d", str(args.seconds), "-r", str(args.rate)]
        spy += ["--gil"] if args.gil else []
        subprocess.run([*spy, "-f", "raw", "-o", str(raw)], check=True, capture_output=True)
        if args.flamegraph:
            flame = [str(PY_SPY), "record", "-p", str(gateway.pid), "-d", "5", "-o", args.flamegraph]
            subprocess.run(flame, check=False, capture_output=True)
        out, _ = load.communicate()
        say(next((x for x in out.splitlines() if x.startswith("BENCH ")), "no wrk summary"))
        return raw


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m tests.bench.profile_gateway")
    p.add_argument("--seconds", type=int, default=10)
    p.add_argument("--rate", type=int, default=200, help="py-spy samples per second")
    p.add_argument("--concurrency", type=int, default=32)
    p.add_argument("--stream", action="store_true")
    p.add_argument("--kafka", action="store_true", help="the gateway on Kafka (LLM_GATEWAY_TEST_KAFKA or private)")
    p.add_argument("--no-project", dest="project", action="store_false", help="embedded, projector not in process")
    p.add_argument("--gil", action="store_true", help="only samples holding the GIL (the event loop's real work)")
    p.add_argument("--top", type=int, default=30)
    p.add_argument("--flamegraph", help="also write an SVG flame graph (5 s) to this path")
    p.add_argument("--install", action="store_true", help="install py-spy (and wrk) if missing")
    args = p.parse_args(argv)
    if args.install:
        servers.install_tools(litellm=False)
        install_py_spy()
    if not PY_SPY.is_file() or not servers.wrk_available():
        say("py-spy or wrk missing: run with --install")
        return 2
    with (
        services(kafka=args.kafka, postgres=False, start=args.kafka) as svc,
        tempfile.TemporaryDirectory(prefix="bench-profile-") as tmp,
    ):
        raw = profile(args, svc.kafka, Path(tmp))
        own, total, samples = summarize(raw, args.top)
    mode = "stream" if args.stream else "json"
    variant = "kafka" if args.kafka else ("embedded" if args.project else "embedded, no in-process projector")
    gil = ", GIL holder only" if args.gil else ""
    print(f"\n## Gateway profile ({variant}): {mode}, c={args.concurrency}, {args.seconds} s, {samples} samples{gil}\n")
    print("### self time\n\n" + own + "\n\n### total (inclusive) time\n\n" + total)
    return 0


if __name__ == "__main__":
    sys.exit(main())
