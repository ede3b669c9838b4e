"""The adapters' HTTP client alone: CPU per call of the gateway's ``UpstreamClient`` against
``aiohttp.ClientSession`` (what the adapters used before) and a bare asyncio protocol that does
nothing but write a canned request and cut the answer by its length (the floor), in one
process, against the bench upstream (``tests/bench/upstream.py``), interleaved round by round::

    python -m tests.bench.upstream_client [--calls 20000] [--concurrency 32] [--rounds 3] [--stream]

Each call does what an adapter does around the exchange: the JSON body encoded, the answer
read whole (json) or piece by piece (stream) and, for json, decoded.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from collections.abc import Awaitable, Callable, Coroutine
from pathlib import Path
from tempfile import TemporaryDirectory
from typing import Any

import aiohttp
import orjson

from gateway.providers.upstream_http import UpstreamClient
from gateway.providers.upstream_response import Timeout
from tests.bench import servers
from tests.bench.common import fmt, machine, median, say, table

BODY = {"model": "gpt-4o", "messages": [{"role": "user", "content": "Say hello in ten words"}], "max_tokens": 64}
HEADERS = {"content-type": "application/json", "authorization": "Bearer sk-bench"}

Call = Callable[[], Awaitable[None]]


async def _run(calls: int, concurrency: int, call: Call) -> float:
    """CPU µs per call over ``calls`` calls, ``concurrency`` at a time (after a warm-up)."""

    async def worker(n: int) -> None:
        for _ in range(n):
            await call()

    await asyncio.gather(*(worker(4) for _ in range(concurrency)))
    started = time.process_time()
    await asyncio.gather(*(worker(calls // concurrency) for _ in range(concurrency)))
    return (time.process_time() - started) / (calls // concurrency * concurrency) * 1e6


async def _consume(resp: Any, stream: bool) -> None:
    """What an adapter does with the answer: a stream read piece by piece, json read and decoded
    (the same calls on aiohttp's response and the gateway's)."""
    if stream:
        while await resp.content.readany():
            pass
    else:
        orjson.loads(await resp.read())


async def ours(url: str, body: dict[str, object], calls: int, concurrency: int) -> float:
    timeout = Timeout(total=120, connect=5, read=60 if body.get("stream") else None)
    async with UpstreamClient() as client:

        async def call() -> None:
            async with client.post(url, data=orjson.dumps(body), headers=HEADERS, timeout=timeout) as resp:
                await _consume(resp, bool(body.get("stream")))

        return await _run(calls, concurrency, call)


async def aiohttp_client(url: str, body: dict[str, object], calls: int, concurrency: int) -> float:
    timeout = aiohttp.ClientTimeout(total=120, sock_connect=5)
    connector = aiohttp.TCPConnector(limit=0, limit_per_host=256, ttl_dns_cache=300)
    async with aiohttp.ClientSession(connector=connector) as session:

        async def call() -> None:
            async with session.post(url, data=orjson.dumps(body), headers=HEADERS, timeout=timeout) as resp:
                await _consume(resp, bool(body.get("stream")))

        return await _run(calls, concurrency, call)


class _Floor(asyncio.Protocol):
    """One connection of the floor client: the answer is complete when its known length is in."""

    def __init__(self, answer_length: int) -> None:
        self.length = answer_length
        self.received = 0
        self.waiter: asyncio.Future[None] | None = None
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.received += len(data)
        if self.received >= self.length and self.waiter is not None:
            self.received = 0
            self.waiter.set_result(None)


async def floor(url: str, body: dict[str, object], calls: int, concurrency: int) -> float:
    loop = asyncio.get_running_loop()
    port = int(url.split(":")[2].split("/")[0])
    encoded = orjson.dumps(body)
    head = (
        f"POST /v1/chat/completions HTTP/1.1\r\nhost: 127.0.0.1:{port}\r\ncontent-type: application/json\r\n"
        f"content-length: {len(encoded)}\r\n\r\n"
    ).encode()
    reader, writer = await asyncio.open_connection("127.0.0.1", port)  # learn the answer's length once
    writer.write(head + encoded)
    await writer.drain()
    answer = await _one_answer(reader, bool(body.get("stream")))
    writer.close()
    free: list[_Floor] = []
    for _ in range(concurrency):
        _, proto = await loop.create_connection(lambda: _Floor(len(answer)), "127.0.0.1", port)
        free.append(proto)

    async def call() -> None:
        conn = free.pop()
        conn.waiter = loop.create_future()
        assert conn.transport is not None
        conn.transport.writelines((head, orjson.dumps(body)))
        await conn.waiter
        free.append(conn)

    try:
        return await _run(calls, concurrency, call)
    finally:
        for conn in free:
            if conn.transport is not None:
                conn.transport.close()


async def _one_answer(reader: asyncio.StreamReader, stream: bool) -> bytes:
    head = await reader.readuntil(b"\r\n\r\n")
    if stream:
        return head + await reader.readuntil(b"0\r\n\r\n")
    length = int(head.lower().split(b"content-length:")[1].split(b"\r\n")[0])
    return head + await reader.readexactly(length)


CLIENTS: dict[str, Callable[[str, dict[str, object], int, int], Coroutine[Any, Any, float]]] = {
    "aiohttp ClientSession": aiohttp_client,
    "UpstreamClient (gateway)": ours,
    "bare protocol (floor)": floor,
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.bench.upstream_client", description=__doc__)
    parser.add_argument("--calls", type=int, default=20000)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--stream", action="store_true", help="streaming answers (13 SSE events, chunked)")
    parser.add_argument("--smoke", action="store_true", help="a few seconds: CI")
    args = parser.parse_args(argv)
    if args.smoke:
        args.calls, args.rounds = 640, 1
    body = {**BODY, "stream": True} if args.stream else BODY
    results: dict[str, list[float]] = {name: [] for name in CLIENTS}
    with TemporaryDirectory() as tmp:
        upstream = servers.start_upstream(Path(tmp))
        try:
            url = f"http://127.0.0.1:{upstream.port}/v1/chat/completions"
            for round_no in range(args.rounds):
                for name, client in CLIENTS.items():
                    results[name].append(asyncio.run(client(url, body, args.calls, args.concurrency)))
                say(f"round {round_no + 1}: " + ", ".join(f"{n} {v[-1]:.1f} µs" for n, v in results.items()))
        finally:
            upstream.stop()
    base = median(results["aiohttp ClientSession"])
    rows = [
        [name, fmt(median(values), 1), fmt(min(values), 1), fmt(max(values), 1), fmt(median(values) / base)]
        for name, values in results.items()
    ]
    mode = "stream" if args.stream else "json"
    shape = f"{mode}, c={args.concurrency}, {args.calls} calls x {args.rounds}"
    print(f"\n## Upstream HTTP client, CPU per call ({shape})\n")
    print(machine() + "\n")
    print(table(["client", "CPU µs/call (median)", "min", "max", "x aiohttp"], rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
