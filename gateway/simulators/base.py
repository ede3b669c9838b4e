"""What every provider simulator shares: the fault plan, request recording, the server.

A simulator is a real aiohttp server. Tests (and people, through ``llm-gateway simulate``)
choose faults for the next requests::

    sim = OpenAISimulator()
    base_url = await sim.start()
    sim.faults.push(Fault("rate_limit", retry_after=2.0), times=2)
    ...
    await sim.stop()

Replies are deterministic so tests can assert exact token counts and costs: the reply text is
``sim.reply``; prompt tokens are the whitespace-separated words of every message (system
included); completion tokens are the words of the reply. Streams send one word per chunk.
Embeddings: a vector of ``embedding_dimensions`` (or the request's dimensions) made from a hash
of the input, of length 1; input tokens are the words of each input (a token array: its length).
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import math
import random
import ssl
import struct
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Literal, Self

from aiohttp import web

FaultKind = Literal[
    "rate_limit",  # 429 with Retry-After (retry_after seconds; retry_after_ms if set)
    "quota",  # 429 meaning out of money / per-day quota
    "overloaded",  # Anthropic 529, Gemini 503 UNAVAILABLE, OpenAI 503
    "server_error",  # 500 (or `status` if given)
    "auth",  # 401 (Gemini: 400 API_KEY_INVALID)
    "bad_request",  # 400 invalid request
    "content_filter",  # 400 content filter (Azure) / refusal / SAFETY block
    "not_found",  # 404 unknown model
    "timeout",  # hold the request for `delay` seconds (longer than the client waits)
    "malformed",  # 200 with a body that is not the vendor's format
    "cut",  # stream: close the connection after `after_chunks` chunks, no clean end
    "stream_error",  # stream: an in-band error event after `after_chunks` chunks (HTTP 200)
    "delay",  # answer normally after `delay` seconds
]


#: the largest request body a simulator with ``max_requests`` keeps (larger ones: ``body`` None)
KEPT_BODY_BYTES = 1 << 20


@dataclass(slots=True)
class Fault:
    kind: FaultKind
    retry_after: float | None = None
    retry_after_ms: int | None = None
    status: int | None = None
    after_chunks: int = 1
    delay: float = 30.0


class FaultPlan:
    """Faults for the next requests, in order; an optional standing fault for all others."""

    def __init__(self) -> None:
        self._queue: deque[Fault] = deque()
        self._always: Fault | None = None

    def push(self, fault: Fault, times: int = 1) -> None:
        for _ in range(times):
            self._queue.append(fault)

    def always(self, fault: Fault | None) -> None:
        """Apply ``fault`` to every request once the queue is empty (None clears it)."""
        self._always = fault

    def clear(self) -> None:
        self._queue.clear()
        self._always = None

    def take(self) -> Fault | None:
        if self._queue:
            return self._queue.popleft()
        return self._always


_SAMPLES: dict[str, Any] = {"string": "sim", "integer": 1, "number": 1.5, "boolean": True, "array": [], "object": {}}


def sample_arguments(schema: Any, root: Any = None, depth: int = 0) -> dict[str, Any]:
    """Arguments a simulated model calls a function with (or a structured answer): a sample value
    for each required property of its JSON Schema (vendors' schema dialects share these keys);
    nested objects and ``$ref`` to the root's ``$defs`` are followed a few levels deep."""
    if not isinstance(schema, dict):
        return {}
    root = schema if root is None else root
    properties: Any = schema.get("properties")
    required: Any = schema.get("required")
    properties = properties if isinstance(properties, dict) else {}
    names = required if isinstance(required, list) else []
    return {name: _sample(properties.get(name), root, depth) for name in names if isinstance(name, str)}


def _sample(spec: Any, root: Any, depth: int) -> Any:
    """A value that fits ``spec`` (in the common cases: the first branch of a union, the first
    of an enum, a type's sample)."""
    if not isinstance(spec, dict) or depth > 8:
        return "sim"
    ref = spec.get("$ref")
    if isinstance(ref, str) and ref.startswith("#/"):
        target: Any = root
        for key in ref[2:].split("/"):
            target = target.get(key) if isinstance(target, dict) else None
        return _sample(target, root, depth + 1)
    for union in ("anyOf", "oneOf", "allOf"):
        branches = spec.get(union)
        if isinstance(branches, list) and branches:
            return _sample(branches[0], root, depth + 1)
    enum = spec.get("enum")
    if isinstance(enum, list) and enum:
        return enum[0]
    if "const" in spec:
        return spec["const"]
    kind = spec.get("type")
    kind = kind[0] if isinstance(kind, list) and kind else kind
    kind = kind.lower() if isinstance(kind, str) else "string"  # Gemini writes STRING
    if kind == "object":
        return sample_arguments(spec, root, depth + 1)
    return _SAMPLES.get(kind, "sim")


@dataclass(slots=True)
class RecordedRequest:
    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    body: Any


@dataclass
class Simulator:
    """Base class: subclasses add their routes in ``routes()`` and render faults their way."""

    name: str = "simulator"
    reply: str = "Hello from the simulator, how can I help?"
    #: the served model the simulator reports (None: echo the requested model)
    served_model: str | None = None
    faults: FaultPlan = field(default_factory=FaultPlan)
    requests: list[RecordedRequest] = field(default_factory=list)
    #: keep only the last this many requests, and of those only the bodies up to
    #: ``KEPT_BODY_BYTES`` (None: all, as tests read them); ``serve --simulate`` kept every body it
    #: was ever sent: 2 GB after a review's load
    max_requests: int | None = None
    #: the length of the vectors of an embedding request that names no dimensions
    embedding_dimensions: int = 8
    _runner: web.AppRunner | None = None
    base_url: str = ""

    # --- to override --------------------------------------------------------------------------
    def routes(self) -> list[web.RouteDef]:
        raise NotImplementedError

    # --- helpers for subclasses ---------------------------------------------------------------
    async def record(self, request: web.Request) -> Any:
        try:
            body = await request.json()
        except ValueError:
            body = None
        # a simulator that keeps only the last requests (the CLI's) keeps no large body: 1,000
        # image requests of 19 MB held 19 GB in ``serve --simulate`` (a review)
        kept = body if self.max_requests is None or len(await request.read()) <= KEPT_BODY_BYTES else None
        self.requests.append(
            RecordedRequest(request.method, request.path, dict(request.query), dict(request.headers), kept)
        )
        if self.max_requests is not None and len(self.requests) > 2 * self.max_requests:
            del self.requests[: -self.max_requests]  # trimmed in halves: amortised O(1) a request
        return body

    async def take_fault(self) -> Fault | None:
        """The fault for this request; sleeps for ``timeout`` and ``delay`` faults."""
        fault = self.faults.take()
        if fault is not None and fault.kind in ("timeout", "delay"):
            await asyncio.sleep(fault.delay)
            return None if fault.kind == "delay" else fault
        return fault

    @staticmethod
    def count_tokens(text: str) -> int:
        return len(text.split())

    def embedding(self, item: Any, dimensions: Any = None, *, as_base64: bool = False) -> list[float] | str:
        """The vector of one input (a text or a token array): the same input, the same vector."""
        size = dimensions if isinstance(dimensions, int) and 0 < dimensions <= 4096 else self.embedding_dimensions
        rng = random.Random(hashlib.sha256(json.dumps(item).encode()).digest())
        values = [rng.uniform(-1.0, 1.0) for _ in range(size)]
        norm = math.sqrt(sum(v * v for v in values)) or 1.0
        vector = [round(v / norm, 6) for v in values]
        if as_base64:  # the vendors' base64: the float32 values, little-endian
            return base64.b64encode(struct.pack(f"<{size}f", *vector)).decode()
        return vector

    def input_tokens(self, item: Any) -> int:
        """An embedding input's tokens: a text's words, a token array's length."""
        return self.count_tokens(item) if isinstance(item, str) else len(item) if isinstance(item, list) else 0

    async def faulty_json(self, request: web.Request, data: bytes, fault: Fault | None) -> web.StreamResponse | None:
        """A JSON answer as a ``malformed`` fault (half of it) or a ``cut`` one (half, then the
        connection dropped) sends it; None for other faults."""
        kind = fault.kind if fault is not None else None
        if kind == "malformed":
            return web.Response(body=data[: len(data) // 2], content_type="application/json")
        if kind == "cut":
            resp = web.StreamResponse(headers={"content-type": "application/json"})
            resp.content_length = len(data)
            await resp.prepare(request)
            await resp.write(data[: len(data) // 2])
            return await self.cut_connection(resp, request)
        return None

    def json_format(self, body: Any) -> tuple[bool, Any]:
        """Whether the request asks for a JSON answer, and its schema (None: any JSON object);
        each vendor's simulator reads its own field (OpenAI ``response_format``, Gemini
        ``responseMimeType``, Ollama ``format``)."""
        return False, None

    def reply_text(self, body: Any) -> str:
        """The answer to a request: ``reply``, or, when it asks for JSON, a sample object of its
        schema (so the SDKs' structured-output helpers parse it), or the reply in an object."""
        wanted, schema = self.json_format(body)
        if not wanted:
            return self.reply
        return json.dumps(sample_arguments(schema) if isinstance(schema, dict) else {"reply": self.reply})

    @staticmethod
    def cut_answer(text: str, max_tokens: Any, stops: Any) -> tuple[str, bool]:
        """``text`` as a model writes it under a length cap (``max_tokens``, in this simulator's
        tokens: words) and stop sequences (a string or a list): cut before the first stop, then
        at the cap; and whether the cap cut it (a ``length`` finish)."""
        stops = [stops] if isinstance(stops, str) else stops if isinstance(stops, list) else []
        found = [text.index(stop) for stop in stops if isinstance(stop, str) and stop and stop in text]
        if found:
            text = text[: min(found)]
        words = text.split(" ")
        if isinstance(max_tokens, int) and not isinstance(max_tokens, bool) and 0 <= max_tokens < len(words):
            return " ".join(words[:max_tokens]), True
        return text, False

    def reply_words(self, text: str | None = None) -> list[str]:
        """The reply (or ``text``) split into stream pieces that concatenate back to it."""
        words = (self.reply if text is None else text).split(" ")
        return [w if i == 0 else " " + w for i, w in enumerate(words)]

    @staticmethod
    def retry_headers(fault: Fault) -> dict[str, str]:
        headers: dict[str, str] = {}
        if fault.retry_after is not None:
            headers["retry-after"] = (
                str(int(fault.retry_after)) if float(fault.retry_after).is_integer() else str(fault.retry_after)
            )
        if fault.retry_after_ms is not None:
            headers["retry-after-ms"] = str(fault.retry_after_ms)
        return headers

    @staticmethod
    async def cut_connection(response: web.StreamResponse, request: web.Request) -> web.StreamResponse:
        """End a started stream abruptly: no terminating chunk, connection closed."""
        transport = request.transport
        if transport is not None:
            transport.abort()
        return response

    # --- server -------------------------------------------------------------------------------
    def app(self) -> web.Application:
        app = web.Application(client_max_size=64 * 1024 * 1024)  # the vendors take 50 MB requests (images)
        app.add_routes(self.routes())
        return app

    async def start(self, host: str = "127.0.0.1", port: int = 0, ssl_context: ssl.SSLContext | None = None) -> str:
        """Serve on ``host:port`` (0: a free port), over TLS with ``ssl_context``; the root URL."""
        self._runner = web.AppRunner(self.app(), access_log=None, handler_cancellation=True, shutdown_timeout=0.5)
        await self._runner.setup()
        site = web.TCPSite(self._runner, host, port, ssl_context=ssl_context)
        await site.start()
        server = site._server
        assert server is not None
        sock = server.sockets[0]  # type: ignore[attr-defined]
        self.port: int = sock.getsockname()[1]
        self.base_url = f"{'https' if ssl_context else 'http'}://{host}:{self.port}"
        return self.base_url

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> Self:
        """Started on a free local port (``async with OpenAISimulator() as sim``), stopped after."""
        await self.start()
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.stop()
