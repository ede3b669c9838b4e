"""Azure's ``deployments`` map (config file): a call of ``gpt-4o`` goes to the operator's
deployment, and the gateway asks by that name everywhere, as when a model group names the
deployment: its event's ``provider_model``, its price (a price-file entry for the deployment),
its cost line. A review found a ``gpt-4o`` call through ``deployments: {gpt-4o: prod-gpt4o}``
billed at the built-in gpt-4o rate (13x the operator's entry for ``prod-gpt4o``) and recorded as
``gpt-4o``, so no replay could price it by deployment either."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import openai
import yaml

from gateway.pricing.book import book_from_document
from tests.support.gateway import running_gateway

PRICES = {
    "version": "ops-azure",
    "prices": [{"provider": "azure", "model": "prod-gpt4o", "input_per_1k": "0.0005", "output_per_1k": "0.0007"}],
}


async def call(base_url: str, model: str, **extra: Any) -> Any:
    async with openai.AsyncOpenAI(base_url=base_url, api_key="unused", max_retries=0) as c:
        return await c.chat.completions.with_raw_response.create(
            model=model, messages=[{"role": "user", "content": "Hi there"}], extra_body={"provider": "azure"}, **extra
        )


async def test_a_mapped_call_is_asked_priced_and_recorded_by_its_deployment() -> None:
    book = book_from_document(yaml.safe_load(yaml.safe_dump(PRICES)))
    options = {"azure": {"deployments": {"gpt-4o": "prod-gpt4o"}}}
    async with running_gateway(providers=("azure",), price_book=book, provider_options=options) as gw:
        for stream in (False, True):
            raw = await call(gw.base_url, "gpt-4o", stream=stream)
            if stream:
                async for _ in raw.parse():
                    pass
            assert gw.sims["azure"].requests[-1].path == "/openai/deployments/prod-gpt4o/chat/completions"
            event = gw.event_log.events[-1]
            assert event.provider_model == "prod-gpt4o" and event.requested_model == "gpt-4o"
            expected = (event.prompt_tokens * Decimal("0.0005") + event.completion_tokens * Decimal("0.0007")) / 1000
            assert event.cost_usd == expected and "file-ops-azure" in event.price_version
            if not stream:
                assert Decimal(raw.headers["x-llm-cost-usd"]) == expected


async def test_a_deployment_named_as_another_mapped_model_is_not_mapped_twice() -> None:
    """``gpt-4`` deployed under the name ``gpt-4o``, and ``gpt-4o`` as ``prod``: ``gpt-4`` goes to
    the deployment ``gpt-4o``, not on through the map to ``prod``."""
    options = {"azure": {"deployments": {"gpt-4": "gpt-4o", "gpt-4o": "prod"}}}
    async with running_gateway(providers=("azure",), provider_options=options) as gw:
        await call(gw.base_url, "gpt-4")
        assert gw.sims["azure"].requests[-1].path == "/openai/deployments/gpt-4o/chat/completions"
        await call(gw.base_url, "gpt-4o")
        assert gw.sims["azure"].requests[-1].path == "/openai/deployments/prod/chat/completions"
        assert [e.provider_model for e in gw.event_log.events] == ["gpt-4o", "prod"]
