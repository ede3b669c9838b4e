"""The gateway behind an egress proxy (``HTTPS_PROXY``), as in a platform network that reaches
the vendors only through one: the official openai SDK against the gateway, whose providers
are simulators served over TLS under vendor-like names that only the proxy can route, with
certificates from a private CA the gateway trusts through ``SSL_CERT_FILE``."""

from __future__ import annotations

import base64
import ssl
from collections.abc import AsyncIterator
from decimal import Decimal
from pathlib import Path

import openai
import pytest
import trustme

from gateway.settings import ProviderSettings
from gateway.simulators.base import Simulator
from gateway.simulators.registry import SIMULATED_KEY, make_simulator
from tests.support.gateway import RunningGateway, running_gateway
from tests.support.proxy import ConnectProxy

NAMES = {"openai": "api.openai.test", "anthropic": "api.anthropic.test"}
CREDENTIALS = "Basic " + base64.b64encode(b"gw:p@ss").decode()


def client(gw: RunningGateway) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=gw.base_url, api_key="unused", max_retries=0)


async def vendor(name: str, ca: trustme.CA) -> Simulator:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert(NAMES[name]).configure_cert(context)
    sim = make_simulator(name)
    await sim.start(ssl_context=context)
    return sim


@pytest.fixture
async def behind_a_proxy(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[tuple[RunningGateway, ConnectProxy, dict[str, Simulator]]]:
    ca = trustme.CA()
    ca.cert_pem.write_to_path(str(tmp_path / "ca.pem"))
    monkeypatch.setenv("SSL_CERT_FILE", str(tmp_path / "ca.pem"))  # a private CA, as OpenSSL reads it
    sims = {name: await vendor(name, ca) for name in NAMES}
    try:
        targets = {f"{NAMES[name]}:{sim.port}": ("127.0.0.1", sim.port) for name, sim in sims.items()}
        async with ConnectProxy(routes=targets, credentials=CREDENTIALS) as proxy:
            providers = {
                "openai": ProviderSettings(
                    api_key=SIMULATED_KEY, base_url=f"https://{NAMES['openai']}:{sims['openai'].port}/v1"
                ),
                "anthropic": ProviderSettings(
                    api_key=SIMULATED_KEY, base_url=f"https://{NAMES['anthropic']}:{sims['anthropic'].port}"
                ),
                **{name: ProviderSettings(enabled=False) for name in ("azure", "google", "ollama")},
            }
            settings = {"providers": providers, "https_proxy": f"http://gw:p%40ss@127.0.0.1:{proxy.port}"}
            async with running_gateway(providers=(), settings=settings) as gw:
                yield gw, proxy, sims
    finally:
        for sim in sims.values():
            await sim.stop()


async def test_calls_streams_and_fallback_go_through_the_proxy(
    behind_a_proxy: tuple[RunningGateway, ConnectProxy, dict[str, Simulator]],
) -> None:
    gw, proxy, sims = behind_a_proxy
    openai_target = f"{NAMES['openai']}:{sims['openai'].port}"
    anthropic_target = f"{NAMES['anthropic']}:{sims['anthropic'].port}"

    # the proxy refuses OpenAI's host: the call was not sent there, and falls back to Anthropic
    proxy.refused.add(openai_target)
    async with client(gw) as c:
        raw = await c.chat.completions.with_raw_response.create(
            model="gpt-4", messages=[{"role": "user", "content": "Say hello"}], extra_body={"tenantId": "t1"}
        )
    assert raw.headers["x-llm-provider"] == "anthropic"
    assert raw.headers["x-llm-attempts"] == "2"
    assert raw.parse().choices[0].message.content == sims["anthropic"].reply
    refused, served = gw.event_log.events
    assert (refused.provider, refused.outcome, refused.cost_usd) == ("openai", "connection_error", Decimal(0))
    assert "ProxyRefused" in (refused.error_message or "")
    assert (served.provider, served.outcome) == ("anthropic", "success")
    assert served.cost_usd is not None and served.cost_usd > 0
    assert sims["openai"].requests == []

    # allowed again: a call and a stream through one tunnel, each priced
    proxy.refused.clear()
    async with client(gw) as c:
        raw = await c.chat.completions.with_raw_response.create(
            model="gpt-4", messages=[{"role": "user", "content": "Say hello"}], extra_body={"tenantId": "t1"}
        )
        stream = await c.chat.completions.create(
            model="gpt-4",
            messages=[{"role": "user", "content": "Tell me"}],
            stream=True,
            stream_options={"include_usage": True},
        )
        chunks = [chunk async for chunk in stream]
    assert raw.headers["x-llm-provider"] == "openai"
    assert raw.parse().choices[0].message.content == sims["openai"].reply
    assert "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices) == sims["openai"].reply
    assert chunks[-1].usage is not None and chunks[-1].model_extra is not None
    assert Decimal(chunks[-1].model_extra["x_llm_gateway"]["cost_usd"]) == gw.event_log.events[-1].cost_usd > 0
    assert len(sims["openai"].requests) == 2

    # CONNECT to each vendor's name, with the proxy's credentials; the tunnels are kept
    assert proxy.connects == [openai_target, anthropic_target, openai_target]
    assert set(proxy.authorizations) == {CREDENTIALS}
