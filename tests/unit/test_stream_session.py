"""StreamSession passes a provider's FinalBatch on (also when it is part of the held-back head)
and says the stream is complete only after it."""

from __future__ import annotations

from gateway.providers.base import FinalBatch
from gateway.types import StreamChunk, Usage
from gateway.usage import CallContext
from tests.unit.test_hot_path import BatchingProvider
from tests.unit.test_router import TEMPLATE, make_router

CTX = CallContext("req_1", "t", None, "chat.completions", True, "gpt-4")


async def _run(batches: list[list[StreamChunk]]) -> list[tuple[list[str], bool, bool]]:
    """(texts, is a FinalBatch, session.complete) per batch the session yields."""
    router, _, _ = make_router(BatchingProvider("openai", batches))
    session = await router.open_stream(CTX, TEMPLATE)
    got = [([c.text for c in b], isinstance(b, FinalBatch), session.complete) async for b in session.batches()]
    session.finish("success")
    return got


async def test_a_final_head_stays_final() -> None:
    role, hi, usage = StreamChunk(model="m"), StreamChunk("Hi"), StreamChunk(usage=Usage(1, 1))
    assert await _run([FinalBatch([role, hi, usage])]) == [(["", "Hi", ""], True, True)]
    assert await _run([[role], FinalBatch([hi, usage])]) == [(["", "Hi", ""], True, True)]


async def test_complete_only_after_the_final_batch() -> None:
    batches = [[StreamChunk("a")], [StreamChunk("b")], FinalBatch([StreamChunk(finish_reason="stop")])]
    assert await _run(batches) == [(["a"], False, False), (["b"], False, False), ([""], True, True)]
    assert await _run([[StreamChunk("a")], [StreamChunk("b")]]) == [(["a"], False, False), (["b"], False, False)]
