"""Each usage event names the gateway process that made the attempt (``gateway_instance``,
Postgres ``"gatewayInstance"``): ``LLM_GATEWAY_INSTANCE_ID``, else the host's name. A review of
two replicas in Kafka mode found it NULL in every row: no attempt, the billed ones of a replica
killed mid-call among them, could be traced to the replica that made it."""

from __future__ import annotations

import socket

import openai

from tests.support.gateway import running_gateway


async def one_call(base_url: str) -> None:
    async with openai.AsyncOpenAI(base_url=base_url, api_key="unused", max_retries=0) as c:
        await c.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "hi"}])


async def test_events_name_the_host_by_default_and_the_instance_id_when_set() -> None:
    async with running_gateway(providers=("openai",)) as gw:
        await one_call(gw.base_url)
        [event] = gw.event_log.events
    assert event.gateway_instance == socket.gethostname() != ""
    async with running_gateway(providers=("openai",), settings={"instance_id": "gw-eu-2"}) as gw:
        await one_call(gw.base_url)
        [event] = gw.event_log.events
    assert event.gateway_instance == "gw-eu-2"
