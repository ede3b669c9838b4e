"""A call's metadata (gateway/api/metadata.py): the request's pairs checked by OpenAI's limits,
an API key's pairs added to every call of the key and never changed by one."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from gateway.api.metadata import call_metadata, request_metadata
from gateway.errors import InvalidRequest, MetadataNotAllowed
from gateway.settings import ApiKey


def test_the_key_s_pairs_join_the_request_s() -> None:
    assert call_metadata(None, None) == {} and call_metadata({"a": "1"}, None) == {"a": "1"}
    assert call_metadata(None, {"team": "search"}) == {"team": "search"}
    assert call_metadata({"feature": "x", "team": "search"}, {"team": "search"}) == {"feature": "x", "team": "search"}


@pytest.mark.parametrize("value", ["ads", "", "Search", "search "])
def test_a_request_may_not_change_a_pair_of_its_key(value: str) -> None:
    with pytest.raises(MetadataNotAllowed) as info:
        call_metadata({"team": value}, {"team": "search"})
    assert (info.value.status, info.value.code, info.value.param) == (403, "metadata_not_allowed", "metadata.team")


def test_none_and_an_empty_object_ask_for_nothing() -> None:
    assert request_metadata({}) is None and request_metadata({"metadata": None}) is None
    assert request_metadata({"metadata": {}}) is None


@pytest.mark.parametrize(
    ("metadata", "code"),
    [
        (["a"], "invalid_type"),
        ({"k": 1}, "invalid_type"),
        ({"k": "a\tb"}, "invalid_value"),
        ({"": ""}, "invalid_value"),
    ],
)
def test_a_bad_request_metadata_is_a_400(metadata: Any, code: str) -> None:
    with pytest.raises(InvalidRequest) as info:
        request_metadata({"metadata": metadata})
    assert (info.value.status, info.value.code) == (400, code)


@pytest.mark.parametrize(
    "metadata",
    [{"team": "a\nb"}, {"": "x"}, {"team": "x" * 513}, {f"k{i}": "v" for i in range(17)}, {"team": "\u200b"}],
)
def test_a_key_s_metadata_is_checked_at_start_by_the_same_rules(metadata: dict[str, str]) -> None:
    with pytest.raises(ValidationError, match="metadata"):
        ApiKey(key="sk-1", tenant="t", metadata=metadata)
    assert ApiKey(key="sk-1", tenant="t", metadata={"team": "search"}).metadata == {"team": "search"}
    assert ApiKey(key="sk-1", tenant="t", metadata={}).metadata is None


def test_the_costs_table_says_a_split_was_cut() -> None:
    from analytics.costs_command import render_table

    group = {"value": "t1", "totalCost": "0.5", "usageCount": 1, "totalTokens": 3, "unpricedCount": 0}
    doc = {"tenantId": "acme", "totalCost": "0.5", "usageCount": 1, "totalTokens": 3, "unpricedCount": 0}
    split = {**doc, "groupBy": "metadata.trace", "groups": [group, {**group, "value": None}]}
    whole = render_table({**split, "groupsTruncated": False}).splitlines()
    assert whole[1:] == [
        "by metadata.trace:",
        "  value   cost  calls  tokens  unpriced",
        "  t1      $0.5  1      3       0       ",
        "  (none)  $0.5  1      3       0       ",
    ]
    cut = render_table({**split, "groupsTruncated": True}).splitlines()
    assert cut[:-1] == whole and cut[-1] == "  (more groups than these 2, the largest: narrow the window or filter)"
