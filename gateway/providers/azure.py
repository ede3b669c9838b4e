"""Azure OpenAI adapter: the OpenAI wire format at Azure's URLs (providers.md section 2).

Classic: ``{endpoint}/openai/deployments/{deployment}/(chat/)completions?api-version=...``;
with ``use_v1``: ``{endpoint}/openai/v1/(chat/)completions`` and the deployment as ``model``.
The deployment is ``settings.deployments.get(model, model)``. Auth is the ``api-key`` header.
Chat sends ``max_tokens`` (what every api-version accepts for the GPT models), and
``max_completion_tokens`` for the reasoning models (o1, o3, o4, gpt-5), which refuse
``max_tokens`` ("Unsupported parameter: 'max_tokens' is not supported with this model"). The
model is the gateway's name for it: a name that ``deployments`` maps, or, for a deployment
named directly (a model group's ``azure: prod-o3-mini``), the model that ``deployments`` maps to
it, else the deployment's name, where a reasoning model's name counts at its start or after a
``-``, ``_``, ``.`` or ``/``. Streams ask for their usage (``stream_options``) on api-versions
from 2024-09-01 on: older ones refuse the field with a 400. Everything else (parsing, stream
handling, content_filter and ``code: "429"`` errors) is shared with the OpenAI adapter.
"""

from __future__ import annotations

import re
from typing import ClassVar
from urllib.parse import quote

from gateway.embedding import EmbeddingRequest
from gateway.pricing.models import normalize_model
from gateway.providers import embedding_wire
from gateway.providers import openai_wire as wire
from gateway.providers.base import Provider, Timeouts
from gateway.providers.openai import OpenAIProvider, Target
from gateway.providers.upstream_http import UpstreamClient
from gateway.settings import ProviderSettings
from gateway.types import ChatRequest

DEFAULT_API_VERSION = "2024-10-21"
#: the models that take ``max_completion_tokens`` only (o1, o3, o4, gpt-5), named at the start
#: of a name or after a separator, in any case (``Prod-O3-Mini``, ``team_gpt5``); an o-series name
#: is ``o`` and one digit, then its end, a separator, ``mini`` or ``pro`` (``o365-bot`` is none)
REASONING = re.compile(r"(?:^|[-_./])(?:o\d(?:$|[-_./]|mini|pro)|gpt-?5)", re.IGNORECASE)
#: the first api-version that takes ``stream_options`` (2024-09-01-preview; GA 2024-10-21)
STREAM_OPTIONS_SINCE = "2024-09-01"


def resource_root(endpoint: str) -> str:
    """The resource endpoint without a trailing ``/``, ``/openai`` or ``/openai/v1``."""
    root = endpoint.rstrip("/")
    for suffix in ("/openai/v1", "/openai"):
        if root.endswith(suffix):
            return root[: -len(suffix)]
    return root


class AzureProvider(OpenAIProvider):
    name = "azure"
    chat_max_tokens_field: ClassVar[str] = "max_tokens"

    def __init__(self, settings: ProviderSettings, session: UpstreamClient, timeouts: Timeouts) -> None:
        if not settings.base_url:
            raise ValueError("azure: the resource endpoint (AZURE_OPENAI_ENDPOINT) is required")
        super().__init__(settings, session, timeouts)
        self._base = resource_root(settings.base_url)
        self._api_version = settings.api_version or DEFAULT_API_VERSION
        version = self._api_version
        #: whether streams may ask for their usage: a dated api-version before 2024-09-01 refuses it
        self._stream_usage = bool(settings.use_v1) or not (version[:4].isdigit() and version < STREAM_OPTIONS_SINCE)
        #: deployment -> the model ``deployments`` maps to it
        self._models = {deployment: model for model, deployment in settings.deployments.items()}
        #: ``deployments`` by the model's spelling: a model group sends Azure's own name
        #: (``gpt-35-turbo``) where an operator keys the map by OpenAI's (``gpt-3.5-turbo``), and
        #: the call went to a deployment of Azure's name, a 404 that fell back (a review)
        self._by_spelling = {normalize_model(model): deployment for model, deployment in settings.deployments.items()}

    def deployment(self, model: str) -> str:  # Deployments
        deployments = self._settings.deployments
        if model in deployments:
            return deployments[model]
        return self._by_spelling.get(normalize_model(model), model)

    def target(self, request: ChatRequest, *, stream: bool) -> Target:
        deployment = self.deployment(request.model)
        body = wire.build_body(
            request,
            model=deployment,
            stream=stream,
            chat_max_tokens_field="max_completion_tokens"
            if self.reasoning(request.model)
            else self.chat_max_tokens_field,
            parallel_tool_calls=self.takes_parallel_tool_calls(request),
        )
        if stream and not self._stream_usage:
            del body["stream_options"]  # the stream has no usage then: billed at an unknown cost
        path = wire.endpoint(request)
        if self._settings.use_v1:
            return Target(f"{self._base}/openai/v1/{path}", None, body)
        url = f"{self._base}/openai/deployments/{quote(deployment, safe='')}/{path}"
        return Target(url, {"api-version": self._api_version}, body)

    def embed_target(self, request: EmbeddingRequest) -> Target:
        deployment = self.deployment(request.model)
        body = embedding_wire.openai_body(request, deployment)
        if self._settings.use_v1:
            return Target(f"{self._base}/openai/v1/embeddings", None, body)
        url = f"{self._base}/openai/deployments/{quote(deployment, safe='')}/embeddings"
        return Target(url, {"api-version": self._api_version}, body)

    def reasoning(self, model: str) -> bool:
        """Whether the model (or deployment) named ``model`` is a reasoning model."""
        return REASONING.search(self.model_name(model)) is not None

    def model_name(self, model: str) -> str:
        """The gateway's model name, or the one ``deployments`` maps to this deployment, else its
        own name."""
        mapped = model in self._settings.deployments or normalize_model(model) in self._by_spelling
        return model if mapped else self._models.get(model, model)

    def auth_headers(self) -> dict[str, str]:
        return {"api-key": self._settings.api_key or ""}


def build(settings: ProviderSettings, session: UpstreamClient, timeouts: Timeouts) -> Provider | None:
    """The Azure OpenAI provider, or None without an API key and endpoint (or when disabled)."""
    if not settings.api_key or not settings.base_url or settings.enabled is False:
        return None
    return AzureProvider(settings, session, timeouts)
