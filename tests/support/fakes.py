"""In-process fakes for unit tests: a scripted provider, a fixed price book, a manual clock."""

from __future__ import annotations

from collections import deque
from collections.abc import AsyncIterator, Sequence
from datetime import UTC, datetime, timedelta
from decimal import Decimal

from gateway import errors
from gateway.pricing.base import Quote, Rate
from gateway.types import CAPABILITIES, ChatRequest, ChatResult, StreamChunk, Usage

Step = BaseException | ChatResult | list[StreamChunk | BaseException]


class ScriptedProvider:
    """Replays a script: each call takes the next step (an error to raise or a result)."""

    def __init__(
        self, name: str, *steps: Step, default: Step | None = None, options: frozenset[str] = frozenset(CAPABILITIES)
    ) -> None:
        self.name = name
        self.options = options
        self.steps: deque[Step] = deque(steps)
        self.default = default if default is not None else ok(f"hello from {name}")
        self.calls: list[ChatRequest] = []

    def _next(self) -> Step:
        return self.steps.popleft() if self.steps else self.default

    async def complete(self, request: ChatRequest) -> ChatResult:
        self.calls.append(request)
        step = self._next()
        if isinstance(step, BaseException):
            raise step
        assert isinstance(step, ChatResult)
        return step

    async def stream(self, request: ChatRequest) -> AsyncIterator[StreamChunk]:
        self.calls.append(request)
        step = self._next()
        if isinstance(step, BaseException):
            raise step
        if isinstance(step, ChatResult):
            words = step.text.split(" ")
            step = [StreamChunk(text=w if i == 0 else " " + w) for i, w in enumerate(words)] + [
                StreamChunk(finish_reason=step.finish_reason, usage=step.usage, model=step.model)
            ]
        for item in step:
            if isinstance(item, BaseException):
                raise item
            yield item


def ok(text: str = "hi there", model: str = "gpt-4", prompt: int = 10, completion: int = 5) -> ChatResult:
    return ChatResult(text=text, finish_reason="stop", usage=Usage(prompt, completion), model=model)


def rate_limited(provider: str, retry_after: float | None = None) -> errors.RateLimited:
    return errors.RateLimited(f"{provider}: slow down", provider=provider, http_status=429, retry_after=retry_after)


class FixedPriceBook:
    """Every model at one rate, except names in ``unpriced``."""

    version = "test-prices-1"

    def __init__(self, rate: Rate | None = None, unpriced: frozenset[str] = frozenset()) -> None:
        self.rate = rate or Rate(Decimal("0.03"), Decimal("0.06"))
        self.unpriced = unpriced

    def quote(self, provider: str, model: str, usage: Usage, at: datetime) -> Quote:
        if model in self.unpriced:
            return Quote(None, self.version, "unpriced")
        return Quote(self.rate.cost(usage), self.version, "test")

    def quote_first(self, provider: str, models: Sequence[str], usage: Usage, at: datetime) -> Quote:
        priced = [model for model in models if model not in self.unpriced]
        return self.quote(provider, priced[0] if priced else models[0], usage, at)


class ManualClock:
    def __init__(self, start: datetime | None = None) -> None:
        self.now = start or datetime(2026, 1, 1, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


class RecordingSleep:
    """An injected sleep that records the waits instead of waiting."""

    def __init__(self) -> None:
        self.waits: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.waits.append(seconds)
