"""The OpenAPI 3.1 document of the gateway's HTTP API (served at /openapi.json)."""

from __future__ import annotations

from functools import cache
from typing import Any

from gateway.api.metadata import MAX_REQUEST_PAIRS
from gateway.api.validation import MAX_TENANT_LEN
from gateway.events import MAX_METADATA_KEY, MAX_METADATA_VALUE

_ERROR = {
    "type": "object",
    "required": ["error"],
    "properties": {
        "error": {
            "type": "object",
            "required": ["message", "type", "param", "code"],
            "properties": {
                "message": {"type": "string"},
                "type": {"type": "string"},
                "param": {"type": ["string", "null"]},
                "code": {"type": ["string", "null"]},
            },
        }
    },
}

_USAGE = {
    "type": "object",
    "required": ["prompt_tokens", "completion_tokens", "total_tokens"],
    "properties": {
        "prompt_tokens": {"type": "integer"},
        "completion_tokens": {"type": "integer"},
        "total_tokens": {"type": "integer"},
        "prompt_tokens_details": {"type": "object", "properties": {"cached_tokens": {"type": "integer"}}},
        "completion_tokens_details": {"type": "object", "properties": {"reasoning_tokens": {"type": "integer"}}},
    },
}

#: a call's metadata (gateway/api/metadata.py)
_METADATA: dict[str, Any] = {
    "type": ["object", "null"],
    "maxProperties": MAX_REQUEST_PAIRS,
    "propertyNames": {"minLength": 1, "maxLength": MAX_METADATA_KEY},
    "additionalProperties": {"type": "string", "maxLength": MAX_METADATA_VALUE},
    "description": "Cost attribution (team, feature, ...): recorded on the call's usage events with its API key's "
    "pairs, which it may not change (403 metadata_not_allowed); sent to no provider. GET /v1/costs filters "
    "(metadata.<key>=<value>) and splits (groupBy=metadata.<key>) by it.",
}

_COMMON_PROPS: dict[str, Any] = {
    "model": {"type": "string", "minLength": 1, "example": "gpt-4"},
    "temperature": {"type": ["number", "null"], "minimum": 0, "maximum": 2},
    "top_p": {"type": ["number", "null"], "minimum": 0, "maximum": 1},
    "n": {"type": ["integer", "null"], "const": 1},
    "stop": {
        "oneOf": [{"type": "string"}, {"type": "array", "items": {"type": "string"}, "maxItems": 4}, {"type": "null"}]
    },
    "user": {"type": "string"},
    "seed": {
        "type": ["integer", "null"],
        "description": "Sent only to providers that carry it (not Anthropic); 400 when none serving the model can.",
    },
    "presence_penalty": {"type": ["number", "null"], "minimum": -2, "maximum": 2, "description": "As seed."},
    "frequency_penalty": {"type": ["number", "null"], "minimum": -2, "maximum": 2, "description": "As seed."},
    "stream": {"type": ["boolean", "null"]},
    "stream_options": {
        "type": ["object", "null"],
        "properties": {"include_usage": {"type": "boolean"}},
    },
    "provider": {
        "type": "string",
        "enum": ["openai", "azure", "anthropic", "google", "ollama"],
        "description": "Pin the first provider to try; the others remain as fallback.",
    },
    "tenantId": {
        "type": "string",
        "minLength": 1,
        "maxLength": MAX_TENANT_LEN,
        "description": "Tenant billed for the call (honoured for admin keys or an open gateway).",
    },
    "metadata": _METADATA,
}

#: what the request schemas say about fields they do not list
_OTHER_FIELDS = (
    "A field not listed here is refused (400 unknown_parameter), as OpenAI refuses it; the OpenAI fields the "
    "gateway cannot honour (logprobs, logit_bias, audio, web_search_options, ...) are refused with 400 "
    "unsupported_parameter unless their value asks for nothing (null, false, the default)."
)

_CHAT_REQUEST = {
    "type": "object",
    "description": _OTHER_FIELDS,
    "required": ["model", "messages"],
    "properties": {
        **_COMMON_PROPS,
        "messages": {
            "type": "array",
            "minItems": 1,
            "items": {
                "type": "object",
                "required": ["role"],
                "properties": {
                    "role": {"type": "string", "enum": ["system", "developer", "user", "assistant", "tool"]},
                    "tool_calls": {"type": "array", "description": "An assistant message's calls."},
                    "tool_call_id": {"type": "string", "description": "A tool message: the call it answers."},
                    "content": {
                        "oneOf": [
                            {"type": "string"},
                            {
                                "type": "array",
                                "items": {
                                    "oneOf": [
                                        {
                                            "type": "object",
                                            "required": ["type", "text"],
                                            "properties": {"type": {"const": "text"}, "text": {"type": "string"}},
                                        },
                                        {
                                            "type": "object",
                                            "required": ["type", "image_url"],
                                            "description": "User messages only: a data: URL or an http(s) URL.",
                                            "properties": {
                                                "type": {"const": "image_url"},
                                                "image_url": {
                                                    "type": "object",
                                                    "required": ["url"],
                                                    "properties": {
                                                        "url": {"type": "string"},
                                                        "detail": {"enum": ["auto", "low", "high"]},
                                                    },
                                                },
                                            },
                                        },
                                    ]
                                },
                            },
                        ]
                    },
                },
            },
        },
        "max_tokens": {"type": ["integer", "null"], "minimum": 1},
        "max_completion_tokens": {"type": ["integer", "null"], "minimum": 1},
        "tools": {
            "type": ["array", "null"],
            "maxItems": 128,
            "items": {
                "type": "object",
                "required": ["type", "function"],
                "properties": {
                    "type": {"const": "function"},
                    "function": {
                        "type": "object",
                        "required": ["name"],
                        "properties": {
                            "name": {"type": "string", "pattern": "^[A-Za-z0-9_-]{1,64}$"},
                            "description": {"type": "string"},
                            "parameters": {"type": "object"},
                            "strict": {"type": "boolean"},
                        },
                    },
                },
            },
            "description": "Sent only to providers whose adapter maps function calling.",
        },
        "tool_choice": {
            "oneOf": [
                {"enum": ["none", "auto", "required"]},
                {
                    "type": "object",
                    "required": ["type", "function"],
                    "properties": {"type": {"const": "function"}, "function": {"type": "object"}},
                },
            ]
        },
        "parallel_tool_calls": {"type": ["boolean", "null"]},
        "response_format": {
            "type": ["object", "null"],
            "required": ["type"],
            "properties": {
                "type": {"enum": ["text", "json_object", "json_schema"]},
                "json_schema": {
                    "type": "object",
                    "required": ["name"],
                    "properties": {
                        "name": {"type": "string", "pattern": "^[A-Za-z0-9_-]{1,64}$"},
                        "schema": {"type": "object"},
                        "strict": {"type": "boolean"},
                        "description": {"type": "string"},
                    },
                },
            },
            "description": "JSON modes, as seed: OpenAI and Azure as sent, Gemini responseMimeType and "
            "responseJsonSchema, Ollama format.",
        },
    },
}

_COMPLETION_REQUEST = {
    "type": "object",
    "description": _OTHER_FIELDS,
    "required": ["model", "prompt"],
    "properties": {
        **_COMMON_PROPS,
        "prompt": {
            "oneOf": [{"type": "string"}, {"type": "array", "items": {"type": "string"}, "minItems": 1, "maxItems": 1}]
        },
        "max_tokens": {"type": ["integer", "null"], "minimum": 1, "default": 16},
    },
}

_TOKEN_IDS = {"type": "array", "items": {"type": "integer", "minimum": 0, "maximum": 2**31 - 1}, "minItems": 1}
_EMBEDDING_REQUEST = {
    "type": "object",
    "description": "Served only by providers of the model itself (never another model of a group); any other "
    "field is a 400 unknown_parameter.",
    "required": ["model", "input"],
    "properties": {
        "model": {"type": "string", "minLength": 1, "maxLength": 256},
        "input": {
            "oneOf": [
                {"type": "string", "minLength": 1},
                {"type": "array", "items": {"type": "string", "minLength": 1}, "minItems": 1, "maxItems": 2048},
                _TOKEN_IDS,
                {"type": "array", "items": _TOKEN_IDS, "minItems": 1, "maxItems": 2048},
            ]
        },
        "encoding_format": {"enum": ["float", "base64"], "default": "float"},
        "dimensions": {"type": "integer", "minimum": 1, "maximum": 65536},
        "user": {"type": "string"},
        "provider": {"enum": ["openai", "azure", "anthropic", "google", "ollama"]},
        "tenantId": {"type": "string", "minLength": 1, "maxLength": MAX_TENANT_LEN},
        "metadata": _METADATA,
    },
    "additionalProperties": False,
}
_EMBEDDING_RESPONSE = {
    "type": "object",
    "required": ["object", "data", "model", "usage"],
    "properties": {
        "object": {"const": "list"},
        "data": {"type": "array"},
        "model": {"type": "string"},
        "usage": {
            "description": "null when the vendor reports none (Gemini): the call is then unpriced",
            "type": ["object", "null"],
        },
    },
}

_CHAT_RESPONSE = {
    "type": "object",
    "required": ["id", "object", "created", "model", "choices", "usage"],
    "properties": {
        "id": {"type": "string"},
        "object": {"const": "chat.completion"},
        "created": {"type": "integer"},
        "model": {"type": "string"},
        "choices": {"type": "array"},
        "usage": _USAGE,
    },
}

_COMPLETION_RESPONSE = {
    "type": "object",
    "required": ["id", "object", "created", "model", "choices", "usage"],
    "properties": {
        "id": {"type": "string"},
        "object": {"const": "text_completion"},
        "created": {"type": "integer"},
        "model": {"type": "string"},
        "choices": {"type": "array"},
        "usage": _USAGE,
    },
}

_GATEWAY_HEADERS = {
    "x-request-id": {"schema": {"type": "string"}, "description": "The gateway's id of this request."},
    "x-llm-provider": {"schema": {"type": "string"}, "description": "The provider that served the call."},
    "x-llm-model": {"schema": {"type": "string"}, "description": "The model that served the call."},
    "x-llm-attempts": {"schema": {"type": "string"}, "description": "Provider attempts made (retries + fallbacks)."},
    "x-llm-cost-usd": {
        "schema": {"type": "string"},
        "description": "Exact cost in USD as decimal text, or 'unpriced'. On streams: the "
        "`x_llm_gateway.cost_usd` field of the final usage chunk and an SSE comment "
        "`: x-llm-cost-usd=...` before `data: [DONE]` (or before the error event of a stream cut "
        "mid-way).",
    },
}
#: the answers of a tenant with a rate limit (``rate_limits``), as OpenAI sends them
_RATE_LIMIT_HEADERS = {
    f"x-ratelimit-{what}-{kind}": {
        "schema": {"type": "string"},
        "description": f"{text} ({kind} a minute), when the tenant has such a rate limit.",
    }
    for kind in ("requests", "tokens")
    for what, text in (
        ("limit", "The limit"),
        ("remaining", "What is left now"),
        ("reset", "Until the allowance is full again: '20ms', '1.5s', '6m0s'"),
    )
}
_GATEWAY_HEADERS.update(_RATE_LIMIT_HEADERS)
#: what an error answer of a call that reached providers carries
_ERROR_HEADERS = {
    "x-request-id": _GATEWAY_HEADERS["x-request-id"],
    "x-llm-attempts": {
        "schema": {"type": "string"},
        "description": "Attempts made (retries + fallbacks), when providers were tried.",
    },
    "x-llm-provider": {"schema": {"type": "string"}, "description": "The provider that refused the call, if one did."},
    "x-llm-cost-usd": {
        "schema": {"type": "string"},
        "description": "What the failed call's attempts cost that their providers bill, when providers were "
        "tried: '0.000000' when each refused or never answered, else decimal text or 'unpriced'.",
    },
    "retry-after": {
        "schema": {"type": "string"},
        "description": "Seconds to wait (a tenant's rate limit, an upstream's, circuits open).",
    },
    "retry-after-ms": {"schema": {"type": "string"}, "description": "A tenant's rate limit: milliseconds to wait."},
    **_RATE_LIMIT_HEADERS,
}


def _errors(*statuses: int, headers: dict[str, Any] | None = None) -> dict[str, Any]:
    return {
        str(s): {
            "description": "OpenAI error object",
            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
            **({"headers": headers} if headers else {}),
        }
        for s in statuses
    }


def _post(summary: str, request_ref: str, response_ref: str, *, streams: bool = True) -> dict[str, Any]:
    content: dict[str, Any] = {"application/json": {"schema": {"$ref": response_ref}}}
    if streams:
        content["text/event-stream"] = {"schema": {"type": "string"}}
    return {
        "post": {
            "summary": summary,
            "requestBody": {"required": True, "content": {"application/json": {"schema": {"$ref": request_ref}}}},
            "responses": {
                "200": {
                    "description": "The completion (JSON), or an SSE stream when `stream` is true."
                    if streams
                    else "The answer (JSON).",
                    "headers": _GATEWAY_HEADERS,
                    "content": content,
                },
                **_errors(400, 401, 403, 404, 413, 415, 429, 502, 503, 504, headers=_ERROR_HEADERS),
            },
        }
    }


@cache
def openapi_document() -> dict[str, Any]:
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "llm-gateway",
            "version": "1",
            "description": "OpenAI-compatible API over OpenAI, Azure OpenAI, Anthropic, Gemini and Ollama.",
        },
        "paths": {
            "/v1/chat/completions": _post(
                "Chat completion", "#/components/schemas/ChatCompletionRequest", "#/components/schemas/ChatCompletion"
            ),
            "/v1/completions": _post(
                "Legacy text completion",
                "#/components/schemas/CompletionRequest",
                "#/components/schemas/TextCompletion",
            ),
            "/v1/embeddings": _post(
                "Embeddings",
                "#/components/schemas/EmbeddingRequest",
                "#/components/schemas/EmbeddingList",
                streams=False,
            ),
            "/v1/models": {
                "get": {
                    "summary": "Models this gateway can serve",
                    "responses": {"200": {"description": "A list of models"}, **_errors(401)},
                }
            },
            "/v1/models/{model}": {
                "get": {
                    "summary": "One model, with the providers that serve it in the order calls try them",
                    "parameters": [{"name": "model", "in": "path", "required": True, "schema": {"type": "string"}}],
                    "responses": {"200": {"description": "A model"}, **_errors(400, 401, 404)},
                }
            },
            "/healthz": {"get": {"summary": "Liveness", "responses": {"200": {"description": "ok"}}}},
            "/metrics": {"get": {"summary": "Prometheus metrics", "responses": {"200": {"description": "text"}}}},
            "/v1/providers/health": {
                "get": {
                    "summary": "Provider health derived from the usage events (state, circuit, window stats)",
                    "responses": {"200": {"description": "per provider and model"}, **_errors(401)},
                }
            },
            "/v1/costs": {
                "get": {
                    "summary": "A tenant's exact costs (where this process owns the cost store)",
                    "parameters": [
                        {"name": "tenantId", "in": "query", "schema": {"type": "string"}},
                        {"name": "start", "in": "query", "schema": {"type": "string", "format": "date-time"}},
                        {"name": "end", "in": "query", "schema": {"type": "string", "format": "date-time"}},
                        {"name": "limit", "in": "query", "schema": {"type": "integer", "minimum": 0}},
                        {
                            "name": "groupBy",
                            "in": "query",
                            "description": "split the totals: provider, model, day or metadata.<key>",
                            "schema": {"type": "string"},
                        },
                        {
                            "name": "metadata.<key>",
                            "in": "query",
                            "description": "only the calls whose metadata has this pair (one parameter a key)",
                            "schema": {"type": "string"},
                        },
                    ],
                    "responses": {
                        "200": {
                            "description": "totalCost (decimal text), totalTokens, usageCount, usage; with groupBy, "
                            "groups (at most 1,000, the largest first; days in order) and groupsTruncated"
                        },
                        **_errors(400, 401, 403, 404),
                    },
                }
            },
            "/v1/budgets": {
                "get": {
                    "summary": "Each tenant's budget and each metadata budget of the period: tenantId (null: of "
                    "every tenant), metadata (the pairs of the calls it covers, {} for a tenant's), limitUsd, "
                    "spentUsd, remainingUsd (decimal text), exceeded, periodStart, resetsAt; an admin key sees "
                    "every budget, another key its tenant's",
                    "parameters": [{"name": "tenantId", "in": "query", "schema": {"type": "string"}}],
                    "responses": {
                        "200": {
                            "description": "object list, data (the tenants' budgets, then the metadata ones), complete"
                        },
                        **_errors(400, 401, 403),
                    },
                }
            },
            "/v1/analytics/sql": {
                "post": {
                    "summary": "One read-only SQL query over the analytics store (admin key where keys are set)",
                    "requestBody": {
                        "required": True,
                        "content": {
                            "application/json": {
                                "schema": {
                                    "type": "object",
                                    "required": ["sql"],
                                    "properties": {
                                        "sql": {"type": "string"},
                                        "maxRows": {"type": "integer", "minimum": 1},
                                        "timeoutSeconds": {"type": "number", "exclusiveMinimum": 0, "maximum": 300},
                                        "format": {"type": "string", "enum": ["json", "csv"]},
                                    },
                                }
                            }
                        },
                    },
                    "responses": {
                        "200": {
                            "description": "columns, rows (money as decimal text; a JSON column's object as its "
                            "value when that is exactly its text, as metadata is), truncated"
                        },
                        **_errors(400, 401, 403, 404),
                    },
                }
            },
            "/v1/analytics/export": {
                "post": {
                    "summary": "Write the usage facts as Parquet, one file a UTC day, into the server's export "
                    "directory (admin key where keys are set); a day exported again is replaced",
                    "requestBody": {
                        "content": {
                            "application/json": {
                                "schema": {
                                    "type": "object",
                                    "properties": {
                                        "from": {"type": "string", "format": "date"},
                                        "to": {"type": "string", "format": "date"},
                                    },
                                    "additionalProperties": False,
                                }
                            }
                        }
                    },
                    "responses": {
                        "200": {"description": "object list, directory, data (day, path, rows, costUsd, bytes)"},
                        **_errors(400, 401, 403, 404, 503),
                    },
                }
            },
            "/v1/admin/replay": {
                "post": {
                    "summary": "Replay the event log into the stores (admin key); streams progress, then the report",
                    "requestBody": {
                        "content": {
                            "application/json": {
                                "schema": {
                                    "type": "object",
                                    "properties": {
                                        "since": {"type": ["string", "null"], "format": "date-time"},
                                        "fromPosition": {"type": ["string", "null"]},
                                        "reprice": {"type": "boolean"},
                                        "full": {"type": "boolean"},
                                        "dryRun": {"type": "boolean"},
                                        "health": {"type": ["boolean", "null"]},
                                        "prices": {"type": ["object", "null"], "description": "a price file"},
                                    },
                                }
                            }
                        }
                    },
                    "responses": {
                        "200": {"description": "NDJSON lines: progress, then result (the report) or error"},
                        **_errors(400, 401, 403, 409),
                    },
                }
            },
        },
        "components": {
            "schemas": {
                "Error": _ERROR,
                "ChatCompletionRequest": _CHAT_REQUEST,
                "CompletionRequest": _COMPLETION_REQUEST,
                "ChatCompletion": _CHAT_RESPONSE,
                "TextCompletion": _COMPLETION_RESPONSE,
                "EmbeddingRequest": _EMBEDDING_REQUEST,
                "EmbeddingList": _EMBEDDING_RESPONSE,
            },
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
        "security": [{}, {"bearer": []}],
    }
