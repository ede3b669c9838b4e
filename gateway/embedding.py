"""Embeddings (``POST /v1/embeddings``): what an adapter is asked, and what it hands back.

A vector is compared only with vectors of the same model, so an embedding call never falls back
to another model: only to another provider of the same one (OpenAI and Azure serve OpenAI's
models, an Azure deployment named by ``deployments``; a model group's other members are not
used, even the same model under another name). Vendors send
vectors as JSON numbers, or, asked for ``base64`` (what the OpenAI SDKs ask by default), as the
little-endian float32 bytes in base64: an adapter whose vendor sends them so passes them on as
they came; the gateway encodes the others (:func:`as_base64`), as OpenAI would.
"""

from __future__ import annotations

import base64
import binascii
import math
import sys
from array import array
from dataclasses import dataclass
from typing import Any, ClassVar

from gateway.types import Usage

#: the capability every embedding request needs (``Provider.options``): named by an adapter that
#: has ``embed`` (``providers.base.Embeddings``), not one of ``types.CAPABILITIES``, which
#: adapters take less what they lack (a new adapter would have claimed it without ``embed``)
EMBEDDINGS = "embeddings"
#: inputs given as token ids: only OpenAI's wire format carries them
EMBEDDING_TOKENS = "embedding_tokens"

#: a vector as it came: the numbers, or their float32 bytes in base64
Vector = list[float] | str


@dataclass(frozen=True, slots=True)
class EmbeddingRequest:
    """What an adapter sends upstream. ``model`` is already the provider's model name. Exactly one
    of ``texts`` and ``tokens`` is set, with one entry per input."""

    model: str
    texts: tuple[str, ...] | None = None
    tokens: tuple[tuple[int, ...], ...] | None = None
    dimensions: int | None = None
    user: str | None = None
    #: the client asked for base64 (an adapter whose vendor can send it asks for it too)
    base64: bool = False
    #: no length cap (the router asks every request for one)
    max_tokens: ClassVar[None] = None

    @property
    def count(self) -> int:
        """How many inputs (and so vectors)."""
        inputs = self.texts if self.texts is not None else self.tokens
        return len(inputs or ())

    def for_provider(self, model: str, stream: bool) -> EmbeddingRequest:
        """This request as one provider is asked it (``stream`` is always False: an embedding
        answer is one JSON object)."""
        return EmbeddingRequest(model, self.texts, self.tokens, self.dimensions, self.user, self.base64)

    def needs(self) -> list[str]:
        """The capabilities it needs from a provider."""
        return [EMBEDDINGS, EMBEDDING_TOKENS] if self.tokens is not None else [EMBEDDINGS]


@dataclass(frozen=True, slots=True)
class EmbeddingResult:
    """The vectors in the inputs' order, the usage (None: the vendor reports none) and the model
    that served them."""

    vectors: list[Vector]
    usage: Usage | None
    model: str


def as_base64(vector: Vector) -> str:
    """The vector as OpenAI's ``base64``: its float32 values, little-endian."""
    if isinstance(vector, str):
        return vector
    values = array("f", vector)
    if sys.byteorder != "little":  # pragma: no cover - every platform this runs on is little-endian
        values.byteswap()
    return base64.b64encode(values.tobytes()).decode("ascii")


def as_floats(vector: Vector) -> list[float]:
    """The vector as numbers (from the base64 an upstream sent, when it did)."""
    if not isinstance(vector, str):
        return vector
    values = array("f")
    values.frombytes(base64.b64decode(vector))
    if sys.byteorder != "little":  # pragma: no cover
        values.byteswap()
    return values.tolist()


#: the smallest magnitude float32 rounds to an infinity (halfway past its largest finite value)
FLOAT32_OVERFLOW = 2.0**128 - 2.0**103


def checked_vector(value: Any, *, base64_text: bool, float32: bool = False) -> Vector | None:
    """An upstream's vector when it is one (a non-empty list of finite numbers, each within
    float32's range when ``float32``: the client asked for base64, which the gateway makes of
    them; or, when base64 was asked, base64 text of whole float32 values), else None (a
    malformed answer)."""
    if isinstance(value, list):
        if not value:
            return None
        # one C loop (``sum``'s): it refuses anything but numbers, and is finite only when each
        # is. A loop in Python over each number held the event loop 1.7 s for 2,048 vectors of
        # 3,072 (a diff review), every other call on the process waiting. (A JSON ``true`` is not
        # refused: it passes as ``true``.)
        try:
            total = sum(value, 0.0)
        except TypeError:
            return None
        if not math.isfinite(total):
            return None
        # 1e39 became an infinity in the base64 the gateway made of Gemini's and Ollama's numbers
        # (a re-test); checked only then: 0.15 to 0.3 s more for 2,048 vectors of 3,072
        return value if not float32 or max(map(abs, value)) < FLOAT32_OVERFLOW else None
    if base64_text and isinstance(value, str) and value:
        try:
            raw = base64.b64decode(value, validate=True)
        except (binascii.Error, ValueError):
            return None
        if not raw or len(raw) % 4:
            return None
        # finite, as the numbers must be: a NaN or an infinity in base64 reached the SDK's default
        # encoding, where the same answer as numbers was refused (a review); one C loop again
        values = array("f")
        values.frombytes(raw)
        if sys.byteorder != "little":  # pragma: no cover
            values.byteswap()
        return value if math.isfinite(sum(values, 0.0)) else None
    return None
