"""A call's metadata: the pairs that attribute its cost below the tenant (team, feature,
environment, ...), recorded on every event of the call and kept by both stores.

A request names them as OpenAI's ``metadata`` (the SDK's ``metadata=`` on chat completions,
``extra_body`` elsewhere): an object of at most 16 pairs, keys of 1 to 64 characters, string
values of at most 512 (OpenAI's limits), every one printable. An API key may carry pairs of its
own (``api_keys[].metadata``): they are on every call of the key, and a call may add others but
not change one of them (a 403: a team's key cannot bill another team). The gateway sends the
metadata to no provider: it is the gateway's record, not a vendor's (OpenAI keeps a request's
``metadata`` only with ``store``, which the gateway does not support).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from gateway.api.tool_validation import type_name
from gateway.errors import InvalidRequest, MetadataNotAllowed
from gateway.events import MAX_METADATA_KEY, MAX_METADATA_VALUE

#: OpenAI's limit on a request's pairs
MAX_REQUEST_PAIRS = 16
#: the cost queries' parameters of a metadata key: ``metadata.team`` (a filter, a split)
METADATA_PARAM = "metadata."


def metadata_problem(pairs: Mapping[Any, Any], max_pairs: int = MAX_REQUEST_PAIRS) -> InvalidRequest | None:
    """What is wrong with ``pairs`` as a call's metadata (None: nothing): the request's and an
    API key's, checked alike."""
    if len(pairs) > max_pairs:
        return InvalidRequest(
            f"'metadata' may hold at most {max_pairs} pairs, got {len(pairs)}", param="metadata", code="invalid_value"
        )
    for key, value in pairs.items():
        if not isinstance(key, str) or not 1 <= len(key) <= MAX_METADATA_KEY:
            return InvalidRequest(
                f"metadata keys are 1 to {MAX_METADATA_KEY} characters, got {str(key)[:80]!r}",
                param="metadata",
                code="invalid_value",
            )
        param = f"metadata.{key}"
        if not key.isprintable():
            return InvalidRequest(
                f"metadata key {key!r} must be printable: no control or invisible character",
                param=param,
                code="invalid_value",
            )
        if not isinstance(value, str):
            return InvalidRequest(
                f"'{param}' must be a string, got {type_name(value)}", param=param, code="invalid_type"
            )
        if len(value) > MAX_METADATA_VALUE:
            return InvalidRequest(
                f"'{param}' is longer than {MAX_METADATA_VALUE} characters", param=param, code="invalid_value"
            )
        if not value.isprintable():
            return InvalidRequest(
                f"'{param}' must be printable: no control or invisible character", param=param, code="invalid_value"
            )
    return None


def request_metadata(body: Mapping[str, Any]) -> dict[str, str] | None:
    """The request's ``metadata``, checked (None: it names none)."""
    value = body.get("metadata")
    if value is None:
        return None
    if not isinstance(value, dict):
        raise InvalidRequest(
            f"'metadata' must be an object of string values, got {type_name(value)}",
            param="metadata",
            code="invalid_type",
        )
    problem = metadata_problem(value)
    if problem is not None:
        raise problem
    return value or None


def call_metadata(requested: dict[str, str] | None, fixed: Mapping[str, str] | None) -> dict[str, str]:
    """The call's metadata: the request's pairs and its key's (``fixed``). A request that gives
    one of the key's pairs another value is refused: :class:`~gateway.errors.MetadataNotAllowed`."""
    if not fixed:
        return requested or {}
    if not requested:
        return dict(fixed)
    for key, value in requested.items():
        if key in fixed and fixed[key] != value:
            raise MetadataNotAllowed(
                f"'metadata.{key}' is set by your API key to {fixed[key]!r}: a call may add metadata, "
                "not change the key's",
                param=f"metadata.{key}",
            )
    return {**requested, **fixed}
