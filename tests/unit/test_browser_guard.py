"""An open gateway (no API keys) refuses what a web page sends it through its visitor's browser
(gateway/api/browser_guard.py): a review spent money, ran SQL and started a replay from a page
of another site, and read costs through a DNS-rebound name."""

from __future__ import annotations

import pytest
from aiohttp import web
from aiohttp.test_utils import make_mocked_request

from gateway.api.auth import Authenticator
from gateway.api.browser_guard import is_loopback_host
from gateway.errors import AuthenticationFailed, PermissionDenied
from gateway.settings import ApiKey


def request(host: str = "127.0.0.1:8080", **headers: str) -> web.Request:
    return make_mocked_request("POST", "/v1/chat/completions", headers={"host": host, **headers})


@pytest.mark.parametrize(
    "headers",
    [
        {"origin": "https://evil.example"},
        {"origin": "null"},  # a sandboxed frame, a file: page
        {"origin": "http://127.0.0.1.evil.example"},
        {"sec-fetch-site": "cross-site"},
    ],
)
def test_an_open_gateway_refuses_a_page_of_another_site(headers: dict[str, str]) -> None:
    with pytest.raises(PermissionDenied) as info:
        Authenticator([], "default", loopback=True).authenticate(request(**headers))
    assert info.value.code == "cross_site_refused" and "api_keys" in info.value.message


@pytest.mark.parametrize(
    "origin", ["http://localhost:3000", "http://127.0.0.1:5173", "http://[::1]:8000", "http://app.localhost"]
)
def test_a_local_tools_page_and_clients_without_an_origin_pass(origin: str) -> None:
    auth = Authenticator([], "default", loopback=True)
    assert auth.authenticate(request(origin=origin, **{"sec-fetch-site": "same-site"})).admin
    assert auth.authenticate(request("localhost:8080")).admin  # an SDK, curl: no Origin


def test_on_loopback_a_name_pointed_at_it_is_refused() -> None:
    """DNS rebinding: the page's own name re-pointed at 127.0.0.1 is same-origin for the browser
    (a GET carries no Origin), so the Host says it."""
    with pytest.raises(PermissionDenied):
        Authenticator([], "default", loopback=True).authenticate(request("rebind.evil.example:8080"))
    # no Host at all: no browser sends that (HTTP/1.0, an in-process call; the request-path bench's)
    no_host = make_mocked_request("POST", "/v1/chat/completions", headers={})
    assert Authenticator([], "default", loopback=True).authenticate(no_host).admin
    # listening beyond loopback (compose's service name, a pod's), any host is taken
    assert Authenticator([], "default", loopback=False).authenticate(request("gateway:8080")).admin


def test_with_keys_the_key_decides_and_two_keys_are_refused() -> None:
    auth = Authenticator([ApiKey(key="sk-a", tenant="a")], "default", loopback=True)
    principal = auth.authenticate(
        request("rebind.evil.example", origin="https://evil.example", authorization="Bearer sk-a")
    )
    assert principal.tenant == "a"
    both = make_mocked_request(
        "POST", "/v1/chat/completions", headers=[("authorization", "Bearer sk-a"), ("authorization", "Bearer sk-b")]
    )
    with pytest.raises(AuthenticationFailed) as info:
        auth.authenticate(both)  # which one counted? the first, silently (a review)
    assert info.value.param == "authorization"
    with pytest.raises(AuthenticationFailed):  # Authorization won over x-api-key, silently (a re-test)
        auth.authenticate(request(authorization="Bearer sk-a", **{"x-api-key": "sk-b"}))
    assert auth.authenticate(request(authorization="Bearer sk-a", **{"x-api-key": "sk-a"})).tenant == "a"


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("127.0.0.1:8080", True), ("localhost", True), ("[::1]:8080", True), ("127.9.9.9", True),
        ("LOCALHOST.:1", True), ("0.0.0.0", False), ("10.0.0.2:80", False), ("gateway", False), ("[fe80::1]", False),
        ("", False),
    ],
)  # fmt: skip
def test_loopback_hosts(host: str, loopback: bool) -> None:
    assert is_loopback_host(host) is loopback
