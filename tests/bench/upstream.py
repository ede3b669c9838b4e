"""A fast OpenAI-compatible upstream for the overhead benchmark (not the test simulator).

A raw asyncio protocol with pre-rendered replies, so that it is never what limits a proxy in
front of it: ``POST /v1/chat/completions`` answers a ``chat.completion`` (or, for a body with
``"stream": true``, an SSE stream of 10 chunks, a usage chunk and ``[DONE]``, chunked
transfer encoding, written at once). ``POST /_bench/delay`` with a body of milliseconds sets
the response delay of the requests that follow (0 ms and 50 ms in the benchmark)::

    python -m tests.bench.upstream --port 9100
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re

WORDS = "Hello from the bench upstream, how can I help?".split(" ")
USAGE = {"prompt_tokens": 5, "completion_tokens": len(WORDS), "total_tokens": 5 + len(WORDS)}
MODEL = "gpt-4o-2024-08-06"
_STREAM = re.compile(rb'"stream"\s*:\s*true')
_LENGTH = re.compile(rb"\r\ncontent-length:\s*(\d+)", re.I)


def _json_reply() -> bytes:
    body = json.dumps(
        {
            "id": "chatcmpl-bench",
            "object": "chat.completion",
            "created": 1767225600,
            "model": MODEL,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": " ".join(WORDS), "refusal": None},
                    "logprobs": None,
                    "finish_reason": "stop",
                }
            ],
            "usage": USAGE,
            "system_fingerprint": "fp_bench",
        }
    ).encode()
    head = f"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {len(body)}\r\n\r\n"
    return head.encode() + body


def _chunk(delta: dict[str, str], finish: str | None) -> dict[str, object]:
    return {
        "id": "chatcmpl-bench",
        "object": "chat.completion.chunk",
        "created": 1767225600,
        "model": MODEL,
        "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}],
    }


def _stream_reply() -> bytes:
    events = [_chunk({"role": "assistant", "content": ""}, None)]
    events += [_chunk({"content": w if i == 0 else " " + w}, None) for i, w in enumerate(WORDS)]
    events += [_chunk({}, "stop")]
    usage = _chunk({}, None) | {"choices": [], "usage": USAGE}
    lines = [f"data: {json.dumps(e)}\n\n".encode() for e in [*events, usage]] + [b"data: [DONE]\n\n"]
    body = b"".join(f"{len(x):x}\r\n".encode() + x + b"\r\n" for x in lines) + b"0\r\n\r\n"
    head = b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n"
    return head + body


JSON_REPLY, STREAM_REPLY = _json_reply(), _stream_reply()
OK_REPLY = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok"


class Upstream(asyncio.Protocol):
    delay = 0.0  # seconds, shared by all connections

    def __init__(self) -> None:
        self._buffer = bytearray()
        self._transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport

    def data_received(self, data: bytes) -> None:
        self._buffer += data
        while (end := self._buffer.find(b"\r\n\r\n")) >= 0:
            head = bytes(self._buffer[:end])
            match = _LENGTH.search(head)
            total = end + 4 + (int(match.group(1)) if match else 0)
            if len(self._buffer) < total:
                return
            body = bytes(self._buffer[end + 4 : total])
            del self._buffer[:total]
            self._answer(head, body)

    def _answer(self, head: bytes, body: bytes) -> None:
        if head.startswith(b"POST /_bench/delay"):
            Upstream.delay = float(body or b"0") / 1000.0
            self._send(OK_REPLY)
            return
        reply = STREAM_REPLY if _STREAM.search(body) else JSON_REPLY
        if Upstream.delay > 0:
            asyncio.get_running_loop().call_later(Upstream.delay, self._send, reply)
        else:
            self._send(reply)

    def _send(self, reply: bytes) -> None:
        if self._transport is not None and not self._transport.is_closing():
            self._transport.write(reply)


async def serve(host: str, port: int) -> None:
    server = await asyncio.get_running_loop().create_server(Upstream, host, port, backlog=1024)
    async with server:
        await server.serve_forever()


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m tests.bench.upstream")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=9100)
    args = parser.parse_args()
    asyncio.run(serve(args.host, args.port))


if __name__ == "__main__":
    main()
