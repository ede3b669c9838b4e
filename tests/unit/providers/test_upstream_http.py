"""The upstream HTTP/1.1 client (``upstream_http`` / ``upstream_connection`` / ``upstream_response``)
against a raw asyncio TCP server whose every answer is scripted byte for byte.

The server records each request it read (request line, headers, body, the TCP connection it came
on), how many connections it accepted, how many were open at once, and how many the client
closed. Each test sets ``server.handler``, which gets a request and writes the raw answer."""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import random
import socket
import ssl
import time
import zlib
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

import pytest
import trustme

from gateway import errors
from gateway.providers import http as gateway_http
from gateway.providers.base import Timeouts
from gateway.providers.google import GoogleProvider
from gateway.providers.upstream_connection import HIGH_WATER
from gateway.providers.upstream_http import CLIENT_GONE, QUEUED, ClientGone, PoolBusy, UpstreamClient
from gateway.providers.upstream_response import BodyCut, ProtocolViolation, Response, Timeout
from gateway.settings import ProviderSettings
from gateway.types import ChatRequest, Message

pytestmark = pytest.mark.timeout(10)

#: generous limits for calls that are not about timeouts: a hang fails the test in seconds
T = Timeout(total=5.0, connect=2.0, read=2.0)


# --- the scripted server ----------------------------------------------------------------------


@dataclass
class Request:
    conn: int  # the index of the TCP connection it came on (0 for the first accepted)
    line: str
    headers: list[tuple[str, str]]
    body: bytes

    def header(self, name: str) -> str | None:
        values = [v for n, v in self.headers if n.lower() == name.lower()]
        assert len(values) <= 1, f"header {name!r} sent {len(values)} times"
        return values[0] if values else None


Handler = Callable[[Request, asyncio.StreamReader, asyncio.StreamWriter], Awaitable[bool]]


async def send(writer: asyncio.StreamWriter, *parts: bytes, delay: float = 0.0) -> None:
    """Write ``parts`` one after another (``delay`` seconds apart)."""
    for i, part in enumerate(parts):
        if i and delay:
            await asyncio.sleep(delay)
        writer.write(part)
        await writer.drain()


async def stall(reader: asyncio.StreamReader) -> bool:
    """Send nothing more until the client closes the connection; then close it."""
    with contextlib.suppress(ConnectionError):
        await reader.read()
    return False


def plain(body: bytes = b"ok", *headers: bytes, status: bytes = b"200 OK", version: bytes = b"HTTP/1.1") -> bytes:
    """A whole answer with a content-length."""
    fields = b"".join(h + b"\r\n" for h in headers)
    return b"%s %s\r\ncontent-length: %d\r\n%s\r\n%s" % (version, status, len(body), fields, body)


def chunked(*pieces: bytes, ext: bytes = b"", trailers: bytes = b"") -> bytes:
    """A chunked body: each piece a chunk (with the extension ``ext``), then ``trailers``."""
    assert all(pieces), "an empty piece would be the last chunk"
    body = b"".join(b"%x%s\r\n%s\r\n" % (len(p), ext, p) for p in pieces)
    return body + b"0\r\n" + trailers + b"\r\n"


CHUNKED_HEAD = b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\ncontent-type: application/x-ndjson\r\n\r\n"


def answer(*raws: bytes) -> Handler:
    """Answer the n-th request with ``raws[n]`` (the last one for all later requests), keep-alive."""
    count = 0

    async def handler(request: Request, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        nonlocal count
        raw = raws[min(count, len(raws) - 1)]
        count += 1
        await send(writer, raw)
        return True

    return handler


def in_pieces(*parts: bytes, delay: float) -> Handler:
    """Answer every request with ``parts``, written ``delay`` seconds apart (keep-alive)."""

    async def handler(request: Request, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        await send(writer, *parts, delay=delay)
        return True

    return handler


def first_stalls(*sent: bytes, then: bytes, delay: float = 0.0) -> Handler:
    """The first connection gets ``sent`` (in pieces ``delay`` apart), then silence until the
    client closes it; every later request is answered ``then``."""

    async def handler(request: Request, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        if request.conn == 0:
            await send(writer, *sent, delay=delay)
            return await stall(reader)
        await send(writer, plain(then))
        return True

    return handler


class Server:
    def __init__(self, tls: ssl.SSLContext | None = None) -> None:
        self.tls = tls
        self.handler: Handler = answer(plain())
        self.requests: list[Request] = []
        self.accepted = 0
        self.open = 0
        self.max_open = 0
        #: connections on which the server read EOF (or a reset) from the client
        self.closed_by_client = 0
        self.port = 0
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    def url(self, path: str = "/path", host: str = "127.0.0.1") -> str:
        return f"{'https' if self.tls else 'http'}://{host}:{self.port}{path}"

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0, ssl=self.tls)
        self.port = self._server.sockets[0].getsockname()[1]

    async def __aenter__(self) -> Server:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def stop(self) -> None:
        assert self._server is not None
        self._server.close()
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        conn = self.accepted
        self.accepted += 1
        self.open += 1
        self.max_open = max(self.max_open, self.open)
        try:
            while True:
                request = await self._read_request(conn, reader)
                if request is None:
                    self.closed_by_client += 1
                    break
                self.requests.append(request)
                if not await self.handler(request, reader, writer):
                    if reader.at_eof():  # the handler waited for the client to close
                        self.closed_by_client += 1
                    break
        except (ConnectionError, asyncio.CancelledError):  # cancelled: by stop()
            pass
        finally:
            self.open -= 1
            writer.close()
            self._tasks.discard(task)

    @staticmethod
    async def _read_request(conn: int, reader: asyncio.StreamReader) -> Request | None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
        except (asyncio.IncompleteReadError, ConnectionError):
            return None
        line, *fields = head[:-4].decode("latin-1").split("\r\n")
        headers = []
        for field in fields:
            name, _, value = field.partition(":")
            headers.append((name, value.strip()))
        length = [int(v) for n, v in headers if n.lower() == "content-length"]
        body = await reader.readexactly(length[0]) if length else b""
        return Request(conn, line, headers, body)


@pytest.fixture
async def server() -> AsyncIterator[Server]:
    async with Server() as s:
        yield s


@pytest.fixture
async def client(server: Server) -> AsyncIterator[UpstreamClient]:
    # depends on ``server`` so that it closes first
    async with UpstreamClient() as c:
        yield c


async def call(client: UpstreamClient, url: str, timeout: Timeout = T, data: bytes = b"{}") -> tuple[int, bytes]:
    async with client.post(url, data=data, headers={"content-type": "application/json"}, timeout=timeout) as resp:
        return resp.status, await resp.read()


async def until(predicate: Callable[[], bool], timeout: float = 1.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "the condition did not become true in time"
        await asyncio.sleep(0.005)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


# --- 1. a content-length answer and the request on the wire -----------------------------------


async def test_content_length_answer_and_the_request_sent(server: Server, client: UpstreamClient) -> None:
    body = b'{"id":"x","choices":[]}'
    server.handler = answer(
        plain(body, b"Content-Type: application/json", b"X-Request-Id: abc", b"Set-Cookie: a=1", b"set-cookie: b=2")
    )
    payload = b'{"model":"m"}'
    async with client.post(
        server.url("/v1/chat?x=1"),
        data=payload,
        headers={"Authorization": "Bearer k", "x-custom": "v 1"},
        timeout=T,
    ) as resp:
        assert isinstance(resp, Response)
        assert resp.status == 200
        assert resp.reason == "OK"
        assert resp.headers["content-type"] == "application/json"
        assert resp.headers["X-REQUEST-ID"] == "abc"
        assert resp.headers["Content-Length"] == str(len(body))
        assert resp.headers.getall("SET-COOKIE") == ["a=1", "b=2"]
        assert await resp.read() == body
        assert resp.content.at_eof()

    [req] = server.requests
    assert req.line == "POST /v1/chat?x=1 HTTP/1.1"
    assert req.header("host") == f"127.0.0.1:{server.port}"
    assert req.header("content-length") == str(len(payload))
    assert req.body == payload
    assert req.header("authorization") == "Bearer k"
    assert req.header("x-custom") == "v 1"
    assert req.header("accept-encoding") == "identity"
    user_agent = req.header("user-agent")
    assert user_agent is not None and user_agent.startswith("llm-gateway/")


async def test_reason_phrase_with_spaces_status_without_reason_and_text_charset(
    server: Server, client: UpstreamClient
) -> None:
    server.handler = answer(
        plain(b"caf\xe9", b"content-type: text/plain; charset=latin-1", status=b"201 Created At Last"),
        b"HTTP/1.1 202\r\ncontent-length: 5\r\ncontent-type: text/plain\r\n\r\n\xc3\xa9t\xc3\xa9",
    )
    async with client.post(server.url(), data=b"", headers={}, timeout=T) as resp:
        assert (resp.status, resp.reason) == (201, "Created At Last")
        assert await resp.text() == "café"
    async with client.post(server.url(), data=b"", headers={}, timeout=T) as resp:
        assert (resp.status, resp.reason) == (202, "")
        assert await resp.text() == "été"
    assert server.requests[0].header("content-length") == "0"


async def test_params_are_appended_to_the_query(server: Server, client: UpstreamClient) -> None:
    for url in (server.url("/models/m:generate"), server.url("/models/m:generate?alt=sse")):
        async with client.post(url, data=b"{}", headers={}, timeout=T, params={"key": "a b&c", "v": "1"}) as resp:
            await resp.read()
    assert [r.line for r in server.requests] == [
        "POST /models/m:generate?key=a+b%26c&v=1 HTTP/1.1",
        "POST /models/m:generate?alt=sse&key=a+b%26c&v=1 HTTP/1.1",
    ]


async def test_url_without_path_posts_to_root(server: Server, client: UpstreamClient) -> None:
    assert await call(client, f"http://127.0.0.1:{server.port}") == (200, b"ok")
    assert server.requests[0].line == "POST / HTTP/1.1"


async def test_the_request_line_is_percent_encoded(server: Server, client: UpstreamClient) -> None:
    """A path built from a client's model name may hold a space or a non-ASCII character: it
    goes out percent-encoded (what is encoded already is kept), never raw in the request line."""
    for path in ("/models/my model:generate", "/models/g\u00e9mini:generate", "/models/a%20b:generate?x=a b"):
        assert await call(client, server.url(path)) == (200, b"ok")
    assert [r.line for r in server.requests] == [
        "POST /models/my%20model:generate HTTP/1.1",
        "POST /models/g%C3%A9mini:generate HTTP/1.1",
        "POST /models/a%20b:generate?x=a%20b HTTP/1.1",
    ]


async def test_the_google_adapter_keeps_the_whole_model_in_the_path(server: Server, client: UpstreamClient) -> None:
    """A "#" or "?" in a model name is part of the name, not a fragment or a query."""
    server.handler = answer(
        plain(b'{"error":{"code":404,"message":"no such model","status":"NOT_FOUND"}}', status=b"404 Not Found")
    )
    google = GoogleProvider(
        ProviderSettings(api_key="k", base_url=f"http://127.0.0.1:{server.port}"), client, Timeouts()
    )
    request = ChatRequest("tuned/my model#2?", [Message("user", "hi")])
    with pytest.raises(errors.UpstreamModelNotFound):
        await google.complete(request)
    assert server.requests[0].line == "POST /v1beta/models/tuned/my%20model%232%3F:generateContent HTTP/1.1"


# --- 2. keep-alive ----------------------------------------------------------------------------


async def test_sequential_calls_reuse_one_connection(server: Server, client: UpstreamClient) -> None:
    server.handler = answer(plain(b"one"), plain(b"two"), plain(b"three"))
    results = [await call(client, server.url(), data=b"%d" % i) for i in range(3)]
    assert results == [(200, b"one"), (200, b"two"), (200, b"three")]
    assert server.accepted == 1
    assert [(r.conn, r.body) for r in server.requests] == [(0, b"0"), (0, b"1"), (0, b"2")]


@pytest.mark.parametrize(
    "raw",
    [
        plain(b"bye", b"Connection: close"),
        plain(b"bye", b"connection: Keep-Alive, Close"),
        plain(b"bye", version=b"HTTP/1.0"),
    ],
    ids=["connection-close", "connection-list-with-close", "http-1.0"],
)
async def test_an_answer_that_ends_the_connection_is_not_reused(
    server: Server, client: UpstreamClient, raw: bytes
) -> None:
    server.handler = answer(raw)  # the server keeps its side open: only the client can decide
    for _ in range(3):
        assert await call(client, server.url()) == (200, b"bye")
    assert server.accepted == 3
    assert [r.conn for r in server.requests] == [0, 1, 2]
    await until(lambda: server.closed_by_client >= 2)  # the client closed the ones it did not keep


async def test_bytes_after_a_complete_answer_make_the_connection_unusable(
    server: Server, client: UpstreamClient
) -> None:
    server.handler = answer(plain(b"first") + b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nstray", plain(b"second"))
    assert await call(client, server.url()) == (200, b"first")
    await until(lambda: server.closed_by_client == 1)
    assert await call(client, server.url()) == (200, b"second")
    assert server.accepted == 2


# --- 3. chunked bodies ------------------------------------------------------------------------


CHUNKED_ANSWER = CHUNKED_HEAD + chunked(b"hello", b" ", b"world!", ext=b";foo=bar")
TRAILED_ANSWER = CHUNKED_HEAD + chunked(b"abc", b"defgh" * 10, trailers=b"x-checksum: 1\r\nx-other: 2\r\n")


@pytest.mark.parametrize("raw", [CHUNKED_ANSWER, TRAILED_ANSWER], ids=["extension", "trailers"])
async def test_chunked_body_then_keep_alive(server: Server, client: UpstreamClient, raw: bytes) -> None:
    server.handler = answer(raw, plain(b"next"))
    expected = b"hello world!" if raw is CHUNKED_ANSWER else b"abc" + b"defgh" * 10
    async with client.post(server.url(), data=b"{}", headers={}, timeout=T) as resp:
        assert resp.headers["Transfer-Encoding"] == "chunked"
        assert await resp.read() == expected
    # the trailers (or the last CRLF) were consumed: the next answer parses on the same connection
    assert await call(client, server.url()) == (200, b"next")
    assert server.accepted == 1


async def test_chunked_answer_one_byte_per_write(server: Server, client: UpstreamClient) -> None:
    raw = CHUNKED_HEAD + chunked(b"hello", b"\r\n", b"0123456789abcdef" * 2, ext=b";foo=bar", trailers=b"x-t: 1\r\n")

    async def handler(request: Request, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        if request.conn == 0 and len(server.requests) == 1:
            for i in range(len(raw)):
                writer.write(raw[i : i + 1])
                await writer.drain()
                await asyncio.sleep(0)  # two loop turns: the client reads each byte on its own
                await asyncio.sleep(0)
        else:
            await send(writer, plain(b"next"))
        return True

    server.handler = handler
    async with client.post(server.url(), data=b"{}", headers={}, timeout=T) as resp:
        assert resp.status == 200
        assert resp.headers["content-type"] == "application/x-ndjson"
        assert await resp.read() == b"hello\r\n" + b"0123456789abcdef" * 2
    assert await call(client, server.url()) == (200, b"next")
    assert server.accepted == 1


NDJSON = [b'{"a":1}\n{"b"', b':2}\n{"c":', b"3}\n", b'{"d":4}']
#: each NDJSON piece in its own chunk, the chunks written 10 ms apart
NDJSON_IN_PIECES = in_pieces(
    CHUNKED_HEAD, *(chunked(p)[: -len(b"0\r\n\r\n")] for p in NDJSON), b"0\r\n\r\n", delay=0.01
)


async def test_chunked_ndjson_iter_any(server: Server, client: UpstreamClient) -> None:
    server.handler = NDJSON_IN_PIECES
    async with client.post(server.url(), data=b"{}", headers={}, timeout=T) as resp:
        pieces = [piece async for piece in resp.content.iter_any()]
        assert resp.content.at_eof()
    assert b"".join(pieces) == b"".join(NDJSON)
    assert len(pieces) >= 2  # delivered as they arrived, not all at the end
    assert all(pieces)


async def test_chunked_ndjson_line_iteration(server: Server, client: UpstreamClient) -> None:
    server.handler = NDJSON_IN_PIECES
    async with client.post(server.url(), data=b"{}", headers={}, timeout=T) as resp:
        lines = [line async for line in resp.content]
    assert lines == [b'{"a":1}\n', b'{"b":2}\n', b'{"c":3}\n', b'{"d":4}']


async def test_an_ndjson_line_past_the_event_limit_is_a_malformed_answer(
    server: Server, client: UpstreamClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A line that never ends was held whole, and joined and split again on every read."""
    from gateway.providers import upstream_response

    monkeypatch.setattr(upstream_response, "MAX_EVENT_BYTES", 64)
    pieces = [b'{"a":1}\n{"b":', b"2" * 40, b"3" * 40, b"}\n"]
    server.handler = in_pieces(
        CHUNKED_HEAD, *(chunked(p)[: -len(b"0\r\n\r\n")] for p in pieces), b"0\r\n\r\n", delay=0.01
    )
    async with client.post(server.url(), data=b"{}", headers={}, timeout=T) as resp:
        lines = []
        with pytest.raises(errors.MalformedResponse, match="over 64 bytes"):
            async for line in resp.content:
                lines.append(line)
    assert lines == [b'{"a":1}\n']


async def test_an_answer_past_the_body_limit_is_malformed_and_a_gzip_bomb_is_cut(
    server: Server, client: UpstreamClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A 2 GB answer took the gateway to 5 GB of memory, a 1 MB gzip bomb to 2 GB: a body is
    read up to MAX_BODY_BYTES, and one read inflating past it fails the body."""
    import gzip

    from gateway.providers import upstream_response

    monkeypatch.setattr(upstream_response, "MAX_BODY_BYTES", 1000)
    bomb = gzip.compress(b"0" * 200_000)
    server.handler = answer(plain(b"x" * 999), plain(b"x" * 1001), plain(bomb, b"content-encoding: gzip"))
    assert await call(client, server.url()) == (200, b"x" * 999)
    with pytest.raises(errors.MalformedResponse, match="over 1000 bytes"):
        await call(client, server.url())
    with pytest.raises(errors.MalformedResponse, match="inflating past 1000 bytes"):  # not a cut: not billed
        await call(client, server.url())


async def test_large_answers_in_flight_share_one_bound(server: Server, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each answer was bounded alone: 80 answers of 300 MB at once, each refused at 64 MiB, held
    5.4 GB (a review). Past its own share an answer takes from one pool all such answers share,
    and is refused when the pool is taken; the pool is whole again after."""
    from gateway.providers import upstream_response

    monkeypatch.setattr(upstream_response, "OWN_BYTES", 1000)
    monkeypatch.setattr(upstream_response, "SHARED_BYTES", 3000)

    async def handler(request: Request, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        size = int(request.body)
        await send(writer, CHUNKED_HEAD, *(b"3e8\r\n" + b"x" * 1000 + b"\r\n" for _ in range(size)), b"0\r\n\r\n",
                   delay=0.02)  # fmt: skip
        return True

    server.handler = handler
    async with UpstreamClient() as client:
        small = call(client, server.url(), data=b"1")  # 1,000 bytes: its own share
        big = [call(client, server.url(), data=b"3") for _ in range(2)]  # 2,000 more each: 4,000 > 3,000
        results = await asyncio.gather(small, *big, return_exceptions=True)
    assert results[0] == (200, b"x" * 1000)
    refused = [r for r in results[1:] if isinstance(r, errors.MalformedResponse)]
    assert len(refused) == 1 and "large answers in flight hold" in refused[0].message
    assert upstream_response._SHARED[0] == 0
    async with UpstreamClient() as client:  # the pool is whole again: both fit one after the other
        assert await call(client, server.url(), data=b"3") == (200, b"x" * 3000)


# --- 4. a body that ends when the server closes -----------------------------------------------


async def test_body_until_close(server: Server, client: UpstreamClient) -> None:
    async def handler(request: Request, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        if request.conn == 0:
            await send(
                writer, b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\n\r\n", b"part one, ", b"part two", delay=0.01
            )
            return False  # the close ends the body
        await send(writer, plain(b"next"))
        return True

    server.handler = handler
    async with client.post(server.url(), data=b"{}", headers={}, timeout=T) as resp:
        assert resp.status == 200
        assert await resp.read() == b"part one, part two"
    assert await call(client, server.url()) == (200, b"next")
    assert [r.conn for r in server.requests] == [0, 1]


async def test_body_until_close_is_not_reused_even_if_the_server_keeps_it_open(
    server: Server, client: UpstreamClient
) -> None:
    server.handler = first_stalls(b"HTTP/1.1 200 OK\r\n\r\nstreaming", then=b"next")
    async with client.post(server.url(), data=b"{}", headers={}, timeout=T) as resp:
        assert await resp.content.readany() == b"streaming"
    # left before the end (the server never closed): the connection is dropped, not pooled
    await until(lambda: server.closed_by_client == 1)
    assert await call(client, server.url()) == (200, b"next")
    assert server.accepted == 2


# --- 5. content-encoding ----------------------------------------------------------------------


async def test_gzip_and_deflate_are_decoded(server: Server, client: UpstreamClient) -> None:
    text = b'{"choices":[{"text":"' + b"compressible " * 200 + b'"}]}'
    gz = gzip.compress(text)
    third = len(gz) // 3
    server.handler = answer(
        plain(zlib.compress(text), b"content-encoding: deflate"),
        plain(gz, b"Content-Encoding: GZIP"),
        CHUNKED_HEAD.replace(b"\r\n\r\n", b"\r\ncontent-encoding: gzip\r\n\r\n")
        + chunked(gz[:third], gz[third : 2 * third], gz[2 * third :]),
        plain(b"after"),
    )
    for _ in range(3):
        assert await call(client, server.url()) == (200, text)
    assert await call(client, server.url()) == (200, b"after")
    assert server.accepted == 1


async def test_unsupported_content_encoding_is_a_protocol_violation(server: Server, client: UpstreamClient) -> None:
    server.handler = answer(plain(b"\x1b\x00", b"content-encoding: br"))
    with pytest.raises(ProtocolViolation) as info:
        async with client.post(server.url(), data=b"{}", headers={}, timeout=T):
            pass
    assert isinstance(info.value, OSError)


# --- 6. interim and empty answers -------------------------------------------------------------


async def test_100_continue_is_skipped(server: Server, client: UpstreamClient) -> None:
    server.handler = answer(
        b"HTTP/1.1 100 Continue\r\n\r\n" + plain(b"real", b"x-which: final"),
        b"HTTP/1.1 103 Early Hints\r\nlink: </a>\r\n\r\nHTTP/1.1 100 Continue\r\n\r\n" + plain(b"again"),
    )
    async with client.post(server.url(), data=b"{}", headers={}, timeout=T) as resp:
        assert (resp.status, resp.headers["x-which"]) == (200, "final")
        assert await resp.read() == b"real"
    assert await call(client, server.url()) == (200, b"again")
    assert server.accepted == 1


async def test_100_continue_in_its_own_packet(server: Server, client: UpstreamClient) -> None:
    async def handler(request: Request, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        await send(writer, b"HTTP/1.1 100 Continue\r\n\r\n", plain(b"real"), delay=0.01)
        return True

    server.handler = handler
    assert await call(client, server.url()) == (200, b"real")


async def test_204_has_no_body_and_the_connection_is_reused(server: Server, client: UpstreamClient) -> None:
    server.handler = answer(
        b"HTTP/1.1 204 No Content\r\nx-a: 1\r\n\r\n", b"HTTP/1.1 204 No Content\r\n\r\n", plain(b"then")
    )
    async with client.post(server.url(), data=b"{}", headers={}, timeout=T) as resp:
        assert resp.status == 204
        assert resp.headers["x-a"] == "1"
        assert await resp.read() == b""
    assert await call(client, server.url()) == (204, b"")
    assert await call(client, server.url()) == (200, b"then")
    assert server.accepted == 1


async def test_content_length_zero(server: Server, client: UpstreamClient) -> None:
    server.handler = answer(plain(b""))
    assert await call(client, server.url()) == (200, b"")
    assert await call(client, server.url()) == (200, b"")
    assert server.accepted == 1


# --- 7. errors --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "raw",
    [
        b"garbage\r\n\r\n",
        b"HTTP/2 200 OK\r\ncontent-length: 0\r\n\r\n",
        b"HTTP/1.1 2000 OK\r\ncontent-length: 0\r\n\r\n",
        b"HTTP/1.1 20x OK\r\ncontent-length: 0\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nno colon here\r\n\r\n",
        b"HTTP/1.1 200 OK\r\ncontent-length: 1, 1\r\n\r\nx",
        b"HTTP/1.1 200 OK\r\ncontent-length: -1\r\n\r\n",
        b"HTTP/1.1 200 OK\r\ntransfer-encoding: gzip\r\n\r\n",
    ],
    ids=["garbage", "http2", "long-code", "non-digit-code", "header-no-colon", "list-length", "negative", "te-gzip"],
)
async def test_not_http_1_is_a_protocol_violation(server: Server, client: UpstreamClient, raw: bytes) -> None:
    server.handler = answer(raw)
    with pytest.raises(ProtocolViolation) as info:
        async with client.post(server.url(), data=b"{}", headers={}, timeout=T):
            pass
    assert isinstance(info.value, OSError)
    await until(lambda: server.closed_by_client == 1)  # the connection is dropped


@pytest.mark.parametrize("sent", [b"", b"HTTP/1.1 200 OK\r\ncontent-le"], ids=["before-answering", "mid-head"])
async def test_server_closes_before_the_head_ends(server: Server, client: UpstreamClient, sent: bytes) -> None:
    async def handler(request: Request, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        if sent:
            await send(writer, sent)
        return False

    server.handler = handler
    with pytest.raises(ConnectionResetError):
        await call(client, server.url())


async def test_content_length_body_cut_short(server: Server, client: UpstreamClient) -> None:
    async def handler(request: Request, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        await send(writer, b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nhello")
        return False

    server.handler = handler
    async with client.post(server.url(), data=b"{}", headers={}, timeout=T) as resp:
        assert resp.status == 200
        with pytest.raises(BodyCut):
            await resp.read()


async def test_chunked_body_cut_mid_way(server: Server, client: UpstreamClient) -> None:
    async def handler(request: Request, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        await send(writer, CHUNKED_HEAD, b"5\r\nhello\r\n", b"5\r\nwo", delay=0.01)
        return False

    server.handler = handler
    async with client.post(server.url(), data=b"{}", headers={}, timeout=T) as resp:
        assert await resp.content.readany() == b"hello"
        with pytest.raises(BodyCut):
            await resp.read()
    # a failed body stays failed
    with pytest.raises(BodyCut):
        await resp.content.readany()


@pytest.mark.parametrize(
    "size_line", [b"zz\r\n", b"-5\r\n", b"\r\n", b"5\r\nhelloXX"], ids=["not-hex", "negative", "empty", "no-crlf"]
)
async def test_bad_chunk_framing(server: Server, client: UpstreamClient, size_line: bytes) -> None:
    server.handler = answer(CHUNKED_HEAD + size_line + b"\r\n0\r\n\r\n")
    with pytest.raises((ProtocolViolation, BodyCut)):
        async with client.post(server.url(), data=b"{}", headers={}, timeout=T) as resp:
            await resp.read()
    await until(lambda: server.closed_by_client == 1)  # never reused


async def test_connection_refused() -> None:
    port = free_port()
    async with UpstreamClient() as client:
        with pytest.raises(ConnectionRefusedError):
            await call(client, f"http://127.0.0.1:{port}/v1")
        # the failed attempt left no slot taken
        with pytest.raises(ConnectionRefusedError):
            await call(client, f"http://127.0.0.1:{port}/v1")


# --- 8. timeouts ------------------------------------------------------------------------------


def never_answers() -> Handler:
    async def handler(request: Request, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        return await stall(reader)

    return handler


async def test_read_timeout_waiting_for_the_headers(server: Server, client: UpstreamClient) -> None:
    server.handler = never_answers()
    start = time.monotonic()
    with pytest.raises(TimeoutError):
        await call(client, server.url(), Timeout(read=0.1))
    assert 0.09 <= time.monotonic() - start < 1.0
    await until(lambda: server.closed_by_client == 1)  # the waiting connection was dropped


async def test_read_timeout_between_stream_pieces(server: Server, client: UpstreamClient) -> None:
    async def handler(request: Request, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        await send(writer, CHUNKED_HEAD, b"5\r\nfirst\r\n", delay=0.05)
        return await stall(reader)

    server.handler = handler
    async with client.post(server.url(), data=b"{}", headers={}, timeout=Timeout(read=0.15)) as resp:
        assert await resp.content.readany() == b"first"  # 0.05 s apart: within the read timeout
        start = time.monotonic()
        with pytest.raises(TimeoutError):
            await resp.content.readany()
        assert 0.14 <= time.monotonic() - start < 1.0


async def test_total_timeout_while_the_body_stalls(server: Server, client: UpstreamClient) -> None:
    server.handler = first_stalls(
        b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\n", b"0123456789", delay=0.05, then=b"fresh"
    )
    start = time.monotonic()
    with pytest.raises(TimeoutError):
        async with client.post(server.url(), data=b"{}", headers={}, timeout=Timeout(total=0.2)) as resp:
            assert resp.status == 200
            await resp.read()
    assert 0.19 <= time.monotonic() - start < 1.0
    # the stalled connection is not reused: the next call opens a new one and succeeds
    assert await call(client, server.url()) == (200, b"fresh")
    assert [r.conn for r in server.requests] == [0, 1]
    await until(lambda: server.closed_by_client >= 1)


async def test_total_timeout_waiting_for_the_headers(server: Server, client: UpstreamClient) -> None:
    server.handler = never_answers()
    start = time.monotonic()
    with pytest.raises(TimeoutError):
        await call(client, server.url(), Timeout(total=0.1, read=5.0))
    assert 0.09 <= time.monotonic() - start < 1.0


async def test_read_timeout_then_a_new_connection(server: Server, client: UpstreamClient) -> None:
    server.handler = first_stalls(then=b"fresh")
    with pytest.raises(TimeoutError):
        await call(client, server.url(), Timeout(read=0.05))
    assert await call(client, server.url()) == (200, b"fresh")
    assert server.accepted == 2


# --- 9. leaving the block early ---------------------------------------------------------------


async def test_leaving_before_the_end_of_the_body_drops_the_connection(server: Server, client: UpstreamClient) -> None:
    server.handler = first_stalls(CHUNKED_HEAD + b"5\r\nfirst\r\n", then=b"next")
    async with client.post(server.url(), data=b"{}", headers={}, timeout=T) as resp:
        assert await resp.content.readany() == b"first"
    await until(lambda: server.closed_by_client == 1)
    assert await call(client, server.url()) == (200, b"next")
    assert server.accepted == 2


async def test_leaving_on_an_exception_before_the_end_drops_the_connection(
    server: Server, client: UpstreamClient
) -> None:
    server.handler = first_stalls(b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\n12345", then=b"next")
    with pytest.raises(ZeroDivisionError):
        async with client.post(server.url(), data=b"{}", headers={}, timeout=T) as resp:
            await resp.content.readany()
            _ = 1 / 0
    assert await call(client, server.url()) == (200, b"next")
    assert server.accepted == 2


async def test_leaving_after_a_full_read_keeps_the_connection(server: Server, client: UpstreamClient) -> None:
    server.handler = answer(CHUNKED_HEAD + chunked(b"a", b"b"), plain(b"next"))
    async with client.post(server.url(), data=b"{}", headers={}, timeout=T) as resp:
        assert await resp.read() == b"ab"
    assert await call(client, server.url()) == (200, b"next")
    assert server.accepted == 1
    assert server.closed_by_client == 0


# --- 10. stale idle connections ---------------------------------------------------------------


async def test_an_idle_connection_closed_by_the_server_is_not_reused(server: Server, client: UpstreamClient) -> None:
    async def handler(request: Request, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        await send(writer, plain(b"conn %d" % request.conn))  # keep-alive answer ...
        return request.conn != 0  # ... but the server closes the first connection right after

    server.handler = handler
    assert await call(client, server.url()) == (200, b"conn 0")
    await until(lambda: server.open == 0)
    await asyncio.sleep(0.02)  # the client sees the EOF
    assert await call(client, server.url()) == (200, b"conn 1")
    assert await call(client, server.url()) == (200, b"conn 1")
    assert server.accepted == 2


async def test_idle_connections_older_than_keepalive_timeout_are_not_reused(server: Server) -> None:
    server.handler = answer(plain(b"ok"))
    async with UpstreamClient(keepalive_timeout=0.05) as client:
        assert await call(client, server.url()) == (200, b"ok")
        assert await call(client, server.url()) == (200, b"ok")  # young enough: reused
        assert server.accepted == 1
        await asyncio.sleep(0.1)
        assert await call(client, server.url()) == (200, b"ok")
        assert server.accepted == 2
        await until(lambda: server.closed_by_client == 1)  # the expired one was closed
        assert [r.conn for r in server.requests] == [0, 0, 1]


async def test_idle_connections_are_closed_once_past_the_keepalive_timeout(server: Server) -> None:
    """Without another call to look at them: after a burst, idle connections stayed open for
    good (170 in a review, minutes later), each a socket here and a slot at the vendor."""
    server.handler = answer(plain(b"ok"))
    async with UpstreamClient(keepalive_timeout=0.1) as client:
        results = await asyncio.gather(*(call(client, server.url()) for _ in range(5)))
        assert results == [(200, b"ok")] * 5 and server.accepted == 5
        await asyncio.sleep(0.05)
        assert server.closed_by_client == 0  # still young
        await until(lambda: server.closed_by_client == 5)
        assert await call(client, server.url()) == (200, b"ok")  # a new one, swept in its turn
        await until(lambda: server.closed_by_client == 6)


# --- 11. the per-host limit -------------------------------------------------------------------


async def test_limit_per_host(server: Server) -> None:
    async def handler(request: Request, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        await asyncio.sleep(0.03)
        await send(writer, plain(request.body))
        return True

    server.handler = handler
    async with UpstreamClient(limit_per_host=2) as client:
        results = await asyncio.gather(*(call(client, server.url(), data=b"call %d" % i) for i in range(5)))
    assert results == [(200, b"call %d" % i) for i in range(5)]
    assert server.max_open == 2
    assert server.accepted == 2
    assert sorted(r.body for r in server.requests) == [b"call %d" % i for i in range(5)]


async def test_a_connection_that_frees_only_past_the_deadline_is_pool_busy_not_a_sent_request(
    server: Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A call whose whole time went waiting for a connection was sent when one freed up just
    past its deadline, and timed out at once: a provider timeout it never had, and billed as
    sent (a review: 300 calls against 256 connections, 42 never sent recorded as timeouts)."""
    from gateway.providers import upstream_http

    async def handler(request: Request, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        await asyncio.sleep(0.3)
        await send(writer, plain(b"ok"))
        return True

    release = upstream_http._HostPool.release

    def slow_release(pool: upstream_http._HostPool, conn: upstream_http.Connection) -> None:
        release(pool, conn)  # wakes the waiting call, which runs once the loop is free again:
        time.sleep(0.2)  # past its deadline (a busy event loop)

    server.handler = handler
    monkeypatch.setattr(upstream_http._HostPool, "release", slow_release)
    async with UpstreamClient(limit_per_host=1) as client:
        first = asyncio.create_task(call(client, server.url(), Timeout(total=5)))
        await asyncio.sleep(0.05)
        with pytest.raises(PoolBusy):
            await call(client, server.url(), Timeout(total=0.35, connect=5))
        assert await first == (200, b"ok")
    assert len(server.requests) == 1  # the second was never sent


async def test_limit_per_host_a_dropped_connection_frees_its_slot(server: Server) -> None:
    async def handler(request: Request, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        await asyncio.sleep(0.02)
        await send(writer, plain(b"bye", b"connection: close"))
        return True

    server.handler = handler
    async with UpstreamClient(limit_per_host=1) as client:
        results = await asyncio.gather(*(call(client, server.url()) for _ in range(3)))
    assert results == [(200, b"bye")] * 3
    assert server.accepted == 3


async def test_a_wait_for_a_slot_past_the_connect_timeout_is_pool_busy_and_not_latency(server: Server) -> None:
    """Waiting for a free connection is the gateway's queue: past the connect timeout (as
    aiohttp's includes the pool's wait) it is PoolBusy, not the provider's timeout, and the time
    waited is kept apart (``QUEUED``) from the provider's latency (a review: a burst of 1,000
    calls recorded 744 provider timeouts, 488 of them never sent, and opened the circuit)."""

    async def handler(request: Request, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        await asyncio.sleep(0.3)
        await send(writer, plain(b"ok"))
        return True

    server.handler = handler
    async with UpstreamClient(limit_per_host=1) as client:
        first = asyncio.create_task(call(client, server.url(), Timeout(total=5)))
        await asyncio.sleep(0.05)
        with pytest.raises(PoolBusy):
            await call(client, server.url(), Timeout(total=5, connect=0.1))
        assert server.accepted == 1 and len(server.requests) == 1  # never sent

        async def queued() -> tuple[tuple[int, bytes], float]:
            QUEUED.set(0.0)
            result = await call(client, server.url(), Timeout(total=5, connect=2))
            return result, QUEUED.get()

        result, waited = await queued()  # waits for the first call's slot, then is answered
        assert result == (200, b"ok") and 0.1 < waited < 0.5
        assert await first == (200, b"ok")

        # a client that left while its request waited for the connection: it is not sent
        first = asyncio.create_task(call(client, server.url(), Timeout(total=5)))
        await asyncio.sleep(0.05)
        sent = len(server.requests)
        CLIENT_GONE.set(lambda: True)
        try:
            with pytest.raises(ClientGone):
                await call(client, server.url(), Timeout(total=5, connect=2))
        finally:
            CLIENT_GONE.set(None)
        assert await first == (200, b"ok")
        assert len(server.requests) == sent  # the first call's only
        assert await call(client, server.url()) == (200, b"ok")  # the slot went back


# --- 12. invalid input ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "headers",
    [
        {"x-a": "v\r\nx-evil: 1"},
        {"x-a": "v\nx-evil: 1"},
        {"x-a": "v\rx"},
        {"x-a\r\nx-evil": "1"},
        {"x-a: b": "1"},
    ],
)
async def test_header_injection_is_refused_before_sending(
    server: Server, client: UpstreamClient, headers: dict[str, str]
) -> None:
    with pytest.raises(ValueError):
        async with client.post(server.url(), data=b"{}", headers=headers, timeout=T):
            pass
    await asyncio.sleep(0.02)
    assert server.accepted == 0
    assert server.requests == []


@pytest.mark.parametrize("url", ["ftp://127.0.0.1/x", "127.0.0.1:80/x", "/v1/chat", "http:///nohost", "unix:///sock"])
async def test_non_http_url_is_refused(client: UpstreamClient, url: str) -> None:
    with pytest.raises(ValueError):
        async with client.post(url, data=b"{}", headers={}, timeout=T):
            pass


async def test_a_closed_client_refuses_calls(server: Server) -> None:
    client = UpstreamClient()
    await client.close()
    with pytest.raises(RuntimeError):
        async with client.post(server.url(), data=b"{}", headers={}, timeout=T):
            pass


# --- 13. flow control -------------------------------------------------------------------------


async def test_large_body_read_slowly_arrives_intact_with_bounded_buffering(
    server: Server, client: UpstreamClient
) -> None:
    body = random.Random(7).randbytes(8 * HIGH_WATER)
    server.handler = answer(plain(body), plain(b"next"))
    async with client.post(server.url(), data=b"{}", headers={}, timeout=T) as resp:
        assert resp.headers["content-length"] == str(len(body))
        await asyncio.sleep(0.1)  # read nothing: the client must stop reading from the socket
        assert HIGH_WATER < resp.content.buffered <= 2 * HIGH_WATER
        pool = client._pools[("http", "127.0.0.1", server.port)]
        assert [c.paused for c in pool.busy] == [True]
        parts = []
        while piece := await resp.content.readany():
            parts.append(piece)
            assert resp.content.buffered == 0
            await asyncio.sleep(0.005)
        assert len(parts) >= 4
    assert b"".join(parts) == body
    # resumed and reusable after the pauses
    assert await call(client, server.url()) == (200, b"next")
    assert server.accepted == 1


async def test_large_chunked_body_with_read(server: Server, client: UpstreamClient) -> None:
    rng = random.Random(11)
    pieces = [rng.randbytes(rng.randrange(1, 300_000)) for _ in range(20)]
    server.handler = answer(CHUNKED_HEAD + chunked(*pieces))
    assert await call(client, server.url()) == (200, b"".join(pieces))


# --- 14. closing the client -------------------------------------------------------------------


async def test_close_closes_idle_connections(server: Server) -> None:
    client = UpstreamClient()
    assert await call(client, server.url()) == (200, b"ok")
    await asyncio.sleep(0.02)
    assert server.closed_by_client == 0
    await client.close()
    await until(lambda: server.closed_by_client == 1)
    assert server.open == 0


async def test_async_with_closes_the_client(server: Server) -> None:
    async with UpstreamClient() as client:
        assert await call(client, server.url()) == (200, b"ok")
    assert client.closed
    await until(lambda: server.closed_by_client == 1)


# --- 15. through the gateway's post() helper --------------------------------------------------


def classify(status: int, headers: Mapping[str, str], body: Any, raw: str) -> errors.ProviderError:
    return gateway_http.default_classify("test", status, headers, gateway_http.error_message(body, raw))


async def test_an_error_of_the_answer_s_reader_names_the_provider(
    server: Server, client: UpstreamClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The reader below the adapters knows no provider: "upstream: malformed response: an answer
    over 67108864 bytes" reached clients and the stores (a review)."""
    from gateway.providers import upstream_response

    monkeypatch.setattr(upstream_response, "MAX_BODY_BYTES", 10)
    server.handler = answer(plain(b'{"too": "long for the limit"}'))
    with pytest.raises(errors.MalformedResponse) as info:
        async with gateway_http.post(client, "openai", server.url("/v1/chat"), headers={}, body={}, timeout=T,
                                     classify=classify) as resp:  # fmt: skip
            await resp.read()
    assert info.value.provider == "openai" and str(info.value).startswith("openai: malformed response: an answer over")


async def test_post_helper_maps_429_to_rate_limited(server: Server, client: UpstreamClient) -> None:
    server.handler = answer(
        plain(
            b'{"error":{"message":"slow down"}}',
            b"retry-after: 2",
            b"content-type: application/json",
            status=b"429 Too Many",
        ),
        plain(b'{"ok":true}'),
    )
    with pytest.raises(errors.RateLimited) as info:
        async with gateway_http.post(
            client, "test", server.url("/v1/chat"), headers={"x-k": "1"}, body={"a": 1}, timeout=T, classify=classify
        ):
            pytest.fail("a 429 must not be yielded")
    assert info.value.retry_after == 2.0
    assert info.value.http_status == 429
    assert "slow down" in str(info.value)
    req = server.requests[0]
    assert req.body == b'{"a":1}'
    assert req.header("content-type") == "application/json"
    assert req.header("x-k") == "1"
    # the error body was read to its end: the connection is reused
    async with gateway_http.post(
        client, "test", server.url("/v1/chat"), headers={}, body={}, timeout=T, classify=classify
    ) as resp:
        assert await gateway_http.read_json(resp, "test") == {"ok": True}
    assert server.accepted == 1


async def test_post_helper_maps_a_cut_body_to_stream_cut(server: Server, client: UpstreamClient) -> None:
    async def handler(request: Request, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        await send(writer, b'HTTP/1.1 200 OK\r\ncontent-length: 50\r\n\r\n{"partial":')
        return False

    server.handler = handler
    with pytest.raises(errors.StreamCut):
        async with gateway_http.post(
            client, "test", server.url(), headers={}, body={}, timeout=T, classify=classify
        ) as resp:
            await resp.read()


async def test_post_helper_maps_a_read_timeout_to_upstream_timeout(server: Server, client: UpstreamClient) -> None:
    server.handler = never_answers()
    with pytest.raises(errors.UpstreamTimeout):
        async with gateway_http.post(
            client, "test", server.url(), headers={}, body={}, timeout=Timeout(read=0.05), classify=classify
        ):
            pytest.fail("no answer must not be yielded")


async def test_post_helper_maps_a_stream_read_timeout_to_upstream_timeout(
    server: Server, client: UpstreamClient
) -> None:
    async def handler(request: Request, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        await send(writer, CHUNKED_HEAD + b"2\r\n{}\r\n")
        return await stall(reader)

    server.handler = handler
    with pytest.raises(errors.UpstreamTimeout):
        async with gateway_http.post(
            client, "test", server.url(), headers={}, body={}, timeout=Timeout(read=0.05), classify=classify
        ) as resp:
            assert await resp.content.readany() == b"{}"
            await resp.content.readany()


@pytest.mark.parametrize("kind", ["refused", "garbage"])
async def test_post_helper_maps_transport_failures_to_connection_error(
    server: Server, client: UpstreamClient, kind: str
) -> None:
    server.handler = answer(b"garbage\r\n\r\n")
    url = f"http://127.0.0.1:{free_port()}/v1" if kind == "refused" else server.url()
    with pytest.raises(errors.UpstreamConnectionError):
        async with gateway_http.post(client, "test", url, headers={}, body={}, timeout=T, classify=classify):
            pytest.fail("must not be yielded")


@pytest.mark.parametrize("bad", ["scheme", "no-host", "header"])
async def test_post_helper_maps_a_refused_target_to_connection_error(
    server: Server, client: UpstreamClient, bad: str
) -> None:
    """A base URL or key the client will not send (the provider's settings, not the caller's
    request) fails the attempt like an unreachable provider: the router records it and falls
    back, and the caller gets a 502, not a 500 from a ValueError."""
    url = {"scheme": "ftp://example.test/v1", "no-host": "http:///v1"}.get(bad, server.url())
    headers = {"authorization": "Bearer k\r\nx-injected: 1"} if bad == "header" else {}
    with pytest.raises(errors.UpstreamConnectionError, match="cannot call"):
        async with gateway_http.post(client, "test", url, headers=headers, body={}, timeout=T, classify=classify):
            pytest.fail("must not be yielded")
    assert server.accepted == 0


# --- limits of the parser ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "raw",
    [
        b"HTTP/1.1 200 OK\r\nx-big: " + b"a" * (70 * 1024),
        CHUNKED_HEAD + b"a" * 2000,
    ],
    ids=["head-too-large", "chunk-size-line-too-long"],
)
async def test_unterminated_lines_are_bounded(server: Server, client: UpstreamClient, raw: bytes) -> None:
    async def handler(request: Request, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        await send(writer, raw)
        return await stall(reader)

    server.handler = handler
    with pytest.raises(ProtocolViolation):
        async with client.post(server.url(), data=b"{}", headers={}, timeout=T) as resp:
            await resp.read()
    await until(lambda: server.closed_by_client == 1)


# --- bugs these tests found (fixed) --------------------------------------------------------


async def test_a_waiter_cancelled_as_a_slot_frees_passes_the_slot_on(server: Server) -> None:
    async def handler(request: Request, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        if len(server.requests) == 1:
            await send(writer, CHUNKED_HEAD + b"5\r\nfirst\r\n")
            return await stall(reader)
        await send(writer, plain(b"ok"))
        return True

    server.handler = handler
    async with UpstreamClient(limit_per_host=1) as client:
        async with client.post(server.url(), data=b"{}", headers={}, timeout=T) as resp:
            assert await resp.content.readany() == b"first"
            b = asyncio.create_task(call(client, server.url(), Timeout()))
            c = asyncio.create_task(call(client, server.url(), Timeout()))
            await asyncio.sleep(0.05)
            assert not b.done() and not c.done()  # both wait for the only slot
            assert server.accepted == 1
        # leaving early drops the connection and wakes B; B's caller is cancelled in the same turn
        # (say its client went away): C must get the free slot
        b.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await b
        assert await asyncio.wait_for(c, 0.5) == (200, b"ok")


async def test_closing_the_client_fails_a_body_in_flight(server: Server) -> None:
    async def handler(request: Request, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        await send(writer, CHUNKED_HEAD + b"5\r\nfirst\r\n")
        return await stall(reader)

    server.handler = handler
    client = UpstreamClient()
    async with client.post(server.url(), data=b"{}", headers={}, timeout=Timeout()) as resp:
        assert await resp.content.readany() == b"first"
        await client.close()
        await until(lambda: server.closed_by_client == 1)
        with pytest.raises(BodyCut):
            await asyncio.wait_for(resp.content.read(), 0.5)


async def test_closing_the_client_fails_a_call_waiting_for_headers(server: Server) -> None:
    server.handler = never_answers()
    client = UpstreamClient()
    task = asyncio.create_task(call(client, server.url(), Timeout()))
    await until(lambda: len(server.requests) == 1)
    await client.close()
    await until(lambda: server.closed_by_client == 1)
    with pytest.raises(ConnectionError):
        await asyncio.wait_for(task, 0.5)


@pytest.mark.parametrize(
    "raw",
    [
        b"HTTP/1.1 200 OK\r\ncontent-length: \xb2\r\n\r\nxx",
        b"HTTP/1.1 \xb2\xb2\xb2 OK\r\ncontent-length: 2\r\n\r\nxx",
    ],
    ids=["content-length", "status-code"],
)
async def test_non_ascii_digits_are_a_protocol_violation(server: Server, client: UpstreamClient, raw: bytes) -> None:
    server.handler = answer(raw)
    with pytest.raises(ProtocolViolation):
        await call(client, server.url())


async def test_a_truncated_gzip_stream_is_a_body_cut(server: Server, client: UpstreamClient) -> None:
    gz = gzip.compress(b"hello world " * 100)
    server.handler = answer(plain(gz[: len(gz) // 2], b"content-encoding: gzip"))
    async with client.post(server.url(), data=b"{}", headers={}, timeout=T) as resp:
        with pytest.raises(BodyCut):
            await resp.read()


async def test_conflicting_content_lengths_are_a_protocol_violation(server: Server, client: UpstreamClient) -> None:
    server.handler = answer(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\ncontent-length: 5\r\n\r\nxxxxx")
    with pytest.raises(ProtocolViolation):
        await call(client, server.url())


# --- https ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


def serving(ca: trustme.CA, *names: str) -> ssl.SSLContext:
    """A server's TLS context with a certificate from ``ca`` for ``names``."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert(*names).configure_cert(context)
    return context


@pytest.fixture
async def tls_server(ca: trustme.CA) -> AsyncIterator[Server]:
    async with Server(tls=serving(ca, "localhost", "127.0.0.1")) as s:
        yield s


def trusting(ca: trustme.CA) -> ssl.SSLContext:
    context = ssl.create_default_context()
    ca.configure_trust(context)
    return context


async def test_https_json_stream_and_keep_alive(tls_server: Server, ca: trustme.CA) -> None:
    """The providers are HTTPS: TLS with the hostname checked, chunked bodies and keep-alive."""
    tls_server.handler = answer(
        plain(b'{"a":1}', b"content-type: application/json"), CHUNKED_HEAD + chunked(b"data: 1\n\n", b"data: 2\n\n")
    )
    async with UpstreamClient(ssl_context=trusting(ca)) as client:
        assert await call(client, tls_server.url(host="localhost")) == (200, b'{"a":1}')
        async with client.post(tls_server.url(host="localhost"), data=b"{}", headers={}, timeout=T) as resp:
            assert await resp.read() == b"data: 1\n\ndata: 2\n\n"
    assert tls_server.accepted == 1  # the TLS connection was kept and reused
    assert tls_server.requests[0].header("host") == f"localhost:{tls_server.port}"


async def test_https_refuses_an_untrusted_certificate(tls_server: Server) -> None:
    """The default context checks the chain against the system CAs: a test CA is not one."""
    async with UpstreamClient() as client:
        with pytest.raises(ssl.SSLCertVerificationError) as info:
            await call(client, tls_server.url(host="localhost"))
    assert isinstance(info.value, OSError)  # the adapters' post() makes it UpstreamConnectionError


async def test_https_checks_the_hostname(ca: trustme.CA) -> None:
    """A trusted certificate for another name does not do."""
    async with (
        Server(tls=serving(ca, "api.example.test")) as server,
        UpstreamClient(ssl_context=trusting(ca)) as client,
    ):
        with pytest.raises(ssl.SSLCertVerificationError, match=r"match"):
            await call(client, server.url(host="localhost"))


async def test_an_ipv6_literal_host(client: UpstreamClient) -> None:
    """``http://[::1]:port/``: the connection goes to the address, the host header keeps the brackets."""
    seen: list[bytes] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        seen.extend(head.split(b"\r\n")[:2])
        await reader.readexactly(2)
        writer.write(plain())
        await writer.drain()
        writer.close()

    try:
        server = await asyncio.start_server(handle, "::1", 0)
    except OSError as exc:  # a machine without IPv6 loopback
        pytest.skip(f"no IPv6 loopback here: {exc}")
    port = server.sockets[0].getsockname()[1]
    try:
        assert await call(client, f"http://[::1]:{port}/x") == (200, b"ok")
    finally:
        server.close()
        await server.wait_closed()
    assert seen == [b"POST /x HTTP/1.1", f"host: [::1]:{port}".encode()]
