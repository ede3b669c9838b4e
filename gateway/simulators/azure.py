"""Azure OpenAI simulator: the OpenAI simulator at Azure's paths, with Azure's extras.

Paths: ``/openai/deployments/{deployment}/chat/completions`` and ``.../completions`` (both
require ``?api-version=``: 404 "Resource not found" without it) and the v1 API
``/openai/v1/chat/completions`` / ``/openai/v1/completions`` (deployment in the body's
``model``). Auth: the ``api-key`` header (the v1 API also takes the key as a Bearer token).
With ``deployments`` set, other deployment names get 404 ``DeploymentNotFound``; a mapping
names each deployment's underlying model. Answers report that model version (default
``served_model``), never the deployment name, and carry ``prompt_filter_results`` /
``content_filter_results``; streams open with the ``choices: []`` prompt-filter chunk. Errors
use Azure's bodies (``code: "429"`` with ``retry-after`` and ``retry-after-ms``, ``code: "401"``,
``DeploymentNotFound``, the 400 ``content_filter`` prompt block). ``Fault("content_filter",
status=200)`` filters the output instead: HTTP 200 with ``finish_reason: "content_filter"``.
``stream_usage_supported=False`` ignores ``stream_options`` (as GA api-versions may).
"""

from __future__ import annotations

import math
import re
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

from aiohttp import web

from gateway.simulators.base import Fault
from gateway.simulators.openai import OPENAI_ERRORS, Call, ErrorSpec, OpenAISimulator

_CATEGORIES = ("hate", "self_harm", "sexual", "violence")


def _filter_results(flagged: str | None = None) -> dict[str, Any]:
    return {c: {"filtered": c == flagged, "severity": "high" if c == flagged else "safe"} for c in _CATEGORIES}


AZURE_ERRORS: dict[str, ErrorSpec] = {
    **OPENAI_ERRORS,
    "rate_limit": ErrorSpec(
        429,
        "Requests to the ChatCompletions_Create Operation under Azure OpenAI API version "
        "{api_version} have exceeded token rate limit of your current OpenAI S0 pricing tier."
        "{wait} Please go here: https://aka.ms/oai/quotaincrease if you would like to further "
        "increase the default rate limit.",
        "429",
    ),
    "quota": ErrorSpec(
        429,
        "The quota of this Azure OpenAI resource is exhausted for the current billing period.",
        "insufficient_quota",
    ),
    "auth": ErrorSpec(
        401,
        "Access denied due to invalid subscription key or wrong API endpoint. Make sure to "
        "provide a valid key for an active subscription and use a correct regional API endpoint "
        "for your resource.",
        "401",
    ),
    "not_found": ErrorSpec(
        404,
        "The API deployment for this resource does not exist. If you created the deployment within "
        "the last 5 minutes, please wait a moment and try again.",
        "DeploymentNotFound",
    ),
    "content_filter": ErrorSpec(
        400,
        "The response was filtered due to the prompt triggering Azure OpenAI's content "
        "management policy. Please modify your prompt and retry. To learn more about our content "
        "filtering policies please read our documentation: "
        "https://go.microsoft.com/fwlink/?linkid=2198766",
        "content_filter",
        param="prompt",
        extra={
            "status": 400,
            "innererror": {
                "code": "ResponsibleAIPolicyViolation",
                "content_filter_result": _filter_results("violence"),
            },
        },
    ),
}
_NO_API_VERSION = ErrorSpec(404, "Resource not found", "404")
#: api-versions before 2024-09-01(-preview) do not know ``stream_options``
_NO_STREAM_OPTIONS = ErrorSpec(
    400, "Unrecognized request argument supplied: stream_options", None, "invalid_request_error", None
)
#: the reasoning models (o1, o3, o4, gpt-5) refuse ``max_tokens``
_MAX_TOKENS_REFUSED = ErrorSpec(
    400,
    "Unsupported parameter: 'max_tokens' is not supported with this model. Use 'max_completion_tokens' instead.",
    "unsupported_parameter",
    "invalid_request_error",
    "max_tokens",
)
_REASONING = re.compile(r"o\d(?:$|[-_.]|mini|pro)|gpt-?5", re.IGNORECASE)


@dataclass
class AzureSimulator(OpenAISimulator):
    ERRORS: ClassVar[Mapping[str, ErrorSpec]] = AZURE_ERRORS
    PADDING: ClassVar[bool] = False

    name: str = "azure"
    #: what Azure reports as ``model``: the deployment's underlying model version
    served_model: str | None = "gpt-4o-2024-11-20"
    #: known deployments (None: any name); a mapping gives each one's model version
    deployments: Collection[str] | Mapping[str, str] | None = None
    #: honour ``stream_options.include_usage`` (False: like an api-version that ignores it)
    stream_usage_supported: bool = True

    def routes(self) -> list[web.RouteDef]:
        return [
            web.post("/openai/deployments/{deployment}/chat/completions", self._chat),
            web.post("/openai/deployments/{deployment}/completions", self._text),
            web.post("/openai/v1/chat/completions", self._chat),
            web.post("/openai/v1/completions", self._text),
            web.post("/openai/deployments/{deployment}/embeddings", self._embed),
            web.post("/openai/v1/embeddings", self._embed),
        ]

    # --- hooks ----------------------------------------------------------------------------------
    def authorized(self, request: web.Request) -> bool:
        if self.api_key is None or request.headers.get("api-key") == self.api_key:
            return True
        v1 = "deployment" not in request.match_info
        return v1 and request.headers.get("authorization") == f"Bearer {self.api_key}"

    def requested_model(self, request: web.Request, body: dict[str, Any]) -> str | None:
        return request.match_info.get("deployment") or super().requested_model(request, body)

    def route_problem(self, request: web.Request, call: Call) -> web.Response | None:
        if "deployment" in request.match_info and not call.api_version:
            return self.error_response(_NO_API_VERSION, model=call.model)
        if self.deployments is not None and call.model not in self.deployments:
            return self.error_response(self.ERRORS["not_found"], model=call.model, api_version=call.api_version)
        version = call.api_version or ""
        if "stream_options" in call.body and version[:4].isdigit() and version < "2024-09-01":
            return self.error_response(_NO_STREAM_OPTIONS, model=call.model)
        if "max_tokens" in call.body and call.kind == "chat" and _REASONING.match(self.served(call)):
            return self.error_response(_MAX_TOKENS_REFUSED, model=call.model)
        return None

    def served(self, call: Call) -> str:
        version = self.deployments.get(call.model) if isinstance(self.deployments, Mapping) else None
        return str(version or self.served_model or call.model)

    def embedding_model(self, call: Call) -> str:
        """The deployment's model (its chat ``served_model`` is a chat model's)."""
        version = self.deployments.get(call.model) if isinstance(self.deployments, Mapping) else None
        return str(version or call.model)

    def reply_headers(self) -> dict[str, str]:
        rid = f"00000000-0000-4000-8000-{next(self._ids):012d}"
        return {"apim-request-id": rid, "x-request-id": rid, "x-ms-region": "Sweden Central"}

    def error_headers(self, fault: Fault | None, spec: ErrorSpec) -> dict[str, str]:
        headers = super().error_headers(fault, spec)
        if "retry-after" in headers and "retry-after-ms" not in headers:
            headers["retry-after-ms"] = str(int(float(headers["retry-after"]) * 1000))
        elif "retry-after-ms" in headers and "retry-after" not in headers:
            headers["retry-after"] = str(math.ceil(int(headers["retry-after-ms"]) / 1000))
        return headers

    def wait_sentence(self, fault: Fault | None) -> str:
        if fault is None or (fault.retry_after is None and fault.retry_after_ms is None):
            return ""
        seconds = fault.retry_after if fault.retry_after is not None else (fault.retry_after_ms or 0) / 1000
        return f" Please retry after {math.ceil(seconds)} seconds."

    def error_object(self, spec: ErrorSpec, message: str) -> dict[str, Any]:
        obj: dict[str, Any] = {"code": spec.code, "message": message}
        if spec.type is not None:
            obj["type"] = spec.type
        if spec.param is not None:
            obj["param"] = spec.param
        return obj | dict(spec.extra or {})

    def decorate_choice(self, choice: dict[str, Any], finish: str | None) -> dict[str, Any]:
        flagged = "violence" if finish == "content_filter" else None
        return choice | {"content_filter_results": _filter_results(flagged)}

    def decorate_response(self, obj: dict[str, Any]) -> dict[str, Any]:
        return {"prompt_filter_results": self._prompt_filter()} | obj

    def stream_preamble(self, call: Call) -> list[dict[str, Any]]:
        return [
            {
                "choices": [],
                "created": 0,
                "id": "",
                "model": "",
                "object": "",
                "prompt_filter_results": self._prompt_filter(),
            }
        ]

    def stream_usage(self, call: Call) -> bool:
        return self.stream_usage_supported and call.include_usage

    @staticmethod
    def _prompt_filter() -> list[dict[str, Any]]:
        return [
            {
                "prompt_index": 0,
                "content_filter_results": _filter_results() | {"jailbreak": {"filtered": False, "detected": False}},
            }
        ]
