"""The gateway's own work per request, without sockets: the floor under the CPU target.

``serve`` spends its CPU on two things per non-streaming call: HTTP plumbing (aiohttp parsing
and writing the client's request and answer, and the upstream exchange through aiohttp's
client), which the minimal pass-through proxy pays too, and the gateway's own work (validation,
routing, the adapter's request body and answer parsing, pricing, the usage event and its durable
append, the cost line, health and metrics, the OpenAI answer). This script times the second part
in one process: the real app (``create_app``: the embedded SQLite log, the real price book,
health, metrics, logging tuned as ``serve`` does and writing to a file), its real middleware and
handler, with the OpenAI adapter's HTTP exchange replaced by the bench upstream's canned answer
(its request body is still built and encoded, its answer still decoded and parsed). Then each
step alone, so the table says where the time goes.

With ``--servers`` it also measures the minimal proxy and the gateway under wrk in the same run
(json, c=32, 0 ms upstream) and prints the floor this implies: the minimal proxy's CPU per
request (plumbing) plus the gateway's own work, as a multiple of the minimal proxy's::

    python -m tests.bench.request_path [--calls 20000] [--servers] [--smoke]
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import logging
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any

import orjson
from aiohttp import web
from aiohttp.test_utils import make_mocked_request

from gateway.api.responses import chat_completion
from gateway.api.state import STATE
from gateway.api.validation import parse_chat
from gateway.app import create_app
from gateway.events import UsageEvent
from gateway.health.plugin import HEALTH
from gateway.metrics import METRICS
from gateway.providers import openai_wire as wire
from gateway.runtime import tune_gc, tune_logging
from gateway.settings import Settings
from gateway.types import CAPABILITIES, ChatRequest, ChatResult
from gateway.usage import AttemptFacts, CallContext, UsageRecorder
from tests.bench.common import fmt, say, table

#: the wrk script's request (tests/bench/post.lua) and the bench upstream's answer (upstream.py)
BODY = b'{"model":"gpt-4o","messages":[{"role":"user","content":"Say hello in ten words"}],"max_tokens":64}'
HEADERS = {"Content-Type": "application/json", "Authorization": "Bearer sk-bench", "Content-Length": str(len(BODY))}


def canned_answer() -> bytes:
    from tests.bench.upstream import _json_reply

    return _json_reply().split(b"\r\n\r\n", 1)[1]


class CannedOpenAI:
    """The OpenAI adapter's work without its HTTP exchange: build and encode the request body,
    decode and parse the answer."""

    name = "openai"
    options = frozenset(CAPABILITIES)

    def __init__(self, answer: bytes) -> None:
        self.answer = answer
        #: wait one loop turn for the "upstream" answer, as calls in flight together do
        self.yield_turn = False

    async def complete(self, request: ChatRequest) -> ChatResult:
        if self.yield_turn:
            await asyncio.sleep(0)
        body = wire.build_body(request, model=request.model, stream=False)
        orjson.dumps(body)
        return wire.parse_response(
            orjson.loads(self.answer), provider=self.name, requested_model=request.model, request_id="req-up"
        )

    def stream(self, request: ChatRequest) -> Any:
        raise NotImplementedError("json calls only")


class _Body:
    """What ``request.read()`` reads: the body once, then the end."""

    def __init__(self, data: bytes) -> None:
        self._data: bytes | None = data

    def set_read_chunk_size(self, size: int) -> None:
        return None

    async def readany(self) -> bytes:
        data, self._data = self._data, None
        return data or b""


class _Connected:
    """The client's transport as the gateway looks at it: open (a mock's ``is_closing()`` is a
    truthy mock: the gateway took the client for gone)."""

    def is_closing(self) -> bool:
        return False

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return default


def _request(app: web.Application, match_info: Any) -> web.Request:
    request = make_mocked_request(
        "POST", "/v1/chat/completions", headers=HEADERS, app=app, payload=_Body(BODY), transport=_Connected()
    )
    if match_info is not None:
        request._match_info = match_info
    return request


Step = Callable[[], Any]
#: calls in flight together in the concurrent run of the whole path
TOGETHER = 16


def _time(fn: Step, calls: int) -> float:
    """CPU µs per call of a synchronous step."""
    started = time.process_time()
    for _ in range(calls):
        fn()
    return (time.process_time() - started) * 1e6 / calls


async def _time_async(fn: Callable[[], Awaitable[Any]], calls: int, *, turn: bool = False) -> float:
    started = time.process_time()
    for _ in range(calls):
        await fn()
        if turn:
            await asyncio.sleep(0)  # the deferred observers run here, as on the next loop turn
    return (time.process_time() - started) * 1e6 / calls


async def measure(calls: int, work: Path) -> list[tuple[str, float]]:
    settings = Settings(data_dir=work / "data", openai_api_key="sk-bench", priority=["openai"])
    answer = canned_answer()
    provider = CannedOpenAI(answer)
    app = create_app(settings, providers={"openai": provider})
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()  # startup and cleanup contexts, as under serve
    try:
        state = app[STATE]
        match_info = await app.router.resolve(_request(app, None))
        match_info.add_app(app)
        handler: Callable[[web.Request], Awaitable[web.StreamResponse]] = match_info.handler
        for middleware in reversed(app.middlewares):
            handler = partial(middleware, handler=handler)
        chain = handler

        # warm up (caches, the SQLite file, first-call imports), then the whole path
        for _ in range(500):
            response = await chain(_request(app, match_info))
            if response.status != 200:
                raise RuntimeError(f"the in-process call failed: {response.status} {getattr(response, 'text', '')}")
        requests = [_request(app, match_info) for _ in range(calls)]
        it = iter(requests)
        gc.collect()
        gc.freeze()  # the mocked requests are not the gateway's garbage
        whole = await _time_async(lambda: chain(next(it)), calls, turn=True)
        del requests

        # the same, TOGETHER calls at a time, each waiting a loop turn for its upstream answer:
        # their events share one group commit, as under concurrency
        provider.yield_turn = True
        requests = [_request(app, match_info) for _ in range(calls)]
        gc.collect()
        gc.freeze()
        started = time.process_time()
        for i in range(0, calls, TOGETHER):
            await asyncio.gather(*(chain(r) for r in requests[i : i + TOGETHER]))
        await asyncio.sleep(0)
        together = (time.process_time() - started) * 1e6 / calls
        provider.yield_turn = False
        del requests

        # each step alone, with the objects one call makes
        body = orjson.loads(BODY)
        parsed = parse_chat(body)
        request = parsed.template
        canned = CannedOpenAI(answer)
        result = await canned.complete(request)
        ctx = CallContext("req_bench", "default", None, "chat.completions", False, "gpt-4o")
        facts = AttemptFacts(
            1, "openai", "gpt-4o", "success", 1.234, http_status=200, served_model=result.model, usage=result.usage
        )
        recorder: UsageRecorder = state.router.recorder
        silent = UsageRecorder(_NullLog(), recorder._prices, clock=recorder._clock)
        event = silent.record(ctx, facts)
        log = recorder._log
        health = app[HEALTH]
        metrics = app[METRICS]
        steps: list[tuple[str, float]] = [
            ("request: JSON decode + validation", _time(lambda: parse_chat(orjson.loads(BODY)), calls)),
            (
                "adapter: upstream body built + encoded, answer decoded + parsed",
                await _time_async(lambda: canned.complete(request), calls),
            ),
            ("usage event: price, build (pydantic)", _time(lambda: silent.record(ctx, facts), calls)),
            ("usage event: JSON + durable SQLite append", _time(lambda: log.publish(event), calls)),
            (
                "cost log line (to a file)",
                _time(lambda: UsageRecorder.log_cost(ctx, "openai", result.model, event.cost_usd), calls),
            ),
            ("health: observe the attempt", _time(lambda: health.observe(_fresh(event)), calls)),
            (
                "metrics: attempt + request",
                _time(
                    lambda: (metrics.observe_event(event), metrics.observe_request("/v1/chat/completions", 200, 0.001)),
                    calls,
                ),
            ),
            ("answer: OpenAI JSON + headers", _time(lambda: _answer(result), calls)),
        ]
        steps.append(("sum of the steps above", sum(v for _, v in steps)))
        steps.append(("whole in-process path (middleware, auth, routing, retry wrapper, all the above)", whole))
        steps.append((f"whole in-process path, {TOGETHER} calls at a time (one group commit per turn)", together))
        return steps
    finally:
        await runner.cleanup()


class _NullLog:
    def publish(self, event: UsageEvent) -> None:
        return None


_n = 0


def _fresh(event: UsageEvent) -> UsageEvent:
    """A new id each time: health counts each attempt once."""
    global _n
    _n += 1
    return event.model_copy(update={"event_id": f"{event.event_id}-{_n}", "created_at": datetime.now(UTC)})


def _answer(result: ChatResult) -> web.Response:
    body = chat_completion("chatcmpl-bench", 1767225600, result.model, result)
    return web.Response(
        body=orjson.dumps(body),
        content_type="application/json",
        headers={
            "x-request-id": "req_bench",
            "x-llm-provider": "openai",
            "x-llm-model": result.model,
            "x-llm-attempts": "1",
            "x-llm-cost-usd": "0.000150",
        },
    )


def servers_cpu(seconds: int, rounds: int) -> dict[str, float]:
    """CPU ms per request of the minimal proxy and the gateway (json, c=32, 0 ms), interleaved."""
    import contextlib

    from tests.bench import servers
    from tests.bench.common import median
    from tests.bench.gateway_overhead import Cell
    from tests.bench.gateway_overhead import measure as load

    cell = Cell(0, False, 32)
    with tempfile.TemporaryDirectory(prefix="bench-path-") as tmp, contextlib.ExitStack() as stack:
        upstream = servers.start_upstream(Path(tmp))
        stack.callback(upstream.stop)
        targets = {
            "minimal": servers.start_minimal(upstream, Path(tmp)),
            "gateway": servers.start_gateway("gateway", upstream, Path(tmp)),
        }
        for child in targets.values():
            stack.callback(child.stop)
        cpu: dict[str, list[float]] = {name: [] for name in targets}
        for _ in range(rounds):
            for name, child in targets.items():
                cpu[name].append(load(child, cell, seconds).cpu_ms)
        return {name: median(values) for name, values in cpu.items()}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m tests.bench.request_path")
    p.add_argument("--calls", type=int, default=20_000)
    p.add_argument("--servers", action="store_true", help="also measure minimal proxy and gateway under wrk")
    p.add_argument("--seconds", type=int, default=3)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--smoke", action="store_true", help="a few hundred calls, no servers (CI)")
    args = p.parse_args(argv)
    calls = 300 if args.smoke else args.calls
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
    with tempfile.TemporaryDirectory(prefix="bench-path-") as tmp:
        # the cost lines go to a file, as serve's stderr does under the bench
        sink = open(Path(tmp) / "gateway.log", "a", buffering=1)
        for handler in logging.getLogger().handlers:
            if isinstance(handler, logging.StreamHandler):
                handler.setStream(sink)
        tune_logging()
        tune_gc()
        try:
            steps = asyncio.run(measure(calls, Path(tmp)))
        finally:
            sink.close()
            gc.unfreeze()
    say(f"{calls} calls")
    print("\n## The gateway's own work per json request (one process, no sockets)\n")
    print(table(["step", "CPU µs per call"], [[name, fmt(us, 1)] for name, us in steps]))
    if args.servers and not args.smoke:
        cpu = servers_cpu(args.seconds, args.rounds)
        whole_ms = steps[-1][1] / 1000
        floor = cpu["minimal"] + whole_ms
        print("\n## Floor implied (json, c=32, 0 ms upstream; medians of interleaved rounds)\n")
        rows = [
            ["minimal proxy CPU ms/request (HTTP plumbing both ways)", fmt(cpu["minimal"], 3)],
            ["gateway CPU ms/request (measured)", fmt(cpu["gateway"], 3), fmt(cpu["gateway"] / cpu["minimal"]) + "x"],
            ["gateway's own work ms/request (above, calls together)", fmt(whole_ms, 3)],
            ["floor = plumbing + own work", fmt(floor, 3), fmt(floor / cpu["minimal"]) + "x"],
            ["own work allowed by the 2.5x target", fmt(1.5 * cpu["minimal"], 3)],
        ]
        print(table(["", "ms", "x minimal"], [r + [""] * (3 - len(r)) for r in rows]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
