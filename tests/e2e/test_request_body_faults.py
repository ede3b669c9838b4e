"""Request bodies a client breaks: cut short, badly encoded. The client's fault: a 400 in the
OpenAI error format (when anyone is left to read it), never a 500, an ERROR traceback or a
``requests_total{status="500"}``, and no provider is called."""

from __future__ import annotations

import asyncio
import gzip
import logging
from urllib.parse import urlsplit

import orjson
import pytest

from tests.support.gateway import RunningGateway

BODY = orjson.dumps({"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]})


async def exchange(gw: RunningGateway, head: bytes, body: bytes, *, close: bool = False) -> bytes:
    """Send a raw request; read the answer, or close after the body when ``close``."""
    url = urlsplit(gw.url)
    reader, writer = await asyncio.open_connection(url.hostname, url.port)
    writer.write(b"POST /v1/chat/completions HTTP/1.1\r\nhost: 127.0.0.1\r\ncontent-type: application/json\r\n" + head)
    writer.write(b"\r\n" + body)
    await writer.drain()
    if close:
        await asyncio.sleep(0.1)
        writer.close()
        await asyncio.sleep(0.2)  # the gateway sees the connection lost while it reads the body
        return b""
    answer = await asyncio.wait_for(reader.read(65536), 5)
    writer.close()
    return answer


def status_of(answer: bytes) -> int:
    return int(answer.split(b" ", 2)[1])


def error_of(answer: bytes) -> dict[str, object]:
    error = orjson.loads(answer.split(b"\r\n\r\n", 1)[1])["error"]
    assert isinstance(error, dict) and set(error) == {"message", "type", "param", "code"}
    return error


@pytest.mark.parametrize(
    ("head", "body"),
    [
        (b"content-encoding: gzip\r\ncontent-length: 10\r\n", b"0123456789"),  # not gzip
        (b"content-encoding: gzip\r\ncontent-length: 12\r\n", gzip.compress(BODY)[:12]),  # the header alone
    ],
)
async def test_a_badly_encoded_body_is_a_400(
    gw: RunningGateway, head: bytes, body: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    answer = await exchange(gw, head, body)
    assert status_of(answer) == 400, answer[:300]
    assert error_of(answer)["code"] in ("invalid_body", "invalid_json")  # a gzip stream cut short: what came
    assert gw.sims["openai"].requests == [] and gw.event_log.events == []
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


@pytest.mark.parametrize(
    ("head", "body"),
    [
        (b"content-length: %d\r\n" % (len(BODY) + 100), BODY),  # promises more than it sends
        (b"transfer-encoding: chunked\r\n", b"10\r\n0123456789"),  # a chunk cut short
    ],
)
async def test_a_client_gone_mid_body_is_no_500(
    gw: RunningGateway, head: bytes, body: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    await exchange(gw, head, body, close=True)
    assert gw.sims["openai"].requests == [] and gw.event_log.events == []
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
    metrics = await fetch_metrics(gw)
    assert 'status="500"' not in metrics


async def fetch_metrics(gw: RunningGateway) -> str:
    url = urlsplit(gw.url)
    reader, writer = await asyncio.open_connection(url.hostname, url.port)
    writer.write(b"GET /metrics HTTP/1.1\r\nhost: 127.0.0.1\r\nconnection: close\r\n\r\n")
    data = await asyncio.wait_for(reader.read(), 5)
    writer.close()
    return data.decode()


@pytest.mark.parametrize(
    "head",
    [
        b"bad header\r\n",  # a header line without a name and a colon
        b"x-long: " + b"a" * 9000 + b"\r\n",  # past the parser's 8,190 bytes a line
        b"transfer-encoding: chunked\r\ncontent-length: 5\r\n",  # both framings at once
    ],
)
async def test_a_request_head_the_parser_refuses_leaves_no_error_traceback(
    gw: RunningGateway, head: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    """Answered 400 by aiohttp's parser before any handler; each one wrote a traceback at
    ERROR, which anyone can send without a key (a log flood)."""
    answer = await exchange(gw, head, BODY)
    assert status_of(answer) in (400, 431), answer[:300]
    assert gw.sims["openai"].requests == [] and gw.event_log.events == []
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
