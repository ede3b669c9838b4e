"""The simulators as the CLI runs them: what they keep of the requests they were sent."""

from __future__ import annotations

import aiohttp

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
