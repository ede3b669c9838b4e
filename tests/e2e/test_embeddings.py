"""``POST /v1/embeddings`` through the official SDK: each vendor's wire format (the simulators),
exact costs, one usage event per attempt, fallback only to the same model, and OpenAI's 400s."""

from __future__ import annotations

import base64
import logging
import math
import struct
from decimal import Decimal
from typing import Any

import openai
import pytest

from gateway.pricing.base import format_usd
from gateway.pricing.book import CompositePriceBook
from gateway.simulators.base import Fault
from gateway.types import Usage
from tests.support.gateway import RunningGateway, running_gateway

#: model -> the provider its vendor is
NATIVE = {
    "text-embedding-3-small": "openai",
    "gemini-embedding-001": "google",
    "nomic-embed-text": "ollama",
}
TEXTS = ["the quick brown fox", "jumps over", "the lazy dog"]


def float32(values: list[float]) -> list[float]:
    """What a vector of float32 values reads as (the vendors' base64)."""
    return list(struct.unpack(f"<{len(values)}f", struct.pack(f"<{len(values)}f", *values)))


def price(provider: str, model: str, tokens: int) -> Decimal | None:
    from datetime import UTC, datetime

    return CompositePriceBook().quote(provider, model, Usage(prompt_tokens=tokens), datetime.now(UTC)).cost


async def embed(gw: RunningGateway, **kwargs: Any) -> Any:
    async with openai.AsyncOpenAI(base_url=gw.base_url, api_key="unused", max_retries=0) as client:
        return await client.embeddings.with_raw_response.create(**kwargs)


@pytest.mark.parametrize("encoding", ["float", "base64", None])
async def test_every_vendor_answers_in_openai_shape_priced_and_recorded(
    encoding: str | None, caplog: pytest.LogCaptureFixture
) -> None:
    """The SDK asks for base64 unless told (and decodes it): vectors come back in the inputs'
    order, as each vendor made them (float32 when base64 is asked, as OpenAI sends it)."""
    caplog.set_level(logging.INFO, logger="gateway.cost")
    async with running_gateway() as gw:
        for model, vendor in NATIVE.items():
            extra = {} if encoding is None else {"encoding_format": encoding}
            raw = await embed(gw, model=model, input=TEXTS, extra_body={"tenantId": "t_embed"}, **extra)
            answer = raw.parse()
            sim = gw.sims[vendor]
            expected = [sim.embedding(text) for text in TEXTS]
            got = [item.embedding for item in answer.data]
            if encoding == "base64":  # asked for, the SDK hands it over as it came
                got = [list(struct.unpack(f"<{len(base64.b64decode(g)) // 4}f", base64.b64decode(g))) for g in got]
            assert [item.index for item in answer.data] == [0, 1, 2]
            if encoding == "float":
                assert got == expected
            else:
                assert got == [float32(v) for v in expected]  # type: ignore[arg-type]
            assert raw.headers["x-llm-provider"] == vendor and raw.headers["x-llm-attempts"] == "1"
            event = gw.event_log.events[-1]
            assert (event.endpoint, event.schema_version, event.provider, event.outcome) == (
                "embeddings",
                3,
                vendor,
                "success",
            )
            assert event.tenant_id == "t_embed" and event.completion_tokens == 0
            if vendor == "google":  # Gemini reports no usage: not made up, and the call unpriced
                assert answer.usage is None and raw.headers["x-llm-cost-usd"] == "unpriced"
                assert event.cost_usd is None and event.billable
                continue
            tokens = sum(len(text.split()) for text in TEXTS)
            assert answer.usage.prompt_tokens == answer.usage.total_tokens == tokens == event.prompt_tokens
            cost = price(vendor, model, tokens)
            assert cost is not None and event.cost_usd == cost
            assert Decimal(raw.headers["x-llm-cost-usd"]) == cost
            if vendor == "openai":
                assert cost == Decimal("0.02") * tokens / 10**6  # $0.02 per million tokens
                assert sim.requests[-1].body["encoding_format"] == ("base64" if encoding != "float" else "float")
        lines = [r.getMessage() for r in caplog.records if r.name == "gateway.cost"]
        assert len(lines) == 3 and all("tenant=t_embed" in line for line in lines)
        cost = price("openai", "text-embedding-3-small", 9)
        assert cost is not None
        assert (
            lines[0] == f"Cost | tenant=t_embed provider=openai model=text-embedding-3-small cost=${format_usd(cost)}"
        )
        assert lines[2] == "Cost | tenant=t_embed provider=ollama model=nomic-embed-text cost=$0.000000"


async def test_the_request_reaches_each_vendor_in_its_own_fields() -> None:
    async with running_gateway() as gw:
        for model in NATIVE:
            answer = (await embed(gw, model=model, input="one text", dimensions=4, encoding_format="float")).parse()
            assert len(answer.data) == 1 and len(answer.data[0].embedding) == 4
        openai_body = gw.sims["openai"].requests[-1].body
        assert openai_body == {
            "model": "text-embedding-3-small",
            "input": ["one text"],
            "encoding_format": "float",
            "dimensions": 4,
        }
        google = gw.sims["google"].requests[-1]
        assert google.path == "/v1beta/models/gemini-embedding-001:batchEmbedContents"
        assert google.body == {
            "requests": [
                {
                    "model": "models/gemini-embedding-001",
                    "outputDimensionality": 4,
                    "content": {"parts": [{"text": "one text"}]},
                }
            ]
        }
        ollama = gw.sims["ollama"].requests[-1]
        assert ollama.path == "/api/embed"
        assert ollama.body == {"model": "nomic-embed-text", "input": ["one text"], "truncate": False, "dimensions": 4}


async def test_token_ids_go_to_openai_and_are_refused_where_no_provider_takes_them() -> None:
    async with running_gateway() as gw:
        raw = await embed(gw, model="text-embedding-3-small", input=[[1, 2, 3], [4]], encoding_format="float")
        assert len(raw.parse().data) == 2 and raw.parse().usage.prompt_tokens == 4
        assert gw.sims["openai"].requests[-1].body["input"] == [[1, 2, 3], [4]]
        before = len(gw.event_log.events)
        with pytest.raises(openai.BadRequestError) as refused:
            await embed(gw, model="gemini-embedding-001", input=[1, 2, 3])
        assert refused.value.code == "unsupported_parameter" and refused.value.param == "input"
        assert len(gw.event_log.events) == before  # nothing was sent


async def test_one_long_array_of_token_ids_is_one_input_not_thousands() -> None:
    """2,049 token ids are one input of 2,049 tokens; OpenAI's limit of 2,048 counts inputs
    (a review: the ids were counted as inputs and the request refused)."""
    async with running_gateway() as gw:
        ids = list(range(3000))
        raw = await embed(gw, model="text-embedding-3-small", input=ids, encoding_format="float")
        assert len(raw.parse().data) == 1 and raw.parse().usage.prompt_tokens == 3000
        sent = gw.sims["openai"].requests[-1].body["input"]
        assert sent == [ids]  # as an array of one input of ids (OpenAI takes both)
        assert [e.prompt_tokens for e in gw.event_log.events] == [3000]


async def test_a_failing_provider_falls_back_to_the_same_model_elsewhere_never_to_another() -> None:
    async with running_gateway() as gw:
        gw.sims["openai"].faults.always(Fault("server_error"))
        raw = await embed(gw, model="text-embedding-3-small", input=TEXTS, encoding_format="float")
        assert raw.headers["x-llm-provider"] == "azure" and raw.headers["x-llm-attempts"] == "2"
        assert gw.sims["azure"].requests[-1].path == "/openai/deployments/text-embedding-3-small/embeddings"
        assert [(e.provider, e.outcome) for e in gw.event_log.events] == [
            ("openai", "upstream_error"),
            ("azure", "success"),
        ]
        # both down: the call fails there; the group's other vendors are never asked
        gw.sims["azure"].faults.always(Fault("server_error"))
        with pytest.raises(openai.APIStatusError) as failed:
            await embed(gw, model="text-embedding-3-small", input="x")
        assert failed.value.status_code == 502
        assert {e.provider for e in gw.event_log.events} == {"openai", "azure"}
        assert not gw.sims["google"].requests and not gw.sims["ollama"].requests


async def test_a_chat_model_group_is_not_an_embedding_model() -> None:
    """``claude-3-haiku``'s group names OpenAI's gpt-3.5-turbo: an embedding call went there (a
    vector of another model, useless next to the others) before it was kept to the model itself."""
    async with running_gateway() as gw:
        with pytest.raises(openai.BadRequestError) as refused:
            await embed(gw, model="claude-3-haiku", input="x")
        assert refused.value.code == "unsupported_parameter" and "anthropic" in str(refused.value.message)
        assert not gw.event_log.events and not gw.sims["openai"].requests


@pytest.mark.parametrize("fault", ["malformed", "cut"])
async def test_an_unreadable_answer_is_recorded_and_falls_back(fault: str) -> None:
    async with running_gateway() as gw:
        gw.sims["openai"].faults.push(Fault(fault))  # type: ignore[arg-type]
        raw = await embed(gw, model="text-embedding-3-small", input=TEXTS)
        assert raw.headers["x-llm-provider"] == "azure"
        first = gw.event_log.events[0]
        assert first.provider == "openai" and first.outcome in ("malformed_response", "stream_cut")
        # OpenAI had the request and answered: billed at a cost nobody saw
        assert first.billable and first.cost_usd is None and raw.headers["x-llm-cost-usd"] == "unpriced"


async def test_rate_limits_are_retried_with_backoff_on_the_same_provider() -> None:
    async with running_gateway() as gw:
        gw.sims["openai"].faults.push(Fault("rate_limit", retry_after=2), times=2)
        raw = await embed(gw, model="text-embedding-3-small", input="x")
        assert raw.headers["x-llm-provider"] == "openai" and raw.headers["x-llm-attempts"] == "3"
        assert gw.sleep.waits[:2] == [2.0, 2.0]


@pytest.mark.parametrize(
    ("body", "param", "code"),
    [
        ({"model": "text-embedding-3-small"}, "input", "missing_required_parameter"),
        ({"model": "text-embedding-3-small", "input": ""}, "input", "invalid_value"),
        ({"model": "text-embedding-3-small", "input": []}, "input", "invalid_value"),
        ({"model": "text-embedding-3-small", "input": ["a", ""]}, "input", "invalid_value"),
        ({"model": "text-embedding-3-small", "input": ["a", 1]}, "input", "invalid_type"),
        ({"model": "text-embedding-3-small", "input": [[1], []]}, "input", "invalid_value"),
        ({"model": "text-embedding-3-small", "input": [-1]}, "input", "invalid_value"),
        ({"model": "text-embedding-3-small", "input": [True]}, "input", "invalid_type"),
        ({"model": "text-embedding-3-small", "input": [1.5, 2]}, "input", "invalid_value"),  # not "a mix"
        ({"model": "text-embedding-3-small", "input": [10**30]}, "input", "invalid_value"),
        ({"model": "text-embedding-3-small", "input": {"a": 1}}, "input", "invalid_type"),
        ({"model": "text-embedding-3-small", "input": ["a"] * 2049}, "input", "invalid_value"),
        (
            {"model": "text-embedding-3-small", "input": "a", "encoding_format": "int8"},
            "encoding_format",
            "invalid_value",
        ),
        ({"model": "text-embedding-3-small", "input": "a", "dimensions": 0}, "dimensions", "invalid_value"),
        ({"model": "text-embedding-3-small", "input": "a", "dimensions": "8"}, "dimensions", "invalid_type"),
        ({"model": "text-embedding-3-small", "input": "a", "messages": []}, "messages", "unknown_parameter"),
        ({"model": "", "input": "a"}, "model", "invalid_value"),
        ({"model": "text-embedding-3-small", "input": "a", "tenantId": "a\nb"}, "tenantId", "invalid_value"),
        ({"model": "no-such-model", "input": "a"}, "model", "model_not_found"),
    ],
)
async def test_bad_input_is_an_openai_400_and_records_nothing(body: dict[str, Any], param: str, code: str) -> None:
    import aiohttp

    async with running_gateway() as gw, aiohttp.ClientSession() as session:
        async with session.post(f"{gw.base_url}/embeddings", json=body) as resp:
            answer = await resp.json()
        assert resp.status == (404 if code == "model_not_found" else 400)
        assert answer["error"]["param"] == param and answer["error"]["code"] == code
        assert answer["error"]["type"] == "invalid_request_error"
        assert not gw.event_log.events


async def test_base64_an_upstream_sends_is_passed_on_as_it_came() -> None:
    async with running_gateway() as gw:
        raw = await embed(gw, model="text-embedding-3-small", input=["abc"], encoding_format="base64")
        import json

        sent = json.loads(raw.http_response.content)["data"][0]["embedding"]
        assert isinstance(sent, str)
        assert sent == gw.sims["openai"].embedding("abc", as_base64=True)
        assert base64.b64decode(sent) == struct.pack("<8f", *gw.sims["openai"].embedding("abc"))  # type: ignore[arg-type]


async def test_gemini_gets_at_most_100_inputs_a_call_and_the_vectors_stay_in_order() -> None:
    """Gemini refuses more than 100 inputs in a batch; 250 went in one call (a review)."""
    texts = [f"text number {i}" for i in range(250)]
    async with running_gateway(providers=("google",)) as gw:
        sim = gw.sims["google"]
        answer = (await embed(gw, model="gemini-embedding-001", input=texts, encoding_format="float")).parse()
        assert [item.embedding for item in answer.data] == [sim.embedding(text) for text in texts]
        assert [len(r.body["requests"]) for r in sim.requests] == [100, 100, 50]
        assert len(gw.event_log.events) == 1  # one attempt, however many calls it took
        # a later call failing is the failure it is, with its status and retry-after, billed for
        # the inputs already embedded, and not retried (a retry embedded and billed the first 100
        # again: a diff review), nor left to the SDK (x-should-retry: false)
        failures = [
            (Fault("server_error"), 502, "upstream_error"),
            (Fault("rate_limit", retry_after=1), 429, "rate_limited"),
            (Fault("bad_request"), 400, "client_error"),
        ]
        for fault, status, outcome in failures:
            sent = len(sim.requests)
            sim.faults.push(Fault("delay", delay=0))
            sim.faults.push(fault)
            with pytest.raises(openai.APIStatusError) as failed:
                await embed(gw, model="gemini-embedding-001", input=texts)
            assert failed.value.status_code == status
            assert "inputs 100 to 199 of 250 failed, after the first 100 were embedded" in failed.value.message
            headers = failed.value.response.headers
            assert headers["x-should-retry"] == "false" and headers["x-llm-attempts"] == "1"
            assert headers.get("retry-after") == ("1" if outcome == "rate_limited" else None)
            assert [len(r.body["requests"]) for r in sim.requests[sent:]] == [100, 100]
            event = gw.event_log.events[-1]
            assert event.outcome == outcome and event.billable and event.cost_usd is None
            assert headers["x-llm-cost-usd"] == "unpriced"  # the simulator, as Gemini, reports no usage


async def test_one_tenants_bad_inputs_late_in_a_batch_do_not_open_geminis_circuit() -> None:
    """A 400 for the 101st input was a ``stream_cut``, a provider failure: five such calls of one
    tenant opened Google's circuit, and every tenant's Gemini calls were refused (a review)."""
    texts = [f"text number {i}" for i in range(150)]
    async with running_gateway(providers=("google",)) as gw:
        sim = gw.sims["google"]
        for _ in range(6):
            sim.faults.push(Fault("delay", delay=0))
            sim.faults.push(Fault("bad_request"))
            with pytest.raises(openai.BadRequestError):
                await embed(gw, model="gemini-embedding-001", input=texts, extra_body={"tenantId": "t_bad"})
        answer = await embed(gw, model="gemini-embedding-001", input=["fine"], extra_body={"tenantId": "t_good"})
        assert answer.headers["x-llm-provider"] == "google"
        assert {e.outcome for e in gw.event_log.events} == {"client_error", "success"}


async def test_a_request_too_large_for_its_timeout_does_not_open_geminis_circuit() -> None:
    """The calls of one request share its timeout: a later call that runs out of it is the
    request's 504, recorded cancelled and billed at an unknown cost (it was sent), not the
    provider's timeout (five of them opened Google's circuit for every tenant: a diff review)."""
    texts = [f"text number {i}" for i in range(150)]
    async with running_gateway(providers=("google",), settings={"request_timeout": 0.6}) as gw:
        sim = gw.sims["google"]
        for _ in range(6):
            sim.faults.push(Fault("delay", delay=0.4))  # the first 100: in time
            sim.faults.push(Fault("delay", delay=0.4))  # the next 50: 0.2 s left for them
            with pytest.raises(openai.APIStatusError) as failed:
                await embed(gw, model="gemini-embedding-001", input=texts, extra_body={"tenantId": "t_big"})
            assert failed.value.status_code == 504 and failed.value.code == "request_timeout"
            assert failed.value.response.headers["x-llm-cost-usd"] == "unpriced"
        events = gw.event_log.events
        assert [e.outcome for e in events] == ["cancelled"] * 6 and all(e.billable for e in events)
        answer = await embed(gw, model="gemini-embedding-001", input=["fine"], extra_body={"tenantId": "t_small"})
        assert answer.headers["x-llm-provider"] == "google"


async def test_an_azure_deployment_serves_its_model_and_a_group_never_swaps_models() -> None:
    """``deployments`` maps the model to the operator's Azure deployment (the same model); a model
    group of the config file naming another model of the family is not used for it (a group
    ``text-embedding-005: {google: text-embedding-004}`` passed as the same family: a review)."""
    from gateway.routing.catalog import Candidate
    from gateway.routing.router import _same_model

    options = {"azure": {"deployments": {"text-embedding-3-small": "prod-emb"}}}
    async with running_gateway(providers=("openai", "azure"), provider_options=options) as gw:
        gw.sims["openai"].faults.always(Fault("server_error"))
        raw = await embed(gw, model="text-embedding-3-small", input="x")
        assert raw.headers["x-llm-provider"] == "azure"
        assert gw.sims["azure"].requests[-1].path == "/openai/deployments/prod-emb/embeddings"
        assert gw.event_log.events[-1].provider_model == "prod-emb"
    group = [Candidate("google", "text-embedding-004"), Candidate("openai", "text-embedding-005")]
    assert _same_model(group, "text-embedding-005") == [Candidate("openai", "text-embedding-005")]
    dated = [Candidate("openai", "gpt-4o-2024-08-06"), Candidate("azure", "gpt-4o")]
    assert _same_model(dated, "gpt-4o-2024-08-06") == dated  # a snapshot and its family are one model


async def test_vectors_cut_to_dimensions_come_back_of_length_one_from_every_vendor() -> None:
    """OpenAI's embeddings have length 1, cut to ``dimensions`` or not, and clients rank by dot
    product. Gemini normalizes its full-size vectors only: one cut to ``outputDimensionality``
    came back as Gemini sent it, shorter than 1 (a review)."""
    async with running_gateway() as gw:
        for model, vendor in NATIVE.items():
            answer = (await embed(gw, model=model, input="one text", dimensions=6, encoding_format="float")).parse()
            vector = answer.data[0].embedding
            assert len(vector) == 6 and math.hypot(*vector) == pytest.approx(1, abs=1e-5), (vendor, vector)
        sent = gw.sims["google"].cut_embedding("one text", 6)
        assert math.hypot(*sent) < 0.95  # what Gemini sends: the first part of a unit vector
        got = (await embed(gw, model="gemini-embedding-001", input="one text", dimensions=6)).parse()
        assert got.data[0].embedding == pytest.approx([v / math.hypot(*sent) for v in sent], rel=1e-5)  # float32
