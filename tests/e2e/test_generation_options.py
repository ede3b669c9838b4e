"""Generation options only some vendors carry (seed, penalties, JSON modes): each provider gets
them in its own wire format, and a provider that cannot carry one is never asked (no option is
dropped on the way); when none of the providers serving the model can, the answer is a 400."""

from __future__ import annotations

import json
from typing import Any, Literal

import openai
import pytest

from gateway.simulators.base import Fault
from tests.support.gateway import RunningGateway, running_gateway

SCHEMA = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}
JSON_SCHEMA = {"type": "json_schema", "json_schema": {"name": "place", "schema": SCHEMA, "strict": True}}
OPTIONS = {"seed": 7, "presence_penalty": 0.5, "frequency_penalty": -0.25, "response_format": JSON_SCHEMA}


def client(gw: RunningGateway) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=gw.base_url, api_key="unused", max_retries=0)


async def ask(gw: RunningGateway, model: str, provider: str | None = None, **fields: Any) -> Any:
    extra = {"provider": provider} if provider else {}
    async with client(gw) as c:
        raw = await c.chat.completions.with_raw_response.create(
            model=model, messages=[{"role": "user", "content": "Where?"}], extra_body=extra, **fields
        )
    return raw


@pytest.mark.parametrize("provider", ["openai", "azure"])
async def test_openai_wire_carries_the_options_as_sent(gw: RunningGateway, provider: str) -> None:
    raw = await ask(gw, "gpt-4o", provider, **OPTIONS)
    assert raw.headers["x-llm-provider"] == provider
    body = gw.sims[provider].requests[-1].body
    assert {key: body.get(key) for key in OPTIONS} == OPTIONS


async def test_gemini_gets_them_in_generation_config(gw: RunningGateway) -> None:
    raw = await ask(gw, "gemini-pro", "google", **OPTIONS)
    assert raw.headers["x-llm-provider"] == "google"
    config = gw.sims["google"].requests[-1].body["generationConfig"]
    assert config["seed"] == 7 and config["presencePenalty"] == 0.5 and config["frequencyPenalty"] == -0.25
    assert config["responseMimeType"] == "application/json" and config["responseJsonSchema"] == SCHEMA


async def test_ollama_gets_sampling_options_and_format(gw: RunningGateway) -> None:
    raw = await ask(gw, "llama3", "ollama", **OPTIONS)
    assert raw.headers["x-llm-provider"] == "ollama"
    body = gw.sims["ollama"].requests[-1].body
    assert body["options"]["seed"] == 7
    assert body["options"]["presence_penalty"] == 0.5 and body["options"]["frequency_penalty"] == -0.25
    assert body["format"] == SCHEMA


async def test_json_object_mode_in_each_wire_format(gw: RunningGateway) -> None:
    json_object = {"type": "json_object"}
    await ask(gw, "gpt-4o", "openai", response_format=json_object)
    await ask(gw, "gemini-pro", "google", response_format=json_object)
    await ask(gw, "llama3", "ollama", response_format=json_object)
    assert gw.sims["openai"].requests[-1].body["response_format"] == json_object
    config = gw.sims["google"].requests[-1].body["generationConfig"]
    assert config["responseMimeType"] == "application/json" and "responseJsonSchema" not in config
    assert gw.sims["ollama"].requests[-1].body["format"] == "json"


@pytest.mark.parametrize("option", sorted(OPTIONS))
async def test_anthropic_cannot_carry_them_so_the_next_provider_serves(gw: RunningGateway, option: str) -> None:
    """A Claude model goes to Anthropic first; with an option its API has not, Anthropic is not
    asked at all (its API would refuse the field, or worse, ignore it) and the next serves."""
    raw = await ask(gw, "claude-3-haiku", **{option: OPTIONS[option]})
    assert raw.headers["x-llm-provider"] == "openai" and raw.headers["x-llm-attempts"] == "1"
    assert gw.sims["anthropic"].requests == []
    [event] = gw.event_log.events
    assert event.provider == "openai" and event.attempt == 1


async def test_pinning_anthropic_with_an_option_falls_to_the_others(gw: RunningGateway) -> None:
    raw = await ask(gw, "claude-3-haiku", "anthropic", seed=1)
    assert raw.headers["x-llm-provider"] == "openai"
    assert gw.sims["anthropic"].requests == []
    raw = await ask(gw, "claude-3-haiku", "anthropic")  # without it, Anthropic serves as pinned
    assert raw.headers["x-llm-provider"] == "anthropic"


async def test_options_at_their_defaults_still_go_to_anthropic(gw: RunningGateway) -> None:
    raw = await ask(gw, "claude-3-haiku", presence_penalty=0, frequency_penalty=0.0, response_format={"type": "text"})
    assert raw.headers["x-llm-provider"] == "anthropic"
    assert not {"seed", "presence_penalty", "frequency_penalty", "response_format"} & set(
        gw.sims["anthropic"].requests[-1].body
    )


async def test_no_provider_that_serves_the_model_can_carry_it_is_a_400() -> None:
    async with running_gateway(providers=("anthropic",)) as gw:
        async with client(gw) as c:
            for stream in (False, True):
                with pytest.raises(openai.BadRequestError) as info:
                    await c.chat.completions.create(
                        model="claude-3-haiku",
                        messages=[{"role": "user", "content": "x"}],
                        response_format={"type": "json_object"},
                        stream=stream,
                    )
                error = info.value
                assert error.code == "unsupported_parameter" and error.param == "response_format"
                assert "'response_format' is not supported by the providers that serve model" in error.message
                assert "(anthropic)" in error.message
        assert gw.sims["anthropic"].requests == []
        assert gw.event_log.events == []


async def test_legacy_completions_carry_seed_and_penalties(gw: RunningGateway) -> None:
    async with client(gw) as c:
        await c.completions.create(model="gpt-3.5-turbo-instruct", prompt="x", seed=3, presence_penalty=1)
    body = gw.sims["openai"].requests[-1].body
    assert gw.sims["openai"].requests[-1].path.endswith("/completions") and "prompt" in body
    assert (body["seed"], body["presence_penalty"]) == (3, 1)


async def test_a_temperature_above_anthropics_range_goes_to_a_provider_that_takes_it(gw: RunningGateway) -> None:
    """OpenAI's temperature is 0 to 2, Anthropic's 0 to 1: 1.5 is not sent to Anthropic (it
    would refuse it with a 400, which does not fall back) nor bent to fit; 1 still is."""
    raw = await ask(gw, "claude-3-haiku", temperature=1.5)
    assert raw.headers["x-llm-provider"] == "openai" and gw.sims["openai"].requests[-1].body["temperature"] == 1.5
    assert gw.sims["anthropic"].requests == []
    raw = await ask(gw, "claude-3-haiku", temperature=1)
    assert raw.headers["x-llm-provider"] == "anthropic" and gw.sims["anthropic"].requests[-1].body["temperature"] == 1


@pytest.mark.parametrize(
    ("field", "value", "fragment"),
    [
        ("temperature", 1.2, "'temperature' above 1 is not supported"),
        ("max_tokens", 10_000, "'max_tokens' 10000 is above"),  # claude-3-haiku writes 4,096 at most
    ],
)
async def test_what_no_serving_provider_takes_is_a_400(field: str, value: float, fragment: str) -> None:
    async with running_gateway(providers=("anthropic",)) as gw, client(gw) as c:
        with pytest.raises(openai.BadRequestError) as info:
            await c.chat.completions.create(
                model="claude-3-haiku", messages=[{"role": "user", "content": "x"}], **{field: value}
            )
        assert info.value.param == field and fragment in info.value.message
        assert gw.sims["anthropic"].requests == [] and gw.event_log.events == []


async def test_a_blank_stop_sequence_is_not_sent_to_anthropic(gw: RunningGateway) -> None:
    """``stop: "\\n"`` is the most common legacy stop, and Anthropic refuses a stop sequence
    without non-whitespace ("each stop sequence must contain non-whitespace"), a 400 that does
    not fall back: it goes to the next provider, whole; a visible stop still goes to Anthropic."""
    for stop in ("\n", ["END", " "], ""):
        raw = await ask(gw, "claude-3-haiku", stop=stop)
        assert raw.headers["x-llm-provider"] == "openai"
        assert gw.sims["openai"].requests[-1].body["stop"] == (stop if isinstance(stop, list) else [stop])
    assert gw.sims["anthropic"].requests == []
    raw = await ask(gw, "claude-3-haiku", stop=["END", "\nQ:"])
    assert raw.headers["x-llm-provider"] == "anthropic"
    assert gw.sims["anthropic"].requests[-1].body["stop_sequences"] == ["END", "\nQ:"]


async def test_a_blank_user_message_skips_anthropic_and_gemini(gw: RunningGateway) -> None:
    """OpenAI answers an empty user message (or prompt); Anthropic ("text content blocks must
    contain non-whitespace text") and Gemini (an empty text part) refuse it with a 400. With
    OpenAI and Azure rate-limited, such a request went to Anthropic and its 400 ended the call;
    now it is served by Ollama, the next that can carry it."""
    for name in ("openai", "azure"):
        gw.sims[name].faults.always(Fault("rate_limit", retry_after=0.01))
    async with client(gw) as c:
        chat = await c.chat.completions.with_raw_response.create(
            model="gpt-4o", messages=[{"role": "user", "content": " "}], stop=["\n"]
        )
        legacy = await c.completions.with_raw_response.create(model="gpt-4o", prompt="")
    assert chat.headers["x-llm-provider"] == legacy.headers["x-llm-provider"] == "ollama"
    assert gw.sims["anthropic"].requests == [] and gw.sims["google"].requests == []
    assert gw.sims["ollama"].requests[-1].body["messages"][-1]["content"] == ""


async def test_a_blank_message_no_serving_provider_takes_is_a_400() -> None:
    async with running_gateway(providers=("anthropic", "google")) as gw, client(gw) as c:
        for model in ("claude-3-haiku", "gemini-pro"):
            with pytest.raises(openai.BadRequestError) as info:
                await c.chat.completions.create(model=model, messages=[{"role": "user", "content": ""}])
            assert info.value.param == "messages" and "whitespace-only user message" in info.value.message
            # the legacy endpoint's names its prompt (it said "messages", a field it has not: a review)
            with pytest.raises(openai.BadRequestError) as info:
                await c.completions.create(model=model, prompt=" ")
            assert info.value.param == "prompt" and "whitespace-only prompt" in info.value.message
        assert gw.event_log.events == []
    async with running_gateway(providers=("anthropic",)) as gw, client(gw) as c:
        with pytest.raises(openai.BadRequestError) as info:
            await c.chat.completions.create(
                model="claude-3-haiku", messages=[{"role": "user", "content": "x"}], stop="\n"
            )
        assert info.value.param == "stop" and "A stop sequence that is empty or only whitespace" in info.value.message
        assert gw.event_log.events == []


async def test_temperature_with_top_p_is_not_sent_to_a_claude_model_that_refuses_the_pair(gw: RunningGateway) -> None:
    """Opus 4.1, Sonnet and Haiku 4.5 and later refuse ``temperature`` and ``top_p`` together
    (a 400 that does not fall back): such a pair is not sent to them, a 400 before any call when
    only they serve the model; either knob at its default of 1 asks for nothing and is left out
    (SDKs send ``top_p: 1``); the Claude 3 models take the pair."""
    with pytest.raises(openai.BadRequestError) as info:
        await ask(gw, "claude-sonnet-4-5-20250929", temperature=0.5, top_p=0.9)
    assert info.value.param == "top_p" and "'temperature' with 'top_p'" in info.value.message
    assert gw.sims["anthropic"].requests == [] and gw.event_log.events == []
    for model in ("claude-sonnet-4-5", "claude-opus-4-1-20250805", "claude-haiku-4-5"):
        raw = await ask(gw, model, temperature=0.5, top_p=1)
        assert raw.headers["x-llm-provider"] == "anthropic"
        body = gw.sims["anthropic"].requests[-1].body
        assert body["temperature"] == 0.5 and "top_p" not in body
    await ask(gw, "claude-sonnet-4-5", temperature=1, top_p=0.3)
    body = gw.sims["anthropic"].requests[-1].body
    assert body["top_p"] == 0.3 and "temperature" not in body
    for model in ("claude-3-haiku", "claude-sonnet-4-20250514", "claude-3-7-sonnet-latest"):
        raw = await ask(gw, model, temperature=0.5, top_p=0.9)
        assert raw.headers["x-llm-provider"] == "anthropic"
        body = gw.sims["anthropic"].requests[-1].body
        assert (body["temperature"], body["top_p"]) == (0.5, 0.9)


async def test_max_tokens_above_a_models_cap_is_not_sent_to_it(gw: RunningGateway) -> None:
    """claude-3-haiku writes at most 4,096 tokens and Anthropic refuses a larger ``max_tokens``
    with a 400 that does not fall back: 4,097 goes to the next provider, untouched; 4,096 still
    goes to Anthropic. With OpenAI and Azure rate-limited, gpt-4o with 16,384 (valid there) went
    to the fallback Claude model and ended on its 400."""
    raw = await ask(gw, "claude-3-haiku", max_tokens=4097)
    assert raw.headers["x-llm-provider"] == "openai"
    assert gw.sims["openai"].requests[-1].body["max_completion_tokens"] == 4097
    assert gw.sims["anthropic"].requests == []
    raw = await ask(gw, "claude-3-haiku", max_tokens=4096)
    assert raw.headers["x-llm-provider"] == "anthropic" and gw.sims["anthropic"].requests[-1].body["max_tokens"] == 4096
    for name in ("openai", "azure"):
        gw.sims[name].faults.always(Fault("rate_limit", retry_after=0.01))
    raw = await ask(gw, "gpt-4o", max_completion_tokens=16384)
    assert raw.headers["x-llm-provider"] not in ("openai", "azure", "anthropic")
    assert len(gw.sims["anthropic"].requests) == 1


async def test_a_json_schema_without_a_schema_is_plain_json_everywhere(gw: RunningGateway) -> None:
    named_only = {"type": "json_schema", "json_schema": {"name": "anything"}}
    await ask(gw, "gemini-pro", "google", response_format=named_only)
    await ask(gw, "llama3", "ollama", response_format=named_only)
    config = gw.sims["google"].requests[-1].body["generationConfig"]
    assert config["responseMimeType"] == "application/json" and "responseJsonSchema" not in config
    assert gw.sims["ollama"].requests[-1].body["format"] == "json"


@pytest.mark.parametrize(
    ("provider", "model"), [("openai", "gpt-4o"), ("azure", "gpt-4o"), ("google", "gemini-pro"), ("ollama", "llama3")]
)
async def test_the_sdks_structured_output_helpers_work_on_the_simulators(
    gw: RunningGateway, provider: str, model: str
) -> None:
    """``client.chat.completions.parse`` with a pydantic model (and its streaming twin) parse the
    answer into the model. The simulators answered their plain reply text to a request for
    JSON, so the helpers failed on every provider without keys (review)."""
    from pydantic import BaseModel

    class Address(BaseModel):
        street: str
        number: int

    class Place(BaseModel):
        city: str
        population: int
        capital: bool
        address: Address
        kind: Literal["town", "city"]
        nickname: str | None

    async with client(gw) as c:
        parsed = await c.chat.completions.parse(
            model=model,
            messages=[{"role": "user", "content": "Where?"}],
            response_format=Place,
            extra_body={"provider": provider},
        )
        place = parsed.choices[0].message.parsed
        assert isinstance(place, Place) and place.address.number == 1 and place.kind == "town"
        async with c.chat.completions.stream(
            model=model,
            messages=[{"role": "user", "content": "Where?"}],
            response_format=Place,
            extra_body={"provider": provider},
        ) as stream:
            final = await stream.get_final_completion()
        assert final.choices[0].message.parsed == place
        answer = await c.chat.completions.create(
            model=model,
            messages=[{"role": "user", "content": "Answer in JSON"}],
            response_format={"type": "json_object"},
            extra_body={"provider": provider},
        )
    assert isinstance(json.loads(answer.choices[0].message.content or ""), dict)
    assert len(gw.event_log.events) == 3 and all(e.outcome == "success" for e in gw.event_log.events)


@pytest.mark.parametrize(
    ("provider", "model"),
    [
        ("openai", "gpt-4o"),
        ("azure", "gpt-4o"),
        ("anthropic", "claude-3-haiku"),
        ("google", "gemini-pro"),
        ("ollama", "llama3"),
    ],
)
@pytest.mark.parametrize("stream", [False, True])
async def test_every_simulated_model_keeps_to_max_tokens_and_stop(
    gw: RunningGateway, provider: str, model: str, stream: bool
) -> None:
    """The Gemini and Ollama simulators answered their whole sentence whatever the cap or the
    stop sequences (review), so a ``length`` finish could not be seen through them. Every
    simulator now writes as its vendor's model would: cut at the first stop, then at the cap."""

    async def answer(**fields: Any) -> tuple[str, str | None]:
        async with client(gw) as c:
            if not stream:
                done = await c.chat.completions.create(
                    model=model,
                    messages=[{"role": "user", "content": "Hi"}],
                    extra_body={"provider": provider},
                    **fields,
                )
                return done.choices[0].message.content or "", done.choices[0].finish_reason
            pieces = await c.chat.completions.create(
                model=model,
                messages=[{"role": "user", "content": "Hi"}],
                extra_body={"provider": provider},
                stream=True,
                **fields,
            )
            text, finish = "", None
            async for chunk in pieces:
                for choice in chunk.choices:
                    text += choice.delta.content or ""
                    finish = choice.finish_reason or finish
            return text, finish

    reply = gw.sims[provider].reply
    assert await answer(max_tokens=3) == (" ".join(reply.split(" ")[:3]), "length")
    assert await answer(stop=["simulator"]) == (reply[: reply.index("simulator")], "stop")


async def test_a_conversation_without_any_text_is_not_sent_to_vendors_that_refuse_it(gw: RunningGateway) -> None:
    """One empty system message: Gemini (and Anthropic) get it as an empty user turn and answer
    400 "empty text parameter", which does not fall back; OpenAI answers it (review)."""
    raw = await ask_messages(gw, "gpt-4o", "google", [{"role": "system", "content": ""}])
    assert raw.headers["x-llm-provider"] not in ("google", "anthropic")
    assert gw.sims["google"].requests == []


async def ask_messages(gw: RunningGateway, model: str, provider: str, messages: list[dict[str, Any]]) -> Any:
    async with client(gw) as c:
        return await c.chat.completions.with_raw_response.create(
            model=model, messages=messages, extra_body={"provider": provider}
        )


async def test_reasoning_effort_goes_to_openai_and_azure_as_sent_and_nowhere_else(gw: RunningGateway) -> None:
    """A reasoning model's effort was refused everywhere (a 400 for every o-series or gpt-5
    client that set it); OpenAI and Azure take it as sent. Not to Anthropic (a tool loop with
    thinking on must send back signed thinking blocks the OpenAI shape cannot hold) nor Ollama
    (``think`` is per model), nor a Gemini model without thinking (``gemini-pro``; Gemini 2.5
    and later: the next test)."""
    for provider in ("openai", "azure"):
        raw = await ask(gw, "o3-mini", provider, reasoning_effort="low")
        assert raw.headers["x-llm-provider"] == provider
        assert gw.sims[provider].requests[-1].body["reasoning_effort"] == "low"
    for model in ("claude-3-haiku", "gemini-pro"):
        raw = await ask(gw, model, reasoning_effort="high")
        assert raw.headers["x-llm-provider"] == "openai", model
    assert all(gw.sims[name].requests == [] for name in ("anthropic", "google", "ollama"))
    assert (await refused_effort(gw, "o3-mini", "Very High!")).param == "reasoning_effort"


async def refused_effort(gw: RunningGateway, model: str, effort: str, **extra: Any) -> openai.BadRequestError:
    async with client(gw) as c:
        with pytest.raises(openai.BadRequestError) as info:
            await c.chat.completions.create(
                model=model,
                messages=[{"role": "user", "content": "x"}],
                reasoning_effort=effort,  # type: ignore[arg-type]
                extra_body=extra,
            )
    return info.value


async def test_a_thinking_gemini_takes_reasoning_effort_as_its_thinking_config(gw: RunningGateway) -> None:
    """Google's own mapping (its OpenAI-compatible endpoint): a budget on Gemini 2.5, a level on
    Gemini 3. A client of Gemini through the SDK got a 400 ``unsupported_parameter``, or was
    served by another vendor, for ``reasoning_effort`` on gemini-2.5-flash."""
    raw = await ask(gw, "gemini-2.5-flash", reasoning_effort="low")
    assert raw.headers["x-llm-provider"] == "google"
    assert gw.sims["google"].requests[-1].body["generationConfig"]["thinkingConfig"] == {"thinkingBudget": 1024}
    raw = await ask(gw, "gemini-3-pro-preview", reasoning_effort="medium", stream=True)
    assert raw.headers["x-llm-provider"] == "google"
    assert gw.sims["google"].requests[-1].body["generationConfig"]["thinkingConfig"] == {"thinkingLevel": "high"}
    refused = await refused_effort(gw, "gemini-2.5-pro", "ultra", provider="google")
    assert refused.param == "reasoning_effort" and refused.code == "unsupported_parameter"
    assert len(gw.sims["google"].requests) == 2


async def test_a_level_gemini_has_no_value_for_is_not_sent_to_it() -> None:
    """OpenAI takes any level as sent (and answers for itself); Gemini maps six. A group of
    o3-mini and gemini-2.5-flash asked with ``reasoning_effort: "extreme"`` went to OpenAI, then
    Gemini's adapter refused it mid-route: a 400 without the cost of the attempt made, and no
    cost line (a re-test). Gemini is now skipped for it, as for any option it cannot carry."""
    groups = {"thinker": {"openai": "o3-mini", "google": "gemini-2.5-flash"}}
    async with running_gateway(providers=("openai", "google"), settings={"model_groups": groups}) as gw:
        gw.sims["openai"].faults.always(Fault("server_error"))
        async with client(gw) as c:
            with pytest.raises(openai.APIStatusError) as info:
                await c.chat.completions.create(
                    model="thinker",
                    messages=[{"role": "user", "content": "x"}],
                    reasoning_effort="extreme",  # type: ignore[arg-type]
                )
            assert info.value.status_code == 502 and gw.sims["google"].requests == []
            assert info.value.response.headers["x-llm-attempts"] == str(len(gw.event_log.events)) != "0"
            raw = await c.chat.completions.with_raw_response.create(
                model="thinker", messages=[{"role": "user", "content": "x"}], reasoning_effort="high"
            )
            assert raw.headers["x-llm-provider"] == "google"  # a level it maps: the fallback serves


async def test_a_reasoning_effort_no_serving_provider_takes_is_a_400(gw: RunningGateway) -> None:
    async with client(gw) as c:
        with pytest.raises(openai.BadRequestError) as info:
            await c.chat.completions.create(
                model="llama3", messages=[{"role": "user", "content": "x"}], reasoning_effort="low"
            )
    assert info.value.code == "unsupported_parameter" and info.value.param == "reasoning_effort"
    assert gw.sims["ollama"].requests == []


async def test_a_sampling_knob_is_not_sent_to_an_openai_reasoning_model() -> None:
    """o1, o3, o4 and gpt-5 take ``temperature`` and ``top_p`` only at 1, and no penalties:
    anything else is their 400, which does not fall back, so a model group led by one ended
    every request with a temperature (LangChain sends 0.7) on that 400 (a review). Such a request
    skips them, to the group's next model, or is a 400 before any call when only they serve it;
    the knobs at 1, and the chat and later models, go as before."""
    groups = {"thinker": {"openai": "o3-mini", "azure": "o4-mini", "google": "gemini-2.5-flash"}}
    async with running_gateway(settings={"model_groups": groups}) as gw:
        raw = await ask(gw, "thinker", temperature=0.2)
        assert raw.headers["x-llm-provider"] == "google"
        assert gw.sims["openai"].requests == [] and gw.sims["azure"].requests == []
        raw = await ask(gw, "thinker", presence_penalty=0.5)
        assert raw.headers["x-llm-provider"] == "google"
        raw = await ask(gw, "thinker", temperature=1, top_p=1)
        assert raw.headers["x-llm-provider"] == "openai"
        assert gw.sims["openai"].requests[-1].body["temperature"] == 1
        with pytest.raises(openai.BadRequestError) as info:
            await ask(gw, "o3-mini", "openai", top_p=0.5)
        assert info.value.param == "temperature" and "other than 1" in info.value.message
        assert len(gw.sims["openai"].requests) == 1
        for model in ("gpt-5-chat-latest", "gpt-5.1", "gpt-4o"):
            raw = await ask(gw, model, "openai", temperature=0.2)
            assert raw.headers["x-llm-provider"] == "openai"
            assert gw.sims["openai"].requests[-1].body["temperature"] == 0.2
        # gpt-5.1 and later take the knobs without reasoning only (a re-test)
        await ask(gw, "gpt-5.1", "openai", temperature=0.2, reasoning_effort="none")
        assert gw.sims["openai"].requests[-1].body["reasoning_effort"] == "none"
        sent = len(gw.sims["openai"].requests)
        with pytest.raises(openai.BadRequestError) as info:
            await ask(gw, "gpt-5.2", "openai", temperature=0.2, reasoning_effort="high")
        assert "with 'reasoning_effort'" in info.value.message and len(gw.sims["openai"].requests) == sent
