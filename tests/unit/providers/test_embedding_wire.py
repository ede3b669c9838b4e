"""The embedding answers' readers: one vector per input or a malformed answer (never a vector
short, out of order or made of something else), and the usage each vendor reports."""

from __future__ import annotations

import base64
import struct
from typing import Any

import pytest

from gateway import errors
from gateway.embedding import EmbeddingRequest, as_base64, as_floats, checked_vector
from gateway.providers import embedding_wire as wire
from gateway.types import Usage

TWO = EmbeddingRequest("text-embedding-3-small", texts=("a", "b"))


def openai_answer(*vectors: Any, usage: Any = None) -> dict[str, Any]:
    return {
        "object": "list",
        "data": [{"object": "embedding", "index": i, "embedding": v} for i, v in enumerate(vectors)],
        "model": "text-embedding-3-small",
        "usage": usage if usage is not None else {"prompt_tokens": 2, "total_tokens": 2},
    }


def test_openai_vectors_are_put_in_index_order_with_the_usage() -> None:
    answer = openai_answer([0.1, 0.2], [0.3, 0.4])
    answer["data"].reverse()
    result = wire.parse_openai(answer, TWO, "openai")
    assert result.vectors == [[0.1, 0.2], [0.3, 0.4]]
    assert result.usage == Usage(prompt_tokens=2) and result.model == "text-embedding-3-small"


@pytest.mark.parametrize(
    "answer",
    [
        openai_answer([0.1]),  # one vector for two inputs
        openai_answer([0.1], [0.2], [0.3]),
        {"data": [{"index": 0, "embedding": [0.1]}, {"index": 0, "embedding": [0.2]}]},  # an index twice
        {"data": [{"index": 0, "embedding": [0.1]}, {"index": 2, "embedding": [0.2]}]},  # a gap
        {"data": [{"index": "0", "embedding": [0.1]}, {"index": 1, "embedding": [0.2]}]},
        openai_answer([0.1], []),  # an empty vector
        openai_answer([0.1], ["x"]),
        openai_answer([0.1], [None]),
        openai_answer([0.1], [[0.2]]),
        openai_answer([0.1], [1e308, 1e308]),  # past a double: no vector
        openai_answer([0.1], "AAAA"),  # base64 not asked for
        {"object": "list"},
        [],
    ],
)
def test_an_openai_answer_that_is_not_one_vector_per_input_is_malformed(answer: Any) -> None:
    with pytest.raises(errors.MalformedResponse):
        wire.parse_openai(answer, TWO, "openai")


def test_base64_is_taken_as_it_came_when_asked_and_checked() -> None:
    asked = EmbeddingRequest("m", texts=("a",), base64=True)
    good = base64.b64encode(struct.pack("<2f", 0.5, -1.0)).decode()
    assert wire.parse_openai(openai_answer(good), asked, "openai").vectors == [good]
    for bad in ("not base64!", base64.b64encode(b"abc").decode(), ""):  # not whole float32 values
        with pytest.raises(errors.MalformedResponse):
            wire.parse_openai(openai_answer(bad), asked, "openai")


def test_an_unreadable_usage_is_unknown_not_zero() -> None:
    answer = openai_answer([0.1], [0.2], usage={"prompt_tokens": -3})
    assert wire.parse_openai(answer, TWO, "openai").usage is None


def test_gemini_vectors_and_its_missing_usage() -> None:
    answer = {"embeddings": [{"values": [1, 2]}, {"values": [0.5, 0.25]}]}
    result = wire.parse_gemini(answer, TWO, "google")
    assert result.vectors == [[1, 2], [0.5, 0.25]] and result.usage is None
    assert wire.parse_gemini(answer | {"usageMetadata": {"promptTokenCount": 7}}, TWO, "google").usage == Usage(
        prompt_tokens=7
    )
    with pytest.raises(errors.MalformedResponse):
        wire.parse_gemini({"embeddings": [{"values": [1.0]}]}, TWO, "google")
    with pytest.raises(errors.MalformedResponse):
        wire.parse_gemini({"embeddings": [{"values": [1.0]}, {}]}, TWO, "google")


def test_ollama_vectors_and_prompt_eval_count() -> None:
    answer = {"model": "nomic-embed-text", "embeddings": [[0.1], [0.2]], "prompt_eval_count": 4}
    result = wire.parse_ollama(answer, TWO, "ollama")
    assert result.vectors == [[0.1], [0.2]] and result.usage == Usage(prompt_tokens=4)
    with pytest.raises(errors.MalformedResponse):
        wire.parse_ollama({"embeddings": [[0.1]]}, TWO, "ollama")


def test_base64_and_floats_convert_as_openai_does() -> None:
    vector = [0.5, -0.25, 1.0]
    encoded = as_base64(vector)
    assert base64.b64decode(encoded) == struct.pack("<3f", *vector)
    assert as_floats(encoded) == vector and as_floats(vector) is vector and as_base64(encoded) == encoded
    assert checked_vector([1, float("nan")], base64_text=False) is None
    assert checked_vector([1, 2.5], base64_text=False) == [1, 2.5]
    assert checked_vector([1.0, float("inf")], base64_text=False) is None
    # the same in base64 (what the SDKs ask for by default) passed on as it came (a review)
    for bad in (float("nan"), float("inf"), float("-inf")):
        text = base64.b64encode(struct.pack("<3f", 1.0, bad, 0.5)).decode()
        assert checked_vector(text, base64_text=True) is None
    assert checked_vector(encoded, base64_text=True) == encoded
    # a number past float32's range became an infinity in the base64 the gateway makes (a re-test)
    assert checked_vector([1e39, 0.5], base64_text=False, float32=True) is None
    assert checked_vector([-1e39, 1e39], base64_text=False, float32=True) is None
    assert checked_vector([3e38, 3e38, -3e38], base64_text=False, float32=True) == [3e38, 3e38, -3e38]
    assert checked_vector([1e39, 0.5], base64_text=False) == [1e39, 0.5]  # as JSON numbers, as it came
    # float32's largest as it is printed (3.4028235e38) rounds to it: a finite float32
    assert checked_vector([3.4028235e38], base64_text=False, float32=True) == [3.4028235e38]
    assert checked_vector([2.0**128 - 2.0**103], base64_text=False, float32=True) is None  # rounds to inf
    assert checked_vector([0.5, "1"], base64_text=False) is None and checked_vector([[1.0]], base64_text=False) is None


def test_vectors_of_different_lengths_in_one_answer_are_malformed() -> None:
    from gateway.providers.embedding_wire import parse_openai

    request = EmbeddingRequest("m", texts=("a", "b"))
    for second in ([0.1, 0.2], [0.1, 0.2, 0.3]):
        answer = {"data": [{"index": 0, "embedding": [0.1, 0.2]}, {"index": 1, "embedding": second}]}
        if len(second) == 2:
            assert len(parse_openai(answer, request, "openai").vectors) == 2
        else:
            with pytest.raises(errors.MalformedResponse, match="different lengths"):
                parse_openai(answer, request, "openai")


@pytest.mark.parametrize(
    "late",
    [
        errors.ConnectionsBusy("google: every connection busy", provider="google"),
        errors.ClientGone("google: the client left"),
        errors.RateLimited("google: 429", provider="google", retry_after=1.0),
    ],
)
async def test_a_gemini_call_failing_after_a_first_batch_is_billed_and_not_retried(late: Exception) -> None:
    """After a first batch was embedded, a later one that was not even sent (a busy pool, the
    client gone) recorded no event at all, and a rate limit was retried from the first batch,
    which embedded it again (a diff review): the attempt is now billed, and not retried
    (``test_embedding_batches``: what each failure is)."""
    from gateway.embedding import EmbeddingResult
    from gateway.providers.base import Timeouts
    from gateway.providers.google import GoogleProvider
    from gateway.settings import ProviderSettings

    provider = GoogleProvider(ProviderSettings(api_key="k"), None, Timeouts())  # type: ignore[arg-type]
    calls: list[int] = []

    async def batch(request: EmbeddingRequest, timeout: object) -> EmbeddingResult:
        calls.append(request.count)
        if len(calls) == 2:
            raise late
        return EmbeddingResult([[0.5]] * request.count, None, request.model)

    provider._embed_batch = batch  # type: ignore[method-assign]
    with pytest.raises(errors.ProviderError) as cut:
        await provider.embed(EmbeddingRequest("gemini-embedding-001", texts=tuple("x" * 150)))
    assert calls == [100, 50] and cut.value.billed_unseen and not cut.value.retryable and not cut.value.fallback
    assert "inputs 100 to 149 of 150 failed, after the first 100 were embedded" in cut.value.message


def test_an_adapter_claims_embeddings_exactly_when_it_makes_them() -> None:
    """The router sends an embedding call to a provider naming ``embeddings`` in its options and
    calls its ``embed``: one without it would fail with an AttributeError, a 500."""
    import importlib
    import inspect

    from gateway.embedding import EMBEDDINGS
    from gateway.providers.registry import ADAPTER_MODULES

    seen = {}
    for module_name in ADAPTER_MODULES.values():
        module = importlib.import_module(module_name)
        for cls in vars(module).values():
            if inspect.isclass(cls) and isinstance(getattr(cls, "options", None), frozenset):
                seen[cls.__name__] = (EMBEDDINGS in cls.options, callable(getattr(cls, "embed", None)))
    assert seen and all(claims == makes for claims, makes in seen.values()), seen
    assert not seen["AnthropicProvider"][0] and all(seen[n][0] for n in ("OpenAIProvider", "GoogleProvider"))


async def test_a_cut_gemini_attempt_keeps_the_usage_of_the_batches_embedded() -> None:
    from gateway.embedding import EmbeddingResult
    from gateway.providers.base import Timeouts
    from gateway.providers.google import GoogleProvider
    from gateway.settings import ProviderSettings

    provider = GoogleProvider(ProviderSettings(api_key="k"), None, Timeouts())  # type: ignore[arg-type]

    async def batch(request: EmbeddingRequest, timeout: object) -> EmbeddingResult:
        if request.texts and request.texts[0] == "late":
            raise errors.UpstreamServerError("google: 500", provider="google", http_status=500)
        return EmbeddingResult([[0.5]] * request.count, Usage(prompt_tokens=request.count * 2), request.model)

    provider._embed_batch = batch  # type: ignore[method-assign]
    texts = ("x",) * 200 + ("late",)
    with pytest.raises(errors.UpstreamServerError) as cut:  # a 500 refused the last call: not billed
        await provider.embed(EmbeddingRequest("gemini-embedding-001", texts=texts))
    assert cut.value.usage == Usage(prompt_tokens=400) and not cut.value.billed_unseen


@pytest.mark.parametrize("base64_asked", [True, False])
def test_numbers_past_float32_are_malformed_when_the_gateway_makes_base64_of_them(base64_asked: bool) -> None:
    from gateway.providers.embedding_wire import parse_gemini, parse_ollama

    request = EmbeddingRequest("m", texts=("a",), base64=base64_asked)
    gemini = {"embeddings": [{"values": [1e39, 0.5]}]}
    ollama = {"model": "m", "embeddings": [[1e39, 0.5]]}
    for parse, answer in ((parse_gemini, gemini), (parse_ollama, ollama)):
        if base64_asked:
            with pytest.raises(errors.MalformedResponse):
                parse(answer, request, "p")
        else:
            assert parse(answer, request, "p").vectors[0][0] == 1e39  # type: ignore[index]
