"""``reasoning_effort`` on Gemini: Google's own mapping of the OpenAI levels (its OpenAI-compatible
endpoint: low, medium, high -> thinking budgets of 1,024, 8,192, 24,576 tokens; none -> off) as
the ``thinkingConfig`` each model takes. The simulator refuses what Gemini refuses (a level on
2.5, a budget out of the model's range, a level the model has not, thinking on a model before
2.5), so every pair below reaching an answer is the adapter sending something Gemini takes."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from gateway import errors
from gateway.providers.base import Timeouts
from gateway.providers.google import GoogleProvider, build
from gateway.providers.google_thinking import BUDGETS, FLASH_LEVELS, PRO_LEVELS
from gateway.providers.upstream_http import UpstreamClient
from gateway.settings import ProviderSettings
from gateway.simulators.google import GeminiSimulator
from gateway.types import REASONING_LEVELS, ChatRequest, Message, Options

KEY = "gm-thinking-key"
EFFORTS = ("none", "minimal", "low", "medium", "high", "xhigh")

#: what each model gets for each of EFFORTS, written out from Google's documentation (not read
#: from the adapter's tables): 2.5 budgets (Pro cannot go under 128 nor turn thinking off),
#: Gemini 3 levels (Pro: low and high only; Flash: minimal, low, medium, high)
FLASH_25 = [{"thinkingBudget": b} for b in (0, 1024, 1024, 8192, 24576, 24576)]
PRO_25 = [{"thinkingBudget": b} for b in (128, 1024, 1024, 8192, 24576, 24576)]
PRO_3 = [{"thinkingLevel": lv} for lv in ("low", "low", "low", "high", "high", "high")]
FLASH_3 = [{"thinkingLevel": lv} for lv in ("minimal", "minimal", "low", "medium", "high", "high")]
EXPECTED = {
    "gemini-2.5-flash": FLASH_25,
    "gemini-2.5-flash-lite": FLASH_25,
    "gemini-2.5-flash-preview-09-2025": FLASH_25,
    "gemini-2.5-pro": PRO_25,
    "models/gemini-2.5-pro": PRO_25,
    "gemini-3-pro-preview": PRO_3,
    "gemini-3.1-pro-preview": PRO_3,
    "gemini-3-flash-preview": FLASH_3,
    "gemini-3.5-flash": FLASH_3,
}


def test_the_levels_mapped_are_the_levels_openai_names() -> None:
    """A level outside them is a need Gemini lacks (``reasoning_effort_level``): not sent to it."""
    assert set(BUDGETS) == set(FLASH_LEVELS) == set(PRO_LEVELS) == REASONING_LEVELS == set(EFFORTS)
    assert request("gemini-2.5-pro", "extreme").needs() == ["reasoning_effort", "reasoning_effort_level"]
    assert request("gemini-2.5-pro", "xhigh").needs() == ["reasoning_effort"]


def request(model: str, effort: str | None, **kw: Any) -> ChatRequest:
    options = Options(reasoning_effort=effort) if effort is not None else None
    return ChatRequest(model=model, messages=[Message("user", "Think, then answer")], options=options, **kw)


@pytest.fixture
async def sim() -> AsyncIterator[GeminiSimulator]:
    async with GeminiSimulator(api_key=KEY) as s:
        yield s


@pytest.fixture
def provider(sim: GeminiSimulator, session: UpstreamClient, timeouts: Timeouts) -> GoogleProvider:
    p = build(ProviderSettings(api_key=KEY, base_url=sim.base_url), session, timeouts)
    assert p is not None
    return p


@pytest.mark.parametrize("model", sorted(EXPECTED))
async def test_each_effort_reaches_a_thinking_gemini_as_a_config_it_takes(
    provider: GoogleProvider, sim: GeminiSimulator, model: str
) -> None:
    assert "reasoning_effort" not in provider.model_lacks(model)
    for effort, expected in zip(EFFORTS, EXPECTED[model], strict=True):
        result = await provider.complete(request(model, effort))
        assert result.text, (model, effort)
        assert sim.requests[-1].body["generationConfig"]["thinkingConfig"] == expected, (model, effort)


async def test_a_stream_carries_it_too(provider: GoogleProvider, sim: GeminiSimulator) -> None:
    chunks = [chunk async for chunk in provider.stream(request("gemini-3-pro-preview", "medium"))]
    assert "".join(c.text for c in chunks if c.text)
    assert sim.requests[-1].body["generationConfig"]["thinkingConfig"] == {"thinkingLevel": "high"}


async def test_no_effort_sends_no_thinking_config(provider: GoogleProvider, sim: GeminiSimulator) -> None:
    await provider.complete(request("gemini-2.5-pro", None))
    assert "thinkingConfig" not in sim.requests[-1].body["generationConfig"]


@pytest.mark.parametrize(
    "model",
    [
        "gemini-2.0-flash", "gemini-1.5-pro", "gemini-pro", "gemma-3-27b-it", "gemini-flash-latest",
        "gemini-2.5-flash-image", "gemini-2.5-flash-preview-tts", "gemini-3-pro-image-preview",
        "gemini-2.5-flash-native-audio-preview-09-2025", "gemini-live-2.5-flash-preview",
    ],
)  # fmt: skip
def test_models_without_a_thinking_switch_lack_the_option(provider: GoogleProvider, model: str) -> None:
    """Gemini answers thinking on them with a 400 that does not fall back: the router skips them."""
    assert provider.model_lacks(model) - {"tools_with_response_format"} == frozenset({"reasoning_effort"})


async def test_a_level_gemini_has_no_value_for_is_a_400_before_any_call(
    provider: GoogleProvider, sim: GeminiSimulator
) -> None:
    with pytest.raises(errors.InvalidRequest) as info:
        await provider.complete(request("gemini-2.5-flash", "ultra"))
    assert info.value.param == "reasoning_effort" and info.value.code == "invalid_value"
    assert sim.requests == []


@pytest.mark.parametrize(
    ("model", "thinking", "refusal"),
    [
        ("gemini-2.0-flash", {"thinkingBudget": 1024}, "thinking is not supported"),
        ("gemini-2.5-flash", {"thinkingLevel": "low"}, "Thinking level is not supported"),
        ("gemini-2.5-pro", {"thinkingBudget": 0}, "only works in thinking mode"),
        ("gemini-2.5-flash", {"thinkingBudget": 30000}, "between 0 and 24576"),
        ("gemini-2.5-flash-lite", {"thinkingBudget": 100}, "is invalid"),
        ("gemini-3-pro-preview", {"thinkingLevel": "minimal"}, "MINIMAL is not supported"),
        ("gemini-3-pro-preview", {"thinkingLevel": "medium"}, "MEDIUM is not supported"),
        ("gemini-3-flash-preview", {"thinkingLevel": "low", "thinkingBudget": 1024}, "only one of"),
    ],
)
async def test_the_simulator_refuses_what_gemini_refuses(
    sim: GeminiSimulator, aio: aiohttp.ClientSession, model: str, thinking: dict[str, Any], refusal: str
) -> None:
    body = {"contents": [{"role": "user", "parts": [{"text": "x"}]}], "generationConfig": {"thinkingConfig": thinking}}
    url = f"{sim.base_url}/v1beta/models/{model}:generateContent"
    async with aio.post(url, json=body, headers={"x-goog-api-key": KEY}) as resp:
        assert resp.status == 400
        assert refusal in (await resp.json())["error"]["message"]


@pytest.mark.parametrize(
    ("model", "takes_the_pair"),
    [
        ("gemini-3-pro-preview", True), ("gemini-3-flash", True), ("gemini-2.5-pro", False),
        ("gemini-2.5-flash", False), ("gemini-2.0-flash", False), ("gemini-pro", False),
    ],
)  # fmt: skip
def test_tools_with_a_json_format_are_lacked_before_gemini_3(
    provider: GoogleProvider, model: str, takes_the_pair: bool
) -> None:
    """Gemini before 3 answers the pair with a 400 that does not fall back (a review)."""
    assert ("tools_with_response_format" not in provider.model_lacks(model)) is takes_the_pair
