"""The fast event reader (gateway/event_json.py) against the reference, ``UsageEvent.from_json``.

The rule: ``decode_fast`` returns None, or exactly the event ``from_json`` returns (the same
values of the same types, the same JSON); where ``from_json`` refuses a record it returns None.
And it does take the records the gateway writes, or it would be no faster."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from gateway.event_json import _wire_type, decode_event, decode_fast
from gateway.events import UsageEvent

BASE: dict[str, Any] = {
    "schema_version": 1, "event_id": "e1", "request_id": "r1", "attempt": 1, "created_at": "2026-03-01T00:00:00Z",
    "tenant_id": "t", "api_key_id": None, "endpoint": "chat.completions", "stream": False, "provider": "openai",
    "requested_model": "m", "provider_model": "m", "served_model": None, "outcome": "success", "http_status": 200,
    "error_code": None, "error_message": None, "latency_ms": 1.5, "ttft_ms": None, "prompt_tokens": 1,
    "completion_tokens": 2, "cached_tokens": 0, "cache_creation_tokens": 0, "cache_creation_1h_tokens": 0,
    "reasoning_tokens": 0,
    "total_tokens": 3, "cost_usd": "0.5", "price_version": "v", "billable": True, "incomplete": False,
    "gateway_instance": None, "metadata": {},
}  # fmt: skip


def _shape(event: UsageEvent) -> list[tuple[str, str, str]]:
    """Each field's name, type and text (``Decimal('1.50')`` is not ``Decimal('1.5')`` here;
    a time's text includes its offset)."""
    return [(name, type(value).__name__, str(value)) for name, value in event.__dict__.items()]


def _json(event: UsageEvent) -> bytes | str:
    try:
        return event.to_json()
    except TypeError as e:  # an int orjson cannot write (pydantic took it): the same for both
        return repr(e)


def assert_same_as_reference(raw: bytes | str) -> UsageEvent | None:
    """The rule above, for one record; returns the fast reader's event."""
    try:
        reference: UsageEvent | None = UsageEvent.from_json(raw)
    except ValueError:
        reference = None
    fast = decode_fast(raw)
    if fast is None:
        return None
    assert reference is not None, f"the fast reader took a record from_json refuses: {raw!r}"
    assert _shape(fast) == _shape(reference), raw
    assert _json(fast) == _json(reference)
    assert fast == reference
    assert fast.model_fields_set == reference.model_fields_set
    assert fast.created_at.tzname() == reference.created_at.tzname()
    return fast


def record(field: str, json_value: str) -> bytes:
    """BASE with ``field``'s value written as the JSON text ``json_value``."""
    placeholder = orjson.dumps({**BASE, field: "@@@"})
    return placeholder.replace(b'"@@@"', json_value.encode(), 1)


INTS = ["1", "0", "-1", "1.0", "1e2", '"1"', "true", "null", "9223372036854775807", "-9223372036854775807",
        "-9223372036854775808", "9223372036854775808", "18446744073709551616", "1.5", "-0", "[]", "{}"]  # fmt: skip
FLOATS = ["5965687258968819189590104360000000000000", "9007199254740993", "-9007199254740993", "1", "1.5",
          "-0.0", "1e308", "1e400", "-1e400", "1e-400", '"1.5"', "true", "null", "NaN", "Infinity",
          "0.1000000000000000055511151231257827", "123456789012345678901234567890", "5e-324"]  # fmt: skip
TEXTS = ['"x"', '""', '"\\u0000"', '"a\\u0000b"', '"\\u0001"', '"\\ud800"', '"\\ud83d\\ude00"', '"\\udc00\\ud800"',
         '"é"', "1", "null", "true", '"a\\"b"', '"line\\nbreak"']  # fmt: skip
BOOLS = ["true", "false", "1", "0", '"true"', "null", "1.0"]
TIMES = [
    "2026-03-01T00:00:00Z", "2026-03-01T00:00:00+00:00", "2026-03-01T00:00:00+05:30", "2026-03-01T00:00:00-00:00",
    "2026-03-01t00:00:00z", "2026-03-01 00:00:00Z", "2026-03-01T00:00:00.1Z", "2026-03-01T00:00:00.123456Z",
    "2026-03-01T00:00:00.1234567Z", "2026-03-01T00:00:00.9999995Z", "2026-03-01T00:00:00.123456789123Z",
    "2026-03-01T23:59:60Z", "2026-03-01T24:00:00Z", "2026-03-01T00:00Z", "2026-03-01", "2026-02-29T00:00:00Z",
    "2028-02-29T00:00:00Z", "8999-12-31T23:59:59.999999Z", "8999-12-31T23:59:59.9999999Z", "9000-01-01T00:00:00Z",
    "8999-12-31T23:00:00-01:00", "9000-01-01T00:30:00+01:00", "9999-12-31T23:59:59Z", "2026-03-01T00:00:00+24:00",
    "2026-03-01T00:00:00+23:59", "0001-01-01T00:00:00Z", "0001-01-01T00:00:00+01:00", "0000-01-01T00:00:00Z",
    "2026-03-01T00:00:00", "1700000000", "2026-3-1T00:00:00Z", "2026-03-01T00:00:00Zjunk", "2026-03-01T00:00:00.Z",
    "2026-03-01T00:00:00,5Z", "2026-03-01T00:00:00+0530", "2026-03-01T00:00:00+05", "+2026-03-01T00:00:00Z",
    "2026-03-01T00:00:00Z\\n", "\\n2026-03-01T00:00:00Z", "2026-W09-7T00:00:00Z", "20260301T000000Z",
    "2026-03-01T00:00:00+00:60", "2026-03-01T00:00:00+05:75", "2026-03-01T00:60:00Z", "2026-03-01T00:00:00+01:00:30",
]  # fmt: skip
MONEY = ['"0"', '"1.5"', '"-1.5"', '"1e-7"', '"NaN"', '"Infinity"', '"-Infinity"', '" 1"', '"1.5 "', '"1_0"', '"+1"',
         '".5"', '"1."', '"00.1"', "0.1", "1", "0", "null", '"0.0000000001"', '"1234567890123456789012345678901"',
         '"-0"', '"1.50"',
         '"9999999999.9999999999"', '"9999999999.99999999995"', '"-9999999999.99999999994"', '"\\u0663"',
         '"0x10"', "true", '"12345678901234567890.1234567890"']  # fmt: skip
#: a call's metadata: text to text, keys of 1 to 64 characters, values of at most 512, 32 pairs
METADATA = ["{}", '{"team":"search"}', '{"team":"","k2":"é ✓"}', '{"":"a"}', '{"k":1}', '{"k":null}', '{"k":true}',
            '{"k":["a"]}', '{"k":{"a":"b"}}', '{"k":"\\u0000"}', '{"\\u0000":"a"}', '{"k":"\\ud800"}',
            '{"\\ud800":"a"}', '{"k":"a\\nb"}', '{"k":"a","k":"b"}', "null", "[]", '"team"', "1",
            '{"k":"' + "x" * 512 + '"}', '{"k":"' + "x" * 513 + '"}', '{"' + "k" * 64 + '":"x"}',
            '{"' + "k" * 65 + '":"x"}', '{"' + "é" * 64 + '":"x"}', '{"' + "é" * 65 + '":"x"}',
            "{" + ",".join(f'"k{i}":"v"' for i in range(32)) + "}",
            "{" + ",".join(f'"k{i}":"v"' for i in range(33)) + "}"]  # fmt: skip

CASES = (
    [("attempt", v) for v in INTS]
    + [("schema_version", v) for v in INTS]
    + [(f, v) for f in ("prompt_tokens", "total_tokens", "http_status") for v in INTS]
    + [(f, v) for f in ("latency_ms", "ttft_ms") for v in FLOATS]
    + [(f, v) for f in ("event_id", "provider", "api_key_id", "error_message") for v in TEXTS]
    + [(f, v) for f in ("stream", "billable") for v in BOOLS]
    + [("created_at", f'"{v}"') for v in TIMES]
    + [("cost_usd", v) for v in MONEY]
    + [("outcome", v) for v in ['"success"', '"Success"', '"bogus"', "null", "1", '"stream_cut"']]
    + [("endpoint", v) for v in ['"completions"', '"x"', "null"]]
    + [("metadata", v) for v in METADATA]
)


@pytest.mark.parametrize(("field", "json_value"), CASES)
def test_a_field_value_is_read_as_from_json_reads_it_or_left_to_it(field: str, json_value: str) -> None:
    assert_same_as_reference(record(field, json_value))


STRUCTURE = [
    *(orjson.dumps({k: v for k, v in BASE.items() if k != name}) for name in BASE),  # each field missing
    orjson.dumps(BASE)[:-1] + b',"extra":1,"__dict__":{}}',
    orjson.dumps(BASE)[:-1] + b',"provider":"second"}',  # a key twice: the last wins in both
    orjson.dumps(BASE)[:-1] + b',"provider":7}',
    b'{"attempt":0,' + orjson.dumps(BASE)[1:],
    orjson.dumps(BASE)[:-1] + b',"schema_version":2}',
    orjson.dumps(BASE)[:-1] + b',"cost_usd":0.5}',
    orjson.dumps(BASE) + b" ",
    b" \n" + orjson.dumps(BASE),
    orjson.dumps(BASE) + b"x",
    b"\xef\xbb\xbf" + orjson.dumps(BASE),
    b"[" + orjson.dumps(BASE) + b"]",
    orjson.dumps(BASE).replace(b'"provider"', b'"pro\\u0076ider"'),
    orjson.dumps(BASE).replace(b'"openai"', b'"open\xffai"'),
    orjson.dumps(BASE).replace(b'"openai"', b'"open\nai"'),
    orjson.dumps(BASE)[:-1] + b",}",
    b"null",
    b"1",
    b'"text"',
    b"",
    orjson.dumps(BASE)[:-1] + b',"x":"\xff"}',  # invalid UTF-8 in a value msgspec would skip
    orjson.dumps(BASE)[:-1] + b',"\xff":1}',
    orjson.dumps(BASE)[:-1] + b',"x":' + b"1" * 4301 + b"}",  # beyond Python's int digits
    orjson.dumps(BASE)[:-1] + b',"x":' + b"[" * 900 + b"]" * 900 + b"}",
    orjson.dumps(BASE)[:-1] + b',"x":' + b"[" * 3000 + b"]" * 3000 + b"}",
]


@pytest.mark.parametrize("raw", STRUCTURE)
def test_a_record_of_another_shape_is_read_as_from_json_reads_it_or_left_to_it(raw: bytes) -> None:
    assert_same_as_reference(raw)
    assert_same_as_reference(raw.decode("utf-8", errors="replace"))  # the log may hand over text


_json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=12) | st.decimals().map(str),
    lambda inner: st.lists(inner, max_size=2) | st.dictionaries(st.text(max_size=3), inner, max_size=2),
    max_leaves=3,
)


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.dictionaries(st.sampled_from(sorted(BASE)), _json_values, min_size=1, max_size=4))
def test_any_fields_changed_to_any_json_are_read_as_from_json_reads_them(changes: dict[str, Any]) -> None:
    raw = orjson.dumps({**BASE, **changes}, option=orjson.OPT_NON_STR_KEYS) if _encodable(changes) else None
    if raw is not None:
        assert_same_as_reference(raw)


def _encodable(changes: dict[str, Any]) -> bool:
    try:
        orjson.dumps(changes)
    except TypeError:  # an int beyond 64 bits: orjson cannot write it
        return False
    return True


# --- it does read what the gateway writes ----------------------------------------------------------


def _events() -> list[UsageEvent]:
    start = datetime(2026, 3, 1, tzinfo=UTC)
    plain = UsageEvent.model_validate({**BASE, "created_at": start})
    return [
        plain,
        plain.model_copy(update={"cost_usd": None, "billable": False, "outcome": "rate_limited", "http_status": 429}),
        plain.model_copy(update={"cost_usd": Decimal("0.0000000001"), "ttft_ms": 12.25, "stream": True}),
        plain.model_copy(update={"cost_usd": Decimal("123456.1234567890"), "error_message": 'é "quoted"\n\u2028'}),
        plain.model_copy(update={"created_at": datetime(2026, 3, 1, 5, 30, 0, 123456, UTC)}),
        plain.model_copy(update={"prompt_tokens": -5, "total_tokens": 10**9, "api_key_id": "key_1"}),
        plain.model_copy(update={"cost_usd": Decimal("-0"), "gateway_instance": "gw-1", "endpoint": "completions"}),
    ]


@pytest.mark.parametrize("event", _events(), ids=lambda e: str(e.cost_usd))
def test_the_gateways_own_records_take_the_fast_reader(event: UsageEvent) -> None:
    raw = event.to_json()
    fast = assert_same_as_reference(raw)
    assert fast is not None, f"left to from_json: {raw!r}"
    assert fast == event
    assert decode_event(raw) == event


def test_text_that_is_not_utf_8_and_other_inputs_are_left_to_from_json() -> None:
    lone = orjson.dumps(BASE).decode().replace("openai", "open\ud800ai")  # a str from a log
    assert decode_fast(lone) is None
    with pytest.raises(ValueError, match="lone surrogate"):
        decode_event(lone)
    assert decode_fast("\ud800") is None
    assert decode_fast(memoryview(orjson.dumps(BASE))) is None  # from_json: TypeError


def test_a_record_older_than_a_field_is_read_by_from_json_which_knows_it_was_not_named() -> None:
    raw = orjson.dumps({k: v for k, v in BASE.items() if k != "api_key_id"})
    assert decode_fast(raw) is None
    assert "api_key_id" not in decode_event(raw).model_fields_set


def test_a_record_older_than_a_field_added_later_is_read_fast_as_from_json_reads_it() -> None:
    """The log holds records written before ``cache_creation_1h_tokens``: they read as 0, the
    field not among those the record names, without leaving the fast path (the replay reads
    millions of them)."""
    raw = orjson.dumps({k: v for k, v in BASE.items() if k != "cache_creation_1h_tokens"})
    fast, reference = decode_fast(raw), UsageEvent.from_json(raw)
    assert fast is not None
    assert fast == reference and fast.cache_creation_1h_tokens == 0
    assert fast.model_fields_set == reference.model_fields_set == set(BASE) - {"cache_creation_1h_tokens"}
    named = decode_fast(orjson.dumps(BASE | {"cache_creation_1h_tokens": 7}))
    assert named is not None and named.cache_creation_1h_tokens == 7
    assert named.model_fields_set == set(BASE)
    # and the next record that names every field is not marked as lacking one
    assert decode_fast(orjson.dumps(BASE)).model_fields_set == set(BASE)  # type: ignore[union-attr]


def test_an_event_with_1h_cache_writes_is_version_2_which_a_version_1_reader_refuses(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from gateway import event_json, events

    assert events.version_for(0) == 1 and events.version_for(5) == 2
    raw = orjson.dumps(BASE | {"schema_version": 2, "cache_creation_1h_tokens": 5})
    assert decode_event(raw).cache_creation_1h_tokens == 5
    monkeypatch.setattr(events, "SCHEMA_VERSION", 1)  # a consumer of the version before
    monkeypatch.setattr(event_json, "SCHEMA_VERSION", 1)
    with pytest.raises(ValueError, match="unsupported usage event schema_version 2"):
        decode_event(raw)


def test_a_record_nested_too_deep_is_unreadable_not_a_recursion_error() -> None:
    """A RecursionError is not a ValueError: the projector took such a record for a bug and
    restarted on it forever, where it dead-letters an unreadable one."""
    raw = orjson.dumps(BASE)[:-1] + b',"x":' + b"[" * 3000 + b"]" * 3000 + b"}"
    with pytest.raises(ValueError, match="nested too deep"):
        decode_event(raw)


def test_what_from_json_refuses_decode_event_refuses_with_its_reason() -> None:
    raw = orjson.dumps(BASE).replace(b'"cost_usd":"0.5"', b'"cost_usd":0.5')
    with pytest.raises(ValueError, match="float"):
        decode_event(raw)


def test_a_field_type_it_cannot_read_fails_at_import_not_at_run_time() -> None:
    with pytest.raises(TypeError, match="teach it"):
        _wire_type(list[int])


def test_an_event_it_read_copies_with_changes_as_any_other() -> None:
    fast = decode_fast(orjson.dumps(BASE))
    assert fast is not None
    copy = fast.model_copy(update={"cost_usd": Decimal("2")})
    assert (copy.cost_usd, fast.cost_usd) == (Decimal("2"), Decimal("0.5"))
    assert copy.model_fields_set == fast.model_fields_set == set(BASE)


def test_what_one_event_s_copy_names_never_reaches_the_others() -> None:
    # every event it reads shares one set of field names: a copy's update, even of a name that
    # is no field, must land in the copy's own set, never in the events read before or after
    first, second = decode_fast(orjson.dumps(BASE)), decode_fast(orjson.dumps(BASE | {"event_id": "e-2"}))
    assert first is not None and second is not None
    copy = first.model_copy(update={"cost_usd": Decimal("2"), "not_a_field": 1})
    assert "not_a_field" in copy.model_fields_set
    later = decode_fast(orjson.dumps(BASE | {"event_id": "e-3"}))
    assert later is not None
    for event in (first, second, later):
        assert event.model_fields_set == set(BASE)
    with pytest.raises(ValidationError):  # frozen: nothing adds to the set by assignment
        first.cost_usd = Decimal("3")  # type: ignore[misc]
    assert first.model_fields_set == set(BASE)


def test_an_embedding_event_is_version_3_which_a_version_2_reader_refuses(monkeypatch: pytest.MonkeyPatch) -> None:
    """``endpoint: embeddings`` is a value no reader of version 2 knows: written at 3, such a
    reader dead-letters it as a newer version (kept, projected once upgraded)."""
    from gateway import event_json, events

    assert events.version_for(0, "embeddings") == 3 and events.version_for(5, "completions") == 2
    raw = orjson.dumps(
        BASE | {"schema_version": 3, "endpoint": "embeddings", "completion_tokens": 0, "total_tokens": 1}
    )
    event = decode_event(raw)
    assert (event.endpoint, event.schema_version) == ("embeddings", 3)
    assert decode_event(event.to_json()) == event
    monkeypatch.setattr(events, "SCHEMA_VERSION", 2)
    monkeypatch.setattr(event_json, "SCHEMA_VERSION", 2)
    with pytest.raises(ValueError, match="unsupported usage event schema_version 3"):
        decode_event(raw)


def test_an_event_with_metadata_is_version_4_which_a_version_3_reader_refuses(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A reader of version 3 ignores a field it does not know: it would have stored and
    re-priced a call's event without its metadata. Written at 4, it dead-letters it instead
    (kept, projected once upgraded); an event without metadata keeps its older version."""
    from gateway import event_json, events

    assert events.version_for(0, "chat.completions", {"team": "a"}) == 4
    assert events.version_for(5, "embeddings", {"team": "a"}) == 4
    assert events.version_for(0, "chat.completions", {}) == 1
    raw = orjson.dumps(BASE | {"schema_version": 4, "metadata": {"team": "search", "env": "prod"}})
    fast = assert_same_as_reference(raw)
    assert fast is not None and fast.metadata == {"team": "search", "env": "prod"}
    assert decode_event(fast.to_json()) == fast
    monkeypatch.setattr(events, "SCHEMA_VERSION", 3)
    monkeypatch.setattr(event_json, "SCHEMA_VERSION", 3)
    with pytest.raises(ValueError, match="unsupported usage event schema_version 4"):
        decode_event(raw)


def test_a_record_from_before_metadata_reads_as_none_each_its_own() -> None:
    old = orjson.dumps({k: v for k, v in BASE.items() if k != "metadata"})
    first, second = decode_fast(old), decode_fast(old)
    assert first is not None and second is not None
    assert first.metadata == {} and "metadata" not in first.model_fields_set
    assert first.metadata is not second.metadata  # never one dict shared by every event read


def test_metadata_no_store_holds_is_refused_by_both_readers() -> None:
    for value in ({"k": "nul\x00"}, {"nul\x00": "v"}):
        raw = orjson.dumps(BASE | {"schema_version": 4, "metadata": value})
        assert decode_fast(raw) is None
        with pytest.raises(ValueError, match="NUL"):
            decode_event(raw)
    tagged = orjson.dumps(BASE | {"schema_version": 4, "metadata": {"k": "x"}})
    for lone in (tagged.replace(b'"x"', b'"\\ud800"'), tagged.replace(b'"k"', b'"\\udc00"')):  # escaped: JSON
        assert decode_fast(lone) is None
        with pytest.raises(ValueError, match="unicode"):
            decode_event(lone)
    with pytest.raises(ValueError, match="unicode"):  # a str from a log
        decode_event(tagged.decode().replace('"x"', '"\ud800"'))


def test_a_record_from_before_both_later_fields_names_neither() -> None:
    later = {"cache_creation_1h_tokens", "metadata"}
    for lacking in ({"cache_creation_1h_tokens"}, {"metadata"}, later):
        raw = orjson.dumps({k: v for k, v in BASE.items() if k not in lacking})
        fast = assert_same_as_reference(raw)
        assert fast is not None and fast.model_fields_set == set(BASE) - lacking
        assert (fast.cache_creation_1h_tokens, fast.metadata) == (0, {})
