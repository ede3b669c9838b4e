"""Budgets of metadata pairs through the real gateway (embedded log, real adapters, simulators,
the official SDK): a team's spent budget refuses that team's calls, by key or by request
metadata, on every endpoint, before any provider is asked and with no event, while the rest of
the tenant is served; a feature's budget across tenants refuses every tenant's calls of it
without telling one what the others spent; ``GET /v1/budgets`` lists them; a restart reads their
spend from the log or the snapshot."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from decimal import Decimal
from pathlib import Path
from typing import Any

import aiohttp
import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families

from gateway.api.state import STATE
from gateway.server import server_installers
from gateway.settings import ApiKey, Settings
from tests.support.gateway import Answered, RunningGateway, running_gateway

KEYS = [
    ApiKey(key="sk-search", tenant="acme", metadata={"team": "search"}),
    ApiKey(key="sk-ads", tenant="acme", metadata={"team": "ads"}),
    ApiKey(key="sk-acme", tenant="acme"),
    ApiKey(key="sk-globex", tenant="globex"),
    ApiKey(key="sk-admin", tenant="ops", admin=True),
]
#: less than one call of the simulator costs: one call uses the budget up
TINY = "0.000001"
BUDGETS = {
    "tenants": {"acme": {"usd": "100"}},
    "metadata": [
        {"tenant": "acme", "match": {"team": "search"}, "usd": TINY},
        {"match": {"feature": "summarize"}, "usd": TINY, "period": "day"},
    ],
}
HI = [{"role": "user", "content": "hi"}]


@asynccontextmanager
async def gateway(tmp_path: Path, answered: Answered | None = None) -> AsyncIterator[RunningGateway]:
    async with running_gateway(
        providers=("openai",),
        event_log="settings",
        settings={"data_dir": tmp_path, "api_keys": KEYS, "budgets": BUDGETS},
        configure=answered.install if answered is not None else None,
    ) as gw:
        yield gw


def client(gw: RunningGateway, key: str, retries: int = 0) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=gw.base_url, api_key=key, max_retries=retries)


async def cost_of_chat(gw: RunningGateway, key: str, **extra: Any) -> Decimal:
    async with client(gw, key) as c:
        answer = await c.chat.completions.with_raw_response.create(model="gpt-4o-mini", messages=HI, **extra)
    return Decimal(answer.headers["x-llm-cost-usd"])


async def logged_events(gw: RunningGateway) -> int:
    await gw.event_log.settled()
    with sqlite3.connect(gw.event_log.path) as conn:
        return int(conn.execute("SELECT count(*) FROM events").fetchone()[0])


async def budgets(gw: RunningGateway, key: str, **params: str) -> Any:
    headers = {"authorization": f"Bearer {key}"}
    async with aiohttp.ClientSession() as s, s.get(f"{gw.base_url}/budgets", params=params, headers=headers) as r:
        assert r.status == 200
        return await r.json()


async def test_a_spent_team_budget_refuses_that_teams_calls_on_every_endpoint_and_serves_the_rest(
    tmp_path: Path,
) -> None:
    answered = Answered()
    async with gateway(tmp_path, answered) as gw:
        spent = await cost_of_chat(gw, "sk-search")
        before = await logged_events(gw)
        answered.count = 0
        async with client(gw, "sk-search", retries=2) as search, client(gw, "sk-acme") as acme:
            refusals = [
                lambda: search.chat.completions.create(model="gpt-4o-mini", messages=HI),
                lambda: search.chat.completions.create(model="gpt-4o-mini", messages=HI, stream=True),
                lambda: search.completions.create(model="gpt-3.5-turbo-instruct", prompt="hi"),
                lambda: search.embeddings.create(model="text-embedding-3-small", input="x"),
                # the budget follows the call's metadata, not the key: another key of the tenant
                # naming the team is refused too, and so is one adding pairs
                lambda: acme.chat.completions.create(model="gpt-4o-mini", messages=HI, metadata={"team": "search"}),
                lambda: search.chat.completions.create(model="gpt-4o-mini", messages=HI, metadata={"env": "prod"}),
            ]
            for call in refusals:
                with pytest.raises(openai.RateLimitError) as refused:
                    await call()
                assert refused.value.code == "budget_exceeded" and refused.value.type == "insufficient_quota"
                assert refused.value.response.headers["x-should-retry"] == "false"
                assert "Tenant 'acme', for calls with metadata 'team=search', has used its monthly budget" in str(
                    refused.value.message
                )
            assert answered.count == len(refusals)  # the SDK (2 retries) did not retry one of them
        assert len(gw.sims["openai"].requests) == 1  # no provider was asked
        assert await logged_events(gw) == before  # nothing recorded

        # the rest of the tenant is served: another team, no team, a team of another name
        for key, extra in (("sk-ads", {}), ("sk-acme", {}), ("sk-acme", {"metadata": {"team": "Search"}})):
            assert await cost_of_chat(gw, key, **extra) > 0
        tenant = gw.app[STATE].budgets.standing("acme")  # type: ignore[union-attr]
        assert tenant is not None and tenant.spent > spent  # the team's spend is the tenant's too
        [team, _feature] = (await budgets(gw, "sk-admin"))["data"][1:]
        assert team["metadata"] == {"team": "search"} and Decimal(team["spentUsd"]) == spent
        assert team["exceeded"] is True and team["remainingUsd"] == "0"


async def test_a_features_budget_across_tenants_counts_every_tenants_calls_and_tells_no_one_the_others_spend(
    tmp_path: Path,
) -> None:
    async with gateway(tmp_path) as gw:
        summarize = {"metadata": {"feature": "summarize"}}
        spent = await cost_of_chat(gw, "sk-globex", **summarize)
        with pytest.raises(openai.RateLimitError) as refused:
            await cost_of_chat(gw, "sk-ads", **summarize)
        message = str(refused.value.message)
        assert (
            "Every tenant together, for calls with metadata 'feature=summarize', has used its daily budget "
            "of $0.000001." in message
        )
        assert str(spent.normalize()) not in message and "globex" not in message
        assert await cost_of_chat(gw, "sk-ads", metadata={"feature": "translate"}) > 0

        # an admin sees every budget; a key sees its tenant's, not the one of every tenant (their spend)
        every = (await budgets(gw, "sk-admin"))["data"]
        assert [(b["tenantId"], b["metadata"], b["period"]) for b in every] == [
            ("acme", {}, "month"),
            ("acme", {"team": "search"}, "month"),
            (None, {"feature": "summarize"}, "day"),
        ]
        assert Decimal(every[2]["spentUsd"]) == spent and every[2]["exceeded"] is True
        own = (await budgets(gw, "sk-ads"))["data"]
        assert [(b["tenantId"], b["metadata"]) for b in own] == [("acme", {}), ("acme", {"team": "search"})]
        assert Decimal(own[1]["spentUsd"]) == 0 and own[1]["exceeded"] is False
        assert (await budgets(gw, "sk-globex"))["data"] == []  # no budget of its own
        named = (await budgets(gw, "sk-admin", tenantId="acme"))["data"]
        assert [b["metadata"] for b in named] == [{}, {"team": "search"}]


async def test_a_restart_reads_a_team_budgets_spend_from_the_log_and_from_the_snapshot(tmp_path: Path) -> None:
    async with gateway(tmp_path) as gw:
        spent = await cost_of_chat(gw, "sk-search")
        await cost_of_chat(gw, "sk-ads")
    for snapshot in (True, False):  # kept, then deleted: the period is read from the log
        if not snapshot:
            (tmp_path / "budgets.json").unlink()
        async with gateway(tmp_path) as gw:
            [team] = gw.app[STATE].budgets.scoped_standings("acme")  # type: ignore[union-attr]
            assert team.spent == spent, snapshot
            with pytest.raises(openai.RateLimitError):
                await cost_of_chat(gw, "sk-search")


async def test_a_metadata_budgets_spend_is_what_the_cost_store_sums_for_its_pairs(tmp_path: Path) -> None:
    roomy = {
        "metadata": [
            {"tenant": "acme", "match": {"team": "search"}, "usd": "100"},
            {"match": {"feature": "summarize"}, "usd": "100", "period": "day"},
        ]
    }
    async with running_gateway(
        providers=("openai",),
        event_log="settings",
        settings={"data_dir": tmp_path, "api_keys": KEYS, "budgets": roomy},
        installers=server_installers(Settings(data_dir=tmp_path, _env_file=None)),  # type: ignore[call-arg]
    ) as gw:
        summarize = {"feature": "summarize"}
        async with client(gw, "sk-search") as search, client(gw, "sk-globex") as globex:
            await search.chat.completions.create(model="gpt-4o-mini", messages=HI)
            stream = await search.chat.completions.create(
                model="gpt-4o", messages=HI, stream=True, stream_options={"include_usage": True}, metadata=summarize
            )
            async for _ in stream:
                pass
            await search.embeddings.create(model="text-embedding-3-small", input="x" * 500)
            await globex.chat.completions.create(model="gpt-4o", messages=HI, metadata=summarize)
        await cost_of_chat(gw, "sk-ads", metadata=summarize)
        await cost_of_chat(gw, "sk-acme")

        async def total(tenant: str, **pairs: str) -> Decimal:
            params = {"tenantId": tenant, **{f"metadata.{k}": v for k, v in pairs.items()}}
            headers = {"authorization": "Bearer sk-admin"}
            for _ in range(250):  # until the projector has stored the six calls
                async with (
                    aiohttp.ClientSession() as s,
                    s.get(f"{gw.base_url}/costs", params={"tenantId": tenant}, headers=headers) as r,
                ):
                    stored = (await r.json())["usageCount"]
                if stored == {"acme": 5, "globex": 1}[tenant]:
                    break
                await asyncio.sleep(0.02)
            else:
                raise AssertionError(f"the cost store holds {stored} calls of {tenant}")
            async with aiohttp.ClientSession() as s, s.get(f"{gw.base_url}/costs", params=params, headers=headers) as r:
                return Decimal((await r.json())["totalCost"])

        team, feature = (await budgets(gw, "sk-admin"))["data"]
        assert Decimal(team["spentUsd"]) == await total("acme", team="search") > 0
        assert Decimal(feature["spentUsd"]) == await total("acme", feature="summarize") + await total(
            "globex", feature="summarize"
        )
        assert await total("globex", feature="summarize") > 0


async def test_a_tenant_with_metadata_budgets_and_none_of_its_own_sees_them_and_no_other(tmp_path: Path) -> None:
    only_teams = {
        "metadata": [
            {"tenant": "globex", "match": {"team": "ops"}, "usd": "5", "period": "day"},
            {"tenant": "acme", "match": {"team": "search"}, "usd": "5"},
            {"match": {"feature": "x"}, "usd": "5"},
        ]
    }
    async with running_gateway(
        providers=("openai",),
        event_log="settings",
        settings={"data_dir": tmp_path, "api_keys": KEYS, "budgets": only_teams},
    ) as gw:
        spent = await cost_of_chat(gw, "sk-globex", metadata={"team": "ops", "feature": "x"})
        [own] = (await budgets(gw, "sk-globex"))["data"]
        assert (own["tenantId"], own["metadata"], own["period"]) == ("globex", {"team": "ops"}, "day")
        assert Decimal(own["spentUsd"]) == spent
        assert [b["metadata"] for b in (await budgets(gw, "sk-search"))["data"]] == [{"team": "search"}]
        every = (await budgets(gw, "sk-admin"))["data"]
        assert [(b["tenantId"], Decimal(b["spentUsd"])) for b in every] == [
            ("globex", spent),
            ("acme", 0),
            (None, spent),
        ]


async def scraped(gw: RunningGateway, key: str = "sk-admin") -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    headers = {"authorization": f"Bearer {key}"}
    async with aiohttp.ClientSession() as s, s.get(f"{gw.url}/metrics", headers=headers) as r:
        assert r.status == 200
        text = await r.text()
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name.startswith("llm_gateway_budget")
    }


def series(tenant: str, metadata: str, period: str) -> tuple[tuple[str, str], ...]:
    return (("metadata", metadata), ("period", period), ("tenant", tenant))


async def test_metrics_give_each_budgets_limit_and_spend_for_alerts(tmp_path: Path) -> None:
    budgets_of = {
        **BUDGETS,
        "default": {"usd": "7", "period": "day"},
        # three budgets whose pairs a "k=v,k=v" label would have written alike
        "metadata": [
            *BUDGETS["metadata"],
            {"match": {"a": "1,b=2"}, "usd": "1"},
            {"match": {"a": "1", "b": "2"}, "usd": "2"},
            {"match": {"a=1,b": "2"}, "usd": "3"},
        ],
    }
    async with running_gateway(
        providers=("openai",),
        event_log="settings",
        settings={"data_dir": tmp_path, "api_keys": KEYS, "budgets": budgets_of, "metrics_auth": True},
    ) as gw:
        team = await cost_of_chat(gw, "sk-search")
        feature = await cost_of_chat(gw, "sk-globex", metadata={"feature": "summarize"})
        other = await cost_of_chat(gw, "sk-ads")
        assert await scraped(gw) == {
            ("llm_gateway_budget_limit_usd", series("acme", "", "month")): 100.0,
            ("llm_gateway_budget_spent_usd", series("acme", "", "month")): float(team + other),
            # a tenant under the default: a series once it has spent this period
            ("llm_gateway_budget_limit_usd", series("globex", "", "day")): 7.0,
            ("llm_gateway_budget_spent_usd", series("globex", "", "day")): float(feature),
            ("llm_gateway_budget_limit_usd", series("acme", '{"team":"search"}', "month")): float(Decimal(TINY)),
            ("llm_gateway_budget_spent_usd", series("acme", '{"team":"search"}', "month")): float(team),
            # a budget of every tenant: the tenant label is empty
            ("llm_gateway_budget_limit_usd", series("", '{"feature":"summarize"}', "day")): float(Decimal(TINY)),
            ("llm_gateway_budget_spent_usd", series("", '{"feature":"summarize"}', "day")): float(feature),
            ("llm_gateway_budget_limit_usd", series("", '{"a":"1,b=2"}', "month")): 1.0,
            ("llm_gateway_budget_spent_usd", series("", '{"a":"1,b=2"}', "month")): 0.0,
            ("llm_gateway_budget_limit_usd", series("", '{"a":"1","b":"2"}', "month")): 2.0,
            ("llm_gateway_budget_spent_usd", series("", '{"a":"1","b":"2"}', "month")): 0.0,
            ("llm_gateway_budget_limit_usd", series("", '{"a=1,b":"2"}', "month")): 3.0,
            ("llm_gateway_budget_spent_usd", series("", '{"a=1,b":"2"}', "month")): 0.0,
            ("llm_gateway_budgets_complete", ()): 1.0,
        }


async def test_budget_metrics_are_given_only_where_the_metrics_are_not_open_to_every_key(tmp_path: Path) -> None:
    """With API keys and an open /metrics, the series would show every tenant's spend to anyone
    (/v1/budgets shows a key its own tenant's): none then. A gateway without keys is open anyway."""
    async with gateway(tmp_path) as gw:
        await cost_of_chat(gw, "sk-search")
        assert await scraped(gw, key="none") == {}
    async with running_gateway(
        providers=("openai",), event_log="settings", settings={"data_dir": tmp_path, "budgets": BUDGETS}
    ) as gw:
        assert ("llm_gateway_budgets_complete", ()) in await scraped(gw, key="none")
    # a gateway without budgets has none of these series
    async with running_gateway(providers=("openai",)) as gw:
        assert await scraped(gw) == {}
