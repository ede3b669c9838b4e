"""Prompt caching through the gateway: ``cache_control`` marks, as clients written for Anthropic
send them in OpenAI's format, reach Anthropic where the client put them, priced by lifetime;
the other vendors, which cache by themselves, get the request as without them."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import openai
import pytest

from tests.support.gateway import RunningGateway

DOC = " ".join(f"doc{i}" for i in range(300))  # a long, stable prefix: 300 tokens in the simulator
HOUR = {"type": "ephemeral", "ttl": "1h"}
FIVE = {"type": "ephemeral"}


def client(gw: RunningGateway) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=gw.base_url, api_key="unused", max_retries=0)


def conversation(question: str) -> list[dict[str, Any]]:
    return [
        {"role": "system", "content": [{"type": "text", "text": DOC, "cache_control": HOUR}]},
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "Context: part two.", "cache_control": FIVE},
                {"type": "text", "text": question},  # varies: after the mark, never cached
            ],
        },
    ]


async def test_marks_reach_anthropic_where_the_client_put_them_and_are_priced_by_lifetime(
    gw: RunningGateway,
) -> None:
    async with client(gw) as c:
        tools = [{"type": "function", "function": {"name": "lookup", "parameters": {"type": "object"}},
                  "cache_control": HOUR}]  # fmt: skip
        first = await c.chat.completions.with_raw_response.create(
            model="claude-3-haiku", messages=conversation("What is doc7?"), tools=tools,
            extra_body={"provider": "anthropic"},
        )  # fmt: skip
        body = gw.sims["anthropic"].requests[-1].body
        assert body["system"] == [{"type": "text", "text": DOC, "cache_control": HOUR}]
        assert body["messages"][0]["content"] == [
            {"type": "text", "text": "Context: part two.", "cache_control": FIVE},
            {"type": "text", "text": "What is doc7?"},
        ]
        assert body["tools"][0]["cache_control"] == HOUR
        second = await c.chat.completions.with_raw_response.create(
            model="claude-3-haiku", messages=conversation("And doc9?"), tools=tools,
            extra_body={"provider": "anthropic"},
        )  # fmt: skip
    # claude-3-haiku per 1K: input 0.00025, output 0.00125, 5-minute write 0.0003125, 1-hour
    # write 0.0005, read 0.000025. The first call writes the document for an hour (300) and
    # the context for 5 minutes (3); the second reads both and writes nothing
    usage1, usage2 = first.parse().usage, second.parse().usage
    assert usage1 is not None and usage2 is not None
    assert usage1.prompt_tokens == 306 and usage2.prompt_tokens == 305
    assert usage2.prompt_tokens_details is not None and usage2.prompt_tokens_details.cached_tokens == 303
    out1, out2 = usage1.completion_tokens, usage2.completion_tokens
    rate = {"in": Decimal("0.00025"), "out": Decimal("0.00125"), "5m": Decimal("0.0003125"),
            "1h": Decimal("0.0005"), "read": Decimal("0.000025")}  # fmt: skip
    expected1 = (3 * rate["in"] + 3 * rate["5m"] + 300 * rate["1h"] + out1 * rate["out"]) / 1000
    expected2 = (2 * rate["in"] + 303 * rate["read"] + out2 * rate["out"]) / 1000
    assert Decimal(first.headers["x-llm-cost-usd"]) == expected1
    assert Decimal(second.headers["x-llm-cost-usd"]) == expected2


async def test_other_vendors_get_the_request_as_without_marks(gw: RunningGateway) -> None:
    async with client(gw) as c:
        await c.chat.completions.create(model="gpt-4o", messages=conversation("What is doc7?"))
        marked = gw.sims["openai"].requests[-1].body
        plain = conversation("What is doc7?")
        for message in plain:
            for part in message["content"]:
                part.pop("cache_control", None)
        await c.chat.completions.create(model="gpt-4o", messages=plain)
        unmarked = gw.sims["openai"].requests[-1].body
    assert marked == unmarked and "cache_control" not in str(marked)


@pytest.mark.parametrize(
    ("messages", "param", "words"),
    [
        ([{"role": "user", "content": "hi", "cache_control": {"type": "persistent"}}], "messages[0].cache_control",
         "ephemeral"),
        ([{"role": "user", "content": [{"type": "text", "text": "hi", "cache_control": {"type": "ephemeral",
          "ttl": "24h"}}]}], "messages[0].content[0].cache_control.ttl", "5m"),
        ([{"role": "user", "content": f"m{i}", "cache_control": FIVE} for i in range(5)], "messages", "At most 4"),
        ([{"role": "user", "content": "a", "cache_control": FIVE}, {"role": "user", "content": "b",
          "cache_control": HOUR}], "messages", "must come before"),
        # the system messages come first at Anthropic, whatever their place in the conversation
        ([{"role": "user", "content": "a", "cache_control": FIVE}, {"role": "system", "content": "b",
          "cache_control": HOUR}], None, None),
    ],
)  # fmt: skip
async def test_marks_anthropic_would_refuse_are_a_400_first(
    gw: RunningGateway, messages: list[dict[str, Any]], param: str | None, words: str | None
) -> None:
    async with client(gw) as c:
        if param is None:
            await c.chat.completions.create(model="claude-3-haiku", messages=messages)  # type: ignore[arg-type]
            return
        with pytest.raises(openai.BadRequestError) as info:
            await c.chat.completions.create(model="claude-3-haiku", messages=messages)  # type: ignore[arg-type]
    assert info.value.param == param and words in info.value.message


async def test_a_mark_on_whitespace_opening_a_turn_marks_the_end_of_the_turn_before(gw: RunningGateway) -> None:
    """Whitespace alone is no block for Anthropic, so a mark on a turn's leading whitespace had
    no block to sit on and went: the cache write the client asked for was never made (a
    re-test). The prefix it caches ends where the turn before ends: the mark goes there."""
    image = {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgoAAAAAAAAAAAAAAAAAAAAAAAAA"}}
    messages = [
        {"role": "user", "content": DOC},
        {"role": "assistant", "content": "ok"},
        {"role": "user", "content": [{"type": "text", "text": " ", "cache_control": FIVE}, image,
                                     {"type": "text", "text": "what is this"}]},
    ]  # fmt: skip
    async with client(gw) as c:
        await c.chat.completions.create(
            model="claude-3-haiku",
            messages=messages,  # type: ignore[arg-type]
            extra_body={"provider": "anthropic"},
        )
    turns = gw.sims["anthropic"].requests[-1].body["messages"]
    assert turns[1] == {"role": "assistant", "content": [{"type": "text", "text": "ok", "cache_control": FIVE}]}
    assert [b["type"] for b in turns[2]["content"]] == ["image", "text"]
    assert all("cache_control" not in b for b in turns[2]["content"])
