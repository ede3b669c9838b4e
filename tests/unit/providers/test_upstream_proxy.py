"""The provider calls through an egress proxy (``HTTPS_PROXY`` / ``HTTP_PROXY`` / ``NO_PROXY``):
the upstream client against the scripted server of ``test_upstream_http`` behind the test
proxy of ``tests/support/proxy.py``, and the rules that pick the proxy."""

from __future__ import annotations

import asyncio
import base64
import socket
import struct
from collections.abc import AsyncIterator
from typing import Any

import pytest
import trustme

from gateway import errors
from gateway.providers import http as gateway_http
from gateway.providers import upstream_http
from gateway.providers.upstream_http import UpstreamClient
from gateway.providers.upstream_proxy import ProxyRefused, ProxyRules, ProxyUnreachable, parse_proxy
from gateway.providers.upstream_response import Timeout
from gateway.settings import Settings
from tests.support.proxy import ConnectProxy
from tests.unit.providers.test_upstream_http import (
    CHUNKED_HEAD,
    Request,
    Server,
    T,
    answer,
    call,
    chunked,
    free_port,
    plain,
    serving,
    trusting,
)

pytestmark = pytest.mark.timeout(10)

#: a vendor host no resolver knows: only the test proxy routes it
VENDOR = "api.vendor.test"


def basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture
async def vendor(ca: trustme.CA) -> AsyncIterator[Server]:
    """An https server whose certificate names only :data:`VENDOR`."""
    async with Server(tls=serving(ca, VENDOR)) as server:
        yield server


@pytest.fixture
async def proxy(vendor: Server) -> AsyncIterator[ConnectProxy]:
    async with ConnectProxy(routes={f"{VENDOR}:{vendor.port}": ("127.0.0.1", vendor.port)}) as running:
        yield running


def posting(client: UpstreamClient, url: str, provider: str, body: dict[str, Any] | None = None) -> Any:
    """The adapters' ``post`` of ``body`` to ``url`` (an error status is a bare ProviderError)."""
    return gateway_http.post(
        client, provider, url, headers={}, body=body or {}, timeout=T, classify=lambda *a: errors.ProviderError("x")
    )


def through(proxy: ConnectProxy, no_proxy: str = "", userinfo: str = "") -> ProxyRules:
    url = f"http://{userinfo}127.0.0.1:{proxy.port}"
    return ProxyRules.from_settings(url, url, no_proxy)


async def test_an_https_provider_is_reached_through_a_connect_tunnel(
    vendor: Server, proxy: ConnectProxy, ca: trustme.CA
) -> None:
    """One CONNECT to the vendor's name (the gateway never resolves it: only the proxy knows it),
    TLS with the vendor inside it (its certificate checked for that name), JSON and a chunked
    stream, and the tunnel kept for the next call. The vendor never sees the proxy's credentials."""
    vendor.handler = answer(plain(b'{"a":1}'), CHUNKED_HEAD + chunked(b"data: 1\n\n", b"data: 2\n\n"))
    proxy.credentials = basic("gw", "s3cret@x")
    rules = through(proxy, userinfo="gw:s3cret%40x@")
    async with UpstreamClient(ssl_context=trusting(ca), proxies=rules) as client:
        url = f"https://{VENDOR}:{vendor.port}/v1/chat"
        assert await call(client, url) == (200, b'{"a":1}')
        async with client.post(url, data=b"{}", headers={}, timeout=T) as resp:
            assert await resp.read() == b"data: 1\n\ndata: 2\n\n"
    assert proxy.connects == [f"{VENDOR}:{vendor.port}"]  # one tunnel for both calls
    assert proxy.authorizations == [basic("gw", "s3cret@x")]
    assert vendor.accepted == 1
    first = vendor.requests[0]
    assert first.line == "POST /v1/chat HTTP/1.1"
    assert first.header("host") == f"{VENDOR}:{vendor.port}"
    assert first.header("proxy-authorization") is None


async def test_without_the_proxy_the_vendor_name_does_not_resolve(vendor: Server, ca: trustme.CA) -> None:
    """The control of the test above: the same URL without a proxy fails (the name is the proxy's)."""
    async with UpstreamClient(ssl_context=trusting(ca)) as client:
        with pytest.raises(OSError):
            await call(client, f"https://{VENDOR}:{vendor.port}/v1/chat")
    assert vendor.accepted == 0


async def test_the_certificate_is_checked_inside_the_tunnel(proxy: ConnectProxy, ca: trustme.CA) -> None:
    """A proxy that routes the vendor's name to another server cannot pass it off as the vendor."""
    async with Server(tls=serving(ca, "other.test")) as impostor:
        proxy.routes[f"{VENDOR}:443"] = ("127.0.0.1", impostor.port)
        async with UpstreamClient(ssl_context=trusting(ca), proxies=through(proxy)) as client:
            with pytest.raises(OSError, match="match"):
                await call(client, f"https://{VENDOR}/v1/chat")
    assert proxy.connects == [f"{VENDOR}:443"]
    assert impostor.requests == []


@pytest.mark.parametrize(("refusal", "status"), [("credentials", "407"), ("refused", "403")])
async def test_a_proxys_refusal_is_a_connection_error_never_sent(
    vendor: Server,
    proxy: ConnectProxy,
    ca: trustme.CA,
    refusal: str,
    status: str,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """407 (credentials wanted or wrong) or 403 (destination not allowed): the request never
    reached the provider, so the adapters' post makes it an UpstreamConnectionError (fallback,
    not billed); the log says what the proxy answered and never shows the proxy's password."""
    monkeypatch.setattr(gateway_http, "_UNREACHABLE_LOGGED", {})  # logged once a minute
    if refusal == "credentials":
        proxy.credentials = basic("gw", "right")
    else:
        proxy.refused.add(f"{VENDOR}:{vendor.port}")
    rules = through(proxy, userinfo="gw:wrong-secret@")
    url = f"https://{VENDOR}:{vendor.port}/v1/chat"
    async with UpstreamClient(ssl_context=trusting(ca), proxies=rules) as client:
        with pytest.raises(ProxyRefused, match=rf"refused the tunnel to {VENDOR}:{vendor.port}: {status}") as info:
            await call(client, url)
        assert "wrong-secret" not in str(info.value)
        with pytest.raises(errors.UpstreamConnectionError) as wrapped:
            async with posting(client, url, "openai"):
                pass
    assert not getattr(wrapped.value, "billed_unseen", False)
    assert "ProxyRefused" in str(wrapped.value)
    assert status in caplog.text and "wrong-secret" not in caplog.text
    assert vendor.accepted == 0


async def test_a_proxy_that_cannot_be_reached_or_never_answers(ca: trustme.CA) -> None:
    """A proxy down is a refused connection, named as the proxy's (the log named the vendor's
    host, which the gateway never resolves); one that takes the CONNECT and says nothing is the
    connect timeout's (the request was not sent either way)."""
    port = free_port()
    rules = ProxyRules.from_settings(f"http://u:secret@127.0.0.1:{port}", f"http://127.0.0.1:{port}", None)
    async with UpstreamClient(ssl_context=trusting(ca), proxies=rules) as client:
        for url in (f"https://{VENDOR}/v1/chat", "http://ollama.test:11434/api/chat"):
            with pytest.raises(ProxyUnreachable, match=rf"the proxy http://127.0.0.1:{port} cannot be reached") as info:
                await call(client, url)
            assert isinstance(info.value.__cause__, ConnectionRefusedError)
            assert "secret" not in str(info.value)
    async with ConnectProxy(silent=True) as silent:
        async with UpstreamClient(ssl_context=trusting(ca), proxies=through(silent)) as client:
            with pytest.raises(TimeoutError):
                await call(client, f"https://{VENDOR}/v1/chat", timeout=Timeout(total=5.0, connect=0.3, read=2.0))
        assert silent.connects == [f"{VENDOR}:443"]


@pytest.mark.parametrize(
    ("reply", "error", "message"),
    [
        (b"HTTP/1.1 200 OK\r\n" + b"x-pad: " + b"a" * (70 * 1024), ProxyRefused, "head over"),
        (b"SSH-2.0-OpenSSH_9.2\r\n\r\n", ProxyRefused, "not HTTP"),
        (b"HTTP/1.0 200 Connection established\r\n\r\nsurprise", ProxyRefused, "bytes before the tunnel"),
        (b"HTTP/1.1 20", ConnectionResetError, "closed the connection before it answered"),
    ],
)
async def test_a_connect_answer_that_opens_no_tunnel(
    reply: bytes, error: type[Exception], message: str, ca: trustme.CA
) -> None:
    """A head past 64 KiB, something that is not HTTP, bytes before the tunnel's TLS, a proxy
    that closes mid-answer: each a connection error before anything reached the provider."""

    async def answer_connect(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(reply)
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(answer_connect, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        rules = ProxyRules.from_settings(f"http://127.0.0.1:{port}", None, None)
        async with UpstreamClient(ssl_context=trusting(ca), proxies=rules) as client:
            with pytest.raises(error, match=message):
                await call(client, f"https://{VENDOR}/v1/chat")
    finally:
        server.close()
        await server.wait_closed()


async def test_an_http_provider_is_asked_in_absolute_form() -> None:
    """An http provider (an Ollama on another host) through ``HTTP_PROXY``: the request line
    names the whole URL and carries the proxy's credentials; keep-alive still works."""
    async with Server() as ollama:
        ollama.handler = answer(plain(b'{"done":true}'))
        async with ConnectProxy(routes={f"ollama.test:{ollama.port}": ("127.0.0.1", ollama.port)}) as proxy:
            rules = through(proxy, userinfo="gw:pw@")
            async with UpstreamClient(proxies=rules) as client:
                url = f"http://ollama.test:{ollama.port}/api/chat?x=1"
                assert await call(client, url) == (200, b'{"done":true}')
                assert await call(client, url) == (200, b'{"done":true}')
    assert proxy.forwarded == [f"POST http://ollama.test:{ollama.port}/api/chat?x=1 HTTP/1.1"]
    assert [r.line for r in ollama.requests] == [f"POST http://ollama.test:{ollama.port}/api/chat?x=1 HTTP/1.1"] * 2
    assert ollama.requests[0].header("proxy-authorization") == basic("gw", "pw")
    assert ollama.requests[0].header("host") == f"ollama.test:{ollama.port}"
    assert ollama.accepted == 1


@pytest.mark.parametrize(
    ("answer_head", "refused"),
    [
        (b"HTTP/1.1 407 Proxy Authentication Required\r\nproxy-authenticate: Basic\r\n", True),
        (b"HTTP/1.1 403 Forbidden\r\nx-squid-error: ERR_ACCESS_DENIED 0\r\n", True),
        (b"HTTP/1.1 503 Service Unavailable\r\nproxy-status: squid; error=connection_refused\r\n", True),
        (b"HTTP/1.1 502 Bad Gateway\r\nproxy-status: envoy; error=destination_not_found\r\n", True),
        (b"HTTP/1.1 503 Service Unavailable\r\nx-squid-error: ERR_SHUTTING_DOWN 0\r\n", True),
        (b"HTTP/1.1 500 Internal Server Error\r\nx-squid-error: ERR_ICAP_FAILURE 0\r\n", True),
        (b"HTTP/1.1 500 Internal Server Error\r\nproxy-status: envoy; error=proxy_internal_error\r\n", True),
        (b"HTTP/1.1 403 Forbidden\r\nvia: 1.1 squid\r\n", False),  # the provider's, relayed
        (b"HTTP/1.1 200 OK\r\nproxy-status: squid\r\n", False),
    ],
)
async def test_an_http_providers_answer_is_the_proxys_refusal_only_when_it_says_so(
    answer_head: bytes, refused: bool
) -> None:
    """Through HTTP_PROXY the proxy answers for the provider: its own refusal (a 407, or an
    answer it marks as its own) was taken for the provider's (its 403 as a bad key, its 503 as an
    overload retried three times). The provider's own answers still come as they are."""
    async with Server() as ollama:
        ollama.handler = answer(answer_head + b"content-length: 2\r\n\r\nno")
        async with ConnectProxy(routes={f"ollama.test:{ollama.port}": ("127.0.0.1", ollama.port)}) as proxy:
            async with UpstreamClient(proxies=through(proxy)) as client:
                url = f"http://ollama.test:{ollama.port}/api/chat"
                if refused:
                    status = answer_head.split(b" ")[1].decode()
                    with pytest.raises(ProxyRefused, match=rf"refused the request: {status}"):
                        await call(client, url)
                    with pytest.raises(errors.UpstreamConnectionError) as wrapped:
                        async with posting(client, url, "ollama"):
                            pass
                    assert not wrapped.value.billed_unseen  # the provider never had it
                else:
                    assert (await call(client, url))[1] == b"no"


@pytest.mark.parametrize(
    "answer_head",
    [
        b"HTTP/1.1 504 Gateway Timeout\r\nx-squid-error: ERR_READ_TIMEOUT 0\r\n",
        b"HTTP/1.1 502 Bad Gateway\r\nproxy-status: envoy; error=http_response_timeout\r\n",
        b"HTTP/1.1 502 Bad Gateway\r\nproxy-status: squid; error=connection_terminated\r\n",
    ],
)
async def test_a_proxy_that_lost_the_providers_answer_had_it_sent(answer_head: bytes) -> None:
    """Squid's read timeout (a 504 ERR_READ_TIMEOUT) came after the provider had the request: it
    was recorded free as a refusal, and paid again at the fallback (a diff review)."""
    async with Server() as ollama:
        ollama.handler = answer(answer_head + b"content-length: 2\r\n\r\nno")
        async with ConnectProxy(routes={f"ollama.test:{ollama.port}": ("127.0.0.1", ollama.port)}) as proxy:
            async with UpstreamClient(proxies=through(proxy)) as client:
                with pytest.raises(errors.UpstreamConnectionError, match="after the provider had the request") as info:
                    async with posting(client, f"http://ollama.test:{ollama.port}/api/chat", "ollama"):
                        pass
    assert info.value.billed_unseen


@pytest.mark.parametrize("tls", [False, True])
async def test_an_upload_cut_short_never_gave_the_provider_the_request(
    tls: bool, ca: trustme.CA, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A large body reset part-way, a while after it began to go out: the provider never had the
    request (the transport's buffer was cleared before the loss was seen, so it counted as sent
    and billed; a diff review). Over TLS too, where the TLS layer's buffer empties as soon as the
    body is encrypted (a re-test)."""
    monkeypatch.setattr(upstream_http, "ANSWER_LOST_AFTER", 0.2)

    async def reset_mid_upload(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read(1024)
        await asyncio.sleep(0.4)
        sock = writer.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # a reset
        writer.close()

    server = await asyncio.start_server(reset_mid_upload, "127.0.0.1", 0, ssl=serving(ca, "localhost") if tls else None)
    port = server.sockets[0].getsockname()[1]
    try:
        async with UpstreamClient(ssl_context=trusting(ca)) as client:
            with pytest.raises(errors.UpstreamConnectionError) as info:
                async with posting(
                    client,
                    f"{'https' if tls else 'http'}://localhost:{port}/v1/embeddings",
                    "openai",
                    body={"input": "x" * (48 * 1024 * 1024)},
                ):
                    pass
    finally:
        server.close()
        await server.wait_closed()
    assert not info.value.billed_unseen


async def test_a_body_that_breaks_after_the_head_is_a_cut_answer() -> None:
    """A 200 whose chunked body breaks (a chunk size that is no number) was "cannot reach the
    provider's endpoint", free within a second and billed after: it is a cut answer, as a body
    the connection ends is (a diff review)."""
    async with Server() as vendor:
        vendor.handler = answer(CHUNKED_HEAD + b"5\r\nhello\r\nzz\r\n")
        async with UpstreamClient() as client:
            with pytest.raises(errors.StreamCut, match="response body broke"):
                async with posting(client, vendor.url(), "openai") as resp:
                    await resp.read()


@pytest.mark.parametrize(("wait", "billed"), [(0.0, False), (0.3, True)])
async def test_a_connection_that_ends_without_an_answer_after_a_wait_had_the_request(
    wait: float, billed: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A proxy's idle timeout cut a slow call the vendor answered (and billed): recorded free, and
    the call paid again at the fallback. A connection that ends at once (a keep-alive one the
    server had closed) never had the request processed, and stays free."""
    monkeypatch.setattr(upstream_http, "ANSWER_LOST_AFTER", 0.2)

    async def close_after(request: Request, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        await asyncio.sleep(wait)
        return False

    async with Server() as vendor:
        vendor.handler = close_after
        async with UpstreamClient() as client:
            with pytest.raises(errors.UpstreamConnectionError) as info:
                async with posting(client, vendor.url(), "openai"):
                    pass
    assert info.value.billed_unseen is billed
    assert ("after the provider had the request" in str(info.value)) is billed


async def test_no_proxy_and_loopback_go_direct(ca: trustme.CA) -> None:
    """A host NO_PROXY names, and any loopback host, is reached without the proxy."""
    async with (
        Server(tls=serving(ca, "localhost", "127.0.0.1")) as local,
        ConnectProxy() as proxy,
    ):
        local.handler = answer(plain(b"direct"))
        async with UpstreamClient(ssl_context=trusting(ca), proxies=through(proxy, no_proxy="localhost")) as client:
            assert await call(client, f"https://localhost:{local.port}/") == (200, b"direct")
            assert await call(client, f"https://127.0.0.1:{local.port}/") == (200, b"direct")
    assert proxy.connects == [] and proxy.forwarded == []
    assert local.accepted == 2


# --- the rules ----------------------------------------------------------------------------------


def test_proxy_urls() -> None:
    proxy = parse_proxy("http://u%3Ax:p%40ss@Proxy.Corp:3128", "HTTPS_PROXY")
    assert (proxy.host, proxy.port, proxy.shown) == ("proxy.corp", 3128, "http://proxy.corp:3128")
    assert proxy.authorization == basic("u:x", "p@ss")
    # the bytes the escapes say, as curl sends them (a Latin-1 password)
    latin = parse_proxy("http://lat:%E9t%E9@proxy:3128", "HTTPS_PROXY")
    assert latin.authorization == "Basic " + base64.b64encode(b"lat:\xe9t\xe9").decode()
    bare = parse_proxy("proxy.corp:8080", "HTTPS_PROXY")  # as curl takes it
    assert (bare.host, bare.port, bare.authorization) == ("proxy.corp", 8080, None)
    assert parse_proxy("http://[fd00::1]", "HTTP_PROXY").shown == "http://[fd00::1]:80"
    for bad, message in [
        ("https://proxy:443", "only an http:// proxy"),
        ("socks5://u:secret@proxy:1080", "only an http:// proxy"),
        ("http://proxy:99999", "port"),
        ("http://:3128", "no host"),
        ("http://proxy:3128/path", "without a path"),
        ("http://u:secret@[::1", "HTTPS_PROXY: not a URL"),
    ]:
        with pytest.raises(ValueError, match=message) as info:
            parse_proxy(bad, "HTTPS_PROXY")
        assert "secret" not in str(info.value)


@pytest.mark.parametrize(
    ("no_proxy", "scheme", "host", "port", "proxied"),
    [
        ("", "https", "api.openai.com", 443, True),
        ("", "https", "localhost", 443, False),
        ("", "https", "Ollama.LocalHost", 443, False),
        ("", "http", "127.0.0.53", 11434, False),
        ("", "https", "::1", 443, False),
        ("openai.com", "https", "api.openai.com", 443, False),
        (".openai.com", "https", "api.openai.com", 443, False),
        ("*.openai.com", "https", "openai.com", 443, False),
        ("openai.com", "https", "notopenai.com", 443, True),
        (" internal , 10.0.0.0/8", "http", "10.1.2.3", 11434, False),
        ("10.0.0.0/8", "http", "11.1.2.3", 11434, True),
        ("10.0.0.0/8", "http", "ten.example", 11434, True),
        ("fd00::/8", "http", "fd12::5", 80, False),
        ("ollama:11434", "http", "ollama", 11434, False),
        ("ollama:11434", "http", "ollama", 8080, True),
        ("[fd00::1]:8080", "http", "fd00::1", 8080, False),
        ("*", "https", "api.openai.com", 443, False),
        ("example.com.", "https", "api.openai.com.", 443, True),
        ("corp.example.", "https", "api.corp.example", 443, False),
        ("corp.example.", "https", "corp.example.", 443, False),
    ],
)
def test_which_hosts_go_through_the_proxy(no_proxy: str, scheme: str, host: str, port: int, proxied: bool) -> None:
    rules = ProxyRules.from_settings("http://proxy:3128", "http://proxy:3128", no_proxy)
    assert (rules.for_origin(scheme, host, port) is not None) is proxied


def test_each_scheme_has_its_own_variable() -> None:
    only_https = ProxyRules.from_settings("http://proxy:3128", "  ", None)
    assert only_https.for_origin("https", "api.openai.com", 443) is not None
    assert only_https.for_origin("http", "ollama.corp", 11434) is None
    assert only_https.describe() == "https providers through http://proxy:3128 (direct: loopback)"
    assert only_https.active
    named = ProxyRules.from_settings("http://proxy:3128", None, " .corp ")
    assert named.describe() == "https providers through http://proxy:3128 (direct: loopback, NO_PROXY .corp)"
    assert not ProxyRules.from_settings("http://proxy:3128", None, "*").active
    assert not ProxyRules.from_settings(None, "", None).active


def test_the_settings_read_the_usual_variables_and_refuse_a_bad_one() -> None:
    settings = Settings(_env_file=None)  # type: ignore[call-arg]
    rules = settings.proxy_rules({"HTTPS_PROXY": "http://user:pw@proxy.corp:3128", "no_proxy": ".corp,10.0.0.0/8"})
    assert rules.for_origin("https", "api.anthropic.com", 443) is not None
    assert rules.for_origin("https", "gemini.corp", 443) is None
    # curl's precedence, whatever the environment's order (pydantic took the last one)
    for environ in (
        {"HTTPS_PROXY": "http://upper:1", "https_proxy": "http://lower:2"},
        {"https_proxy": "http://lower:2", "HTTPS_PROXY": "http://upper:1"},
        {"https_proxy": "http://lower:2"},
        {"https_proxy": " ", "HTTPS_PROXY": "http://lower:2"},
    ):
        chosen = settings.proxy_rules(environ).https
        assert chosen is not None and chosen.shown == "http://lower:2"
    # the config file's key wins over the variables
    filed = Settings(_env_file=None, https_proxy="http://filed:3")  # type: ignore[call-arg]
    assert filed.proxy_rules({"https_proxy": "http://lower:2"}).https.shown == "http://filed:3"  # type: ignore[union-attr]
    assert "filed" not in repr(filed)
    with pytest.raises(ValueError, match="only an http:// proxy") as info:
        settings.proxy_rules({"HTTPS_PROXY": "socks5h://user:pw@proxy.corp:1080"})
    assert "pw@" not in str(info.value)
    with pytest.raises(ValueError, match="NO_PROXY: 'ollama:port' has a port"):
        settings.proxy_rules({"HTTPS_PROXY": "http://proxy.corp:3128", "no_proxy": "ollama:port"})
    with pytest.raises(ValueError, match="is a URL: give its host alone"):
        settings.proxy_rules({"HTTPS_PROXY": "http://proxy.corp:3128", "no_proxy": "localhost,http://internal.corp"})
