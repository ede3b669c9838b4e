"""The embedding calls' wire formats: OpenAI's (and Azure's) ``/embeddings``, Gemini's
``:batchEmbedContents`` and Ollama's ``/api/embed`` (providers.md). Each reader checks the
answer holds one vector per input, and hands back the usage it reports (None when none)."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

from gateway import errors
from gateway.embedding import EmbeddingRequest, EmbeddingResult, Vector, checked_vector
from gateway.providers.http import malformed, usage_unknown, with_billed_usage
from gateway.types import UnreadableUsage, Usage, token_count


def _vectors(provider: str, raw: list[Any], count: int, *, base64_text: bool, float32: bool) -> list[Vector]:
    if len(raw) != count:
        raise malformed(provider, f"{len(raw)} embeddings for {count} inputs")
    vectors = []
    for i, value in enumerate(raw):
        vector = checked_vector(value, base64_text=base64_text, float32=float32)
        if vector is None:
            raise malformed(provider, f"embedding {i} is not a vector")
        vectors.append(vector)
    if len(set(map(len, vectors))) > 1:  # one model makes vectors of one size (ragged ones passed)
        raise malformed(provider, "embeddings of different lengths")
    return vectors


def _prompt_usage(provider: str, raw: Any, key: str) -> Usage | None:
    """The input tokens an answer reports under ``key`` (None when it reports none)."""
    if not isinstance(raw, dict) or key not in raw:
        return None
    try:
        return Usage(prompt_tokens=token_count(raw, key, required=True))
    except UnreadableUsage as e:
        usage_unknown(provider, e)
        return None


def read_answer(
    data: Any,
    request: EmbeddingRequest,
    provider: str,
    parse: Callable[[Any, EmbeddingRequest, str], EmbeddingResult],
    usage_of: Callable[[Any, str], Usage | None],
) -> EmbeddingResult:
    """``parse`` of a vendor's 200 answer; one it cannot read is malformed, billed at the usage
    it reports when that part can be read (``with_billed_usage``)."""
    try:
        return parse(data, request, provider)
    except errors.MalformedResponse as exc:
        raise with_billed_usage(exc, lambda: usage_of(data, provider)) from None


def _model(data: dict[str, Any], asked: str) -> str:
    model = data.get("model")
    return model if isinstance(model, str) and model else asked


# --- OpenAI and Azure ------------------------------------------------------------------------------
def openai_body(request: EmbeddingRequest, model: str) -> dict[str, Any]:
    body: dict[str, Any] = {
        "model": model,
        "input": list(request.texts) if request.texts is not None else [list(t) for t in request.tokens or ()],
        "encoding_format": "base64" if request.base64 else "float",
    }
    if request.dimensions is not None:
        body["dimensions"] = request.dimensions
    if request.user is not None:
        body["user"] = request.user
    return body


def openai_usage(data: Any, provider: str) -> Usage | None:
    return _prompt_usage(provider, data.get("usage") if isinstance(data, dict) else None, "prompt_tokens")


def parse_openai(data: Any, request: EmbeddingRequest, provider: str) -> EmbeddingResult:
    """A ``list`` of ``embedding`` objects, each at its ``index``."""
    if not isinstance(data, dict) or not isinstance(data.get("data"), list):
        raise malformed(provider, "no data list")
    by_index: dict[int, Any] = {}
    for item in data["data"]:
        index = item.get("index") if isinstance(item, dict) else None
        if isinstance(index, bool) or not isinstance(index, int) or index in by_index:
            raise malformed(provider, "an embedding without its own index")
        by_index[index] = item.get("embedding")
    if sorted(by_index) != list(range(len(by_index))):
        raise malformed(provider, "the embeddings' indexes are not 0 to n-1")
    raw = [by_index[i] for i in range(len(by_index))]
    return EmbeddingResult(
        _vectors(provider, raw, request.count, base64_text=request.base64, float32=request.base64),
        openai_usage(data, provider),
        _model(data, request.model),
    )


# --- Gemini ----------------------------------------------------------------------------------------
def gemini_body(request: EmbeddingRequest) -> dict[str, Any]:
    name = "models/" + request.model.removeprefix("models/")
    one: dict[str, Any] = {"model": name}
    if request.dimensions is not None:
        one["outputDimensionality"] = request.dimensions
    return {"requests": [{**one, "content": {"parts": [{"text": text}]}} for text in request.texts or ()]}


def gemini_usage(data: Any, provider: str) -> Usage | None:
    """Gemini's answer to an embedding call reports no usage, unless a newer one does."""
    return _prompt_usage(provider, data.get("usageMetadata") if isinstance(data, dict) else None, "promptTokenCount")


def parse_gemini(data: Any, request: EmbeddingRequest, provider: str) -> EmbeddingResult:
    """``{"embeddings": [{"values": [...]}, ...]}`` in the requests' order."""
    if not isinstance(data, dict) or not isinstance(data.get("embeddings"), list):
        raise malformed(provider, "no embeddings list")
    raw = [item.get("values") if isinstance(item, dict) else None for item in data["embeddings"]]
    vectors = _vectors(provider, raw, request.count, base64_text=False, float32=request.base64)
    if request.dimensions is not None:
        vectors = [unit_length(v) for v in vectors]
    return EmbeddingResult(vectors, gemini_usage(data, provider), request.model)


def unit_length(vector: Vector) -> Vector:
    """``vector`` scaled to length 1. Gemini normalizes its full-size embeddings only: one cut
    to ``outputDimensionality`` is the first part of a unit vector, shorter than 1, and the
    caller is to normalize it (Google's embeddings guide). OpenAI's, cut
    or not, have length 1, and its clients rank by dot product, which such vectors skew. A zero
    vector stays as it is. Under 0.1 ms a vector of 768 (``hypot`` in C, then a multiplication
    each: a comprehension beats ``map`` here); Gemini takes 100 inputs a call."""
    if isinstance(vector, str):
        return vector
    length = math.hypot(*vector)
    if length == 0 or length == 1:
        return vector
    scale = 1 / length
    return [x * scale for x in vector]


# --- Ollama ----------------------------------------------------------------------------------------
def ollama_body(request: EmbeddingRequest) -> dict[str, Any]:
    # Ollama cuts an input longer than the model's context by default, and embeds what is left:
    # OpenAI refuses such an input, and a vector of part of a text is not the text's
    body: dict[str, Any] = {"model": request.model, "input": list(request.texts or ()), "truncate": False}
    if request.dimensions is not None:
        body["dimensions"] = request.dimensions
    return body


def ollama_usage(data: Any, provider: str) -> Usage | None:
    return _prompt_usage(provider, data, "prompt_eval_count")


def parse_ollama(data: Any, request: EmbeddingRequest, provider: str) -> EmbeddingResult:
    """``{"model", "embeddings": [[...], ...], "prompt_eval_count"}``."""
    if not isinstance(data, dict) or not isinstance(data.get("embeddings"), list):
        raise malformed(provider, "no embeddings list")
    return EmbeddingResult(
        _vectors(provider, data["embeddings"], request.count, base64_text=False, float32=request.base64),
        ollama_usage(data, provider),
        _model(data, request.model),
    )
