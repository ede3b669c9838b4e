"""How a conversation is put to each vendor where their shapes differ from OpenAI's."""

from __future__ import annotations

import openai
import pytest

from tests.support.gateway import RunningGateway


def client(gw: RunningGateway) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=gw.base_url, api_key="unused", max_retries=0)


@pytest.mark.parametrize(("provider", "model"), [("anthropic", "claude-3-haiku"), ("google", "gemini-pro")])
async def test_a_conversation_of_system_messages_alone_is_sent_as_a_turn(
    gw: RunningGateway, provider: str, model: str
) -> None:
    """OpenAI answers ``[system]`` alone; Anthropic and Gemini refuse an empty list of turns, so
    the system text becomes the user turn there (was ``messages: []``: their 400)."""
    async with client(gw) as c:
        raw = await c.chat.completions.with_raw_response.create(
            model=model, messages=[{"role": "system", "content": "Write a haiku."}], extra_body={"provider": provider}
        )
    assert raw.headers["x-llm-provider"] == provider
    body = gw.sims[provider].requests[-1].body
    if provider == "anthropic":
        assert body["messages"] == [{"role": "user", "content": "Write a haiku."}] and "system" not in body
    else:
        assert body["contents"] == [{"role": "user", "parts": [{"text": "Write a haiku."}]}]
        assert "systemInstruction" not in body


async def test_a_participants_name_reaches_openai(gw: RunningGateway) -> None:
    """``name`` tells speakers apart in a multi-party chat; OpenAI and Azure carry it (it was
    dropped), the others have no such field."""
    messages = [
        {"role": "user", "content": "I'm Bob", "name": "bob"},
        {"role": "assistant", "content": "Hi Bob", "name": "helper"},
        {"role": "user", "content": "and I'm Alice"},
    ]
    async with client(gw) as c:
        await c.chat.completions.create(model="gpt-4o", messages=messages)
        with pytest.raises(openai.BadRequestError) as info:
            await c.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "x", "name": "a b"}])
    sent = gw.sims["openai"].requests[-1].body["messages"]
    assert sent == [
        {"role": "user", "content": "I'm Bob", "name": "bob"},
        {"role": "assistant", "content": "Hi Bob", "name": "helper"},
        {"role": "user", "content": "and I'm Alice"},
    ]
    assert info.value.param == "messages[0].name"
