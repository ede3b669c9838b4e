"""The simulators as the CLI runs them: what they keep of the requests they were sent."""

from __future__ import annotations

import io
import json

import aiohttp
import pytest

from gateway.simulators.base import KEPT_BODY_BYTES
from gateway.simulators.registry import make_simulator


async def test_a_bounded_simulator_keeps_only_the_last_requests() -> None:
    """``serve --simulate`` kept every request body it was sent (2 GB after a review's load);
    the CLI's simulators keep the last ones only, the tests' keep all."""
    sim = make_simulator("openai", max_requests=3)
    await sim.start()
    try:
        async with aiohttp.ClientSession() as http:
            for i in range(10):
                body = {"model": "gpt-4o", "messages": [{"role": "user", "content": f"n{i}"}]}
                async with http.post(f"{sim.base_url}/v1/chat/completions", json=body) as r:
                    assert r.status == 200
    finally:
        await sim.stop()
    assert 3 <= len(sim.requests) <= 6
    assert sim.requests[-1].body["messages"][0]["content"] == "n9"
    assert make_simulator("openai").max_requests is None


async def test_a_bounded_simulator_keeps_no_large_body() -> None:
    """Its last requests alone held 19 GB after 1,000 image requests of 19 MB: a body over
    ``KEPT_BODY_BYTES`` is not kept (the request is, and it is answered as any other)."""
    sim = make_simulator("openai", max_requests=3)
    await sim.start()
    try:
        async with aiohttp.ClientSession() as http:
            for text in ("small", "x" * (KEPT_BODY_BYTES + 1)):
                body = json.dumps({"model": "gpt-4o", "messages": [{"role": "user", "content": text}]}).encode()
                headers = {"content-type": "application/json"}
                url = f"{sim.base_url}/v1/chat/completions"
                async with http.post(url, data=io.BytesIO(body), headers=headers) as r:
                    assert r.status == 200
    finally:
        await sim.stop()
    small, large = sim.requests
    assert small.body["messages"][0]["content"] == "small"
    assert large.body is None and large.path == "/v1/chat/completions"


def test_simulate_prints_nothing_when_a_later_port_is_taken(capsys: pytest.CaptureFixture[str]) -> None:
    """It printed the first providers' ``export`` lines before a later port failed: an ``eval``
    of its output pointed those providers at simulators that were gone (a re-test)."""
    import asyncio
    import socket

    from gateway.cli import _simulate

    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        third = held.getsockname()[1]
        with pytest.raises(OSError):
            asyncio.run(_simulate("127.0.0.1", third - 2))
    assert capsys.readouterr().out == ""
