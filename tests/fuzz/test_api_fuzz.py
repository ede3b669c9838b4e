"""Bad input at scale: schemathesis against /openapi.json and hypothesis-made bodies.

Whatever arrives, the gateway answers in time, never with a 5xx, and every error is an OpenAI
error object.
"""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.support.gateway import RunningGateway
from tests.support.threaded import gateway_in_thread


@pytest.fixture(scope="module")
def live() -> Iterator[RunningGateway]:
    with gateway_in_thread() as gw:
        yield gw


def _check(response: requests.Response) -> None:
    assert response.status_code < 500, response.text
    if response.status_code >= 400:
        body = response.json()
        assert set(body["error"]) == {"message", "type", "param", "code"}
        assert body["error"]["message"]


def test_schema_driven_requests_never_5xx(live: RunningGateway) -> None:
    """Every operation of /openapi.json, with schemathesis-made (valid and edge-case) requests."""
    schema = schemathesis.openapi.from_url(f"{live.url}/openapi.json")
    operations = [result.ok() for result in schema.get_all_operations()]
    assert {op.path for op in operations} >= {"/v1/chat/completions", "/v1/completions", "/v1/models"}
    for operation in operations:

        @given(case=operation.as_strategy())
        @settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck))
        def run(case: schemathesis.Case) -> None:
            _check(case.call(base_url=live.url, timeout=10))

        run()


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4),
    max_leaves=20,
)

VALID_CHAT = {
    "model": "gpt-4",
    "messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hi"}],
    "temperature": 0.5,
    "max_tokens": 20,
    "stop": ["\n"],
    "stream": False,
    "tenantId": "t1",
}
FIELDS = [*VALID_CHAT, "provider", "stream_options", "n", "top_p", "user", "prompt", "max_completion_tokens"]


@st.composite
def mutated_bodies(draw: st.DrawFn) -> dict:
    """A valid request with one to three fields replaced by arbitrary JSON (or removed)."""
    body = json.loads(json.dumps(VALID_CHAT))
    for name in draw(st.lists(st.sampled_from(FIELDS), min_size=1, max_size=3, unique=True)):
        if draw(st.booleans()) and name in body:
            del body[name]
        else:
            body[name] = draw(json_values)
    if draw(st.booleans()):  # mutate inside a message too
        body.setdefault("messages", [{}])
        if isinstance(body["messages"], list) and body["messages"] and isinstance(body["messages"][0], dict):
            body["messages"][0][draw(st.sampled_from(["role", "content"]))] = draw(json_values)
    return body


@settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))
@given(body=mutated_bodies(), path=st.sampled_from(["/v1/chat/completions", "/v1/completions"]))
def test_mutated_bodies_never_5xx(live: RunningGateway, body: dict, path: str) -> None:
    response = requests.post(
        f"{live.url}{path}", data=json.dumps(body), timeout=10, headers={"content-type": "application/json"}
    )
    _check(response)


@settings(max_examples=50, deadline=None, suppress_health_check=list(HealthCheck))
@given(raw=st.binary(max_size=200))
def test_random_bytes_never_5xx(live: RunningGateway, raw: bytes) -> None:
    response = requests.post(
        f"{live.url}/v1/chat/completions", data=raw, timeout=10, headers={"content-type": "application/json"}
    )
    _check(response)
