"""Model groups: a requested model -> each provider's equivalent, in priority order.

Vendors are data here: which model names a provider serves natively is a pattern table, and
the equivalents between vendors are groups (built-in defaults for the seed's models; the config
file adds groups, and replaces a built-in group of the same name whole).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from gateway.errors import InvalidRequest, ModelNotFound
from gateway.pricing.models import ALIASES

log = logging.getLogger(__name__)

KNOWN_PROVIDERS = ("openai", "azure", "anthropic", "google", "ollama")

_OPUS = "claude-3-opus-20240229"
_SONNET = "claude-3-sonnet-20240229"
_HAIKU = "claude-3-haiku-20240307"
_LOCAL = "llama3"

#: requested model -> {provider: provider model}
DEFAULT_GROUPS: dict[str, dict[str, str]] = {
    "gpt-4": {"openai": "gpt-4", "azure": "gpt-4", "anthropic": _OPUS, "google": "gemini-pro", "ollama": _LOCAL},
    "gpt-4-turbo": {
        "openai": "gpt-4-turbo",
        "azure": "gpt-4-turbo",
        "anthropic": _SONNET,
        "google": "gemini-pro",
        "ollama": _LOCAL,
    },
    "gpt-4o": {"openai": "gpt-4o", "azure": "gpt-4o", "anthropic": _SONNET, "google": "gemini-pro", "ollama": _LOCAL},
    "gpt-3.5-turbo": {
        "openai": "gpt-3.5-turbo",
        "azure": "gpt-35-turbo",
        "anthropic": _HAIKU,
        "google": "gemini-pro",
        "ollama": _LOCAL,
    },
    "gpt-3.5-turbo-instruct": {"openai": "gpt-3.5-turbo-instruct", "azure": "gpt-35-turbo-instruct"},
    "claude-3-opus": {
        "anthropic": _OPUS,
        "openai": "gpt-4",
        "azure": "gpt-4",
        "google": "gemini-pro",
        "ollama": _LOCAL,
    },
    "claude-3-sonnet": {
        "anthropic": _SONNET,
        "openai": "gpt-4o",
        "azure": "gpt-4o",
        "google": "gemini-pro",
        "ollama": _LOCAL,
    },
    "claude-3-haiku": {
        "anthropic": _HAIKU,
        "openai": "gpt-3.5-turbo",
        "azure": "gpt-35-turbo",
        "google": "gemini-pro",
        "ollama": _LOCAL,
    },
    "gemini-pro": {
        "google": "gemini-pro",
        "openai": "gpt-3.5-turbo",
        "azure": "gpt-35-turbo",
        "anthropic": _HAIKU,
        "ollama": _LOCAL,
    },
}

#: model names each provider serves as they are (pass-through), when no group names them
NATIVE_PATTERNS: dict[str, re.Pattern[str]] = {
    # ``ft:``: an OpenAI fine-tune (``ft:gpt-4o-mini-2024-07-18:org::id``), which only OpenAI serves
    # (a 404 before: a docs review)
    # (``text-embedding-004``/``-005`` and ``text-multilingual-embedding-*`` are Google's;
    # ``gpt-35-*`` is Azure's spelling, which OpenAI answers with a 404: a review saw
    # ``gpt-35-turbo-instruct`` sent to OpenAI as such)
    "openai": re.compile(r"^(ft:|gpt-(?!35-)|o\d|chatgpt-|davinci-|babbage-|text-(?!embedding-00[4-9]|multilingual-))"),
    # Azure serves OpenAI's embedding models too (``text-embedding-3-small``, ``-ada-002``)
    "azure": re.compile(r"^(gpt-|o\d|davinci-|babbage-|text-embedding-(?!00[4-9]))"),
    "anthropic": re.compile(r"^claude-"),
    "google": re.compile(r"^(models/)?(gemini-|text-embedding-00[4-9]|text-multilingual-embedding-|embedding-00)"),
    "ollama": re.compile(
        # name:tag, either in any case (``command-r:35b-v0.1-q4_K_M``, ``hf.co/org/Model-GGUF:Q4_K_M``),
        # and the embedding models of Ollama's library
        r"^[A-Za-z0-9._/-]+:[A-Za-z0-9._-]+$|^(llama|mistral|mixtral|qwen|phi|gemma|deepseek|codellama|llava|tinyllama"
        r"|nomic-embed|mxbai-embed|all-minilm|snowflake-arctic-embed|bge-|granite-embedding|embeddinggemma)"
    ),
}

#: OpenAI legacy completion-only models: served through the upstream /completions endpoint
#: legacy completion models listed by ``/v1/models`` (served by the vendors' native patterns)
_LISTED_LEGACY = ("davinci-002", "babbage-002")
#: embedding models listed by ``/v1/models`` (``POST /v1/embeddings``; the vendors serve others)
_LISTED_EMBEDDINGS = (
    "text-embedding-3-small", "text-embedding-3-large", "text-embedding-ada-002", "gemini-embedding-001",
    "nomic-embed-text",
)  # fmt: skip
LEGACY_COMPLETION_MODELS = re.compile(r"^(ft:)?(gpt-3\.5-turbo-instruct|gpt-35-turbo-instruct|davinci-002|babbage-002)")

_SNAPSHOT = re.compile(r"(-\d{4}-\d{2}-\d{2}|-\d{8}|-\d{4}|-latest|-preview|-\d{3})$")


@dataclass(frozen=True, slots=True)
class Candidate:
    provider: str
    #: the model the provider's adapter is asked for
    model: str
    #: the name the adapter asks its vendor for ``model`` by, when it maps it (an Azure deployment:
    #: ``Deployments``); "" when that is ``model`` itself
    deployment: str = ""

    @property
    def called(self) -> str:
        """The model as its vendor is asked for it: what the attempt's event, price, health track
        and cost line name (as when a model group names the deployment)."""
        return self.deployment or self.model


def family_of(model: str) -> str:
    """``claude-3-haiku-20240307`` -> ``claude-3-haiku``; names without a suffix unchanged. The
    renames no suffix rule finds are the price tables' (``gpt-4-1106-preview`` is a GPT-4 Turbo,
    whose group it falls back in: it fell back as gpt-4, to a model 5x the price; a review)."""
    previous = None
    while previous != model:
        if model in ALIASES:
            return ALIASES[model] or model
        previous = model
        model = _SNAPSHOT.sub("", model)
    return model


class ModelCatalog:
    def __init__(self, overrides: Mapping[str, Mapping[str, str]] | None = None) -> None:
        self.groups: dict[str, dict[str, str]] = {k: dict(v) for k, v in DEFAULT_GROUPS.items()}
        for name, mapping in (overrides or {}).items():
            unknown = set(mapping) - set(KNOWN_PROVIDERS)
            if unknown:
                raise ValueError(f"model group {name!r} names unknown providers {sorted(unknown)}")
            self.groups[name] = dict(mapping)
            left_out = [
                p for p, pattern in NATIVE_PATTERNS.items() if pattern.search(family_of(name)) and p not in mapping
            ]
            if left_out:  # what a config written for an older version meant as "and also" (a diff review)
                log.warning(
                    "model group %r of the config file leaves out %s, whose own model it names: its calls do not "
                    "go there (a group is the whole list of its providers)",
                    name,
                    ", ".join(left_out),
                )

    def equivalents(self, model: str) -> dict[str, str]:
        """provider -> provider model for a requested model ({} when nobody serves it). A group
        is the whole list: a vendor it leaves out is not asked, even for its own model (a config
        file's ``claude-3-haiku: {openai: ..., google: ...}`` still sent calls to Anthropic, which
        an operator may have left out for cost or data residency; a review). Only a model no
        group holds goes to the vendors whose own name it is."""
        if model != model.strip():  # "gpt-4 " went upstream as such (" gpt-4" was a 404)
            return {}
        group = self.groups.get(model)
        if group is not None:
            return dict(group)
        family = family_of(model)
        group = dict(self.groups.get(family, {}))
        if group:
            # the provider that owns a dated snapshot is asked for exactly that snapshot
            for provider, pattern in NATIVE_PATTERNS.items():
                if provider in group and pattern.search(model) and family_of(group[provider]) == family:
                    group[provider] = model
            return group
        return {provider: model for provider, pattern in NATIVE_PATTERNS.items() if pattern.search(model)}

    def candidates(
        self,
        model: str,
        *,
        priority: Iterable[str],
        configured: Iterable[str],
        pinned: str | None = None,
        native_first: bool = True,
    ) -> list[Candidate]:
        """Providers to try, in order. ``pinned`` goes first; else, with ``native_first``, the
        providers whose own model was asked for (``claude-3-haiku`` -> Anthropic); the rest follow
        in priority order as fallback."""
        # a provider the priority does not name is not used, pinned or not (a pin named Ollama,
        # which needs no key and so always counts as configured, and the call went to whatever
        # OLLAMA_HOST is, against an operator's priority of [openai])
        priority = list(priority)
        configured_set = set(configured) & set(priority)
        if pinned is not None:
            if pinned not in KNOWN_PROVIDERS:
                raise InvalidRequest(
                    f"unknown provider {pinned!r}; expected one of {', '.join(KNOWN_PROVIDERS)}", param="provider"
                )
            if pinned not in configured_set:
                raise InvalidRequest(
                    f"provider {pinned!r} is not configured on this gateway (or not in its priority)", param="provider"
                )
        equivalents = self.equivalents(model)
        if not equivalents:
            raise ModelNotFound(f"The model {model!r} does not exist or no provider serves it", param="model")
        order = [p for p in priority if p in configured_set and p in equivalents]
        if native_first and pinned is None:
            native = [p for p in order if NATIVE_PATTERNS[p].search(family_of(model))]
            order = native + [p for p in order if p not in native]
        if pinned is not None:
            if pinned not in equivalents:
                raise ModelNotFound(f"provider {pinned!r} has no model for {model!r}", param="model")
            order = [pinned, *[p for p in order if p != pinned]]
        if not order:
            configured_names = ", ".join(sorted(configured_set)) or "none"
            raise ModelNotFound(
                f"no configured provider serves the model {model!r} (configured: {configured_names})",
                param="model",
            )
        return [Candidate(p, equivalents[p]) for p in order]

    def listed_models(self) -> list[str]:
        """The groups, and the legacy completion and embedding models no group holds
        (``/v1/models``; each listed when a configured provider serves it)."""
        return sorted({*self.groups, *_LISTED_LEGACY, *_LISTED_EMBEDDINGS})

    @staticmethod
    def is_legacy_completion_model(model: str) -> bool:
        return LEGACY_COMPLETION_MODELS.match(model) is not None
