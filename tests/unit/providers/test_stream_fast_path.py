"""The OpenAI / Azure stream fast path (``SseFramer`` + ``StreamParser``, no generator per
layer, bytes parsed without decoding) gives exactly what the previous path gave: the same
events, the same chunks in the same batches (one per network read), the same error at the same
place, for any bytes split anywhere. The oracle is that previous code (``stream_reference``).
"""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway import errors
from gateway.providers import openai_wire as wire
from gateway.providers.sse import SseFramer, iter_sse_batches
from gateway.types import StreamChunk, Usage
from tests.unit.providers import stream_reference as reference

SETTINGS = settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])

ENDINGS = st.sampled_from([b"\n", b"\r\n", b"\r\r\n"])
BITS = st.one_of(
    st.binary(max_size=8).map(lambda b: b.replace(b"\n", b"")),
    st.sampled_from([b"x", b" ", b":", b"\r", b"x\ry", "é".encode(), b"\xe2", b"\xff", b"[DONE]", b"{}"]),
)
LINES = st.one_of(
    st.just(b""),
    BITS.map(lambda v: b"data: " + v),
    BITS.map(lambda v: b"data:" + v),
    st.just(b"data"),
    BITS.map(lambda v: b"event: " + v),
    BITS.map(lambda v: b":" + v),
    BITS.map(lambda v: b"id: " + v),
    BITS,
)


def _split(body: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({min(c, len(body)) for c in cuts})
    edges = [0, *points, len(body)]
    return [body[a:b] for a, b in itertools.pairwise(edges) if b > a]


async def _pieces(pieces: list[bytes]) -> AsyncIterator[bytes]:
    for piece in pieces:
        yield piece


@st.composite
def sse_bodies(draw: st.DrawFn) -> list[bytes]:
    lines = draw(st.lists(st.tuples(LINES, ENDINGS), max_size=14))
    body = b"".join(line + end for line, end in lines)
    if lines and draw(st.booleans()):  # the body ends mid-line
        body = body[: -len(lines[-1][1])]
    return _split(body, draw(st.lists(st.integers(0, len(body)), max_size=6)))


@SETTINGS
@given(sse_bodies())
async def test_framing_matches_the_line_by_line_framer(pieces: list[bytes]) -> None:
    old = [[(e.event, e.data) for e in b] async for b in reference.iter_sse_batches(_pieces(pieces))]
    new = [[(e.event, e.data) for e in b] async for b in iter_sse_batches(_pieces(pieces))]  # type: ignore[arg-type]
    assert new == old


def test_framer_slices_plain_events_and_keeps_what_is_unfinished() -> None:
    framer = SseFramer()
    assert framer.feed(b'data: {"a":1}\n\ndata: [DONE]\n\ndata: {"b"') == [(None, b'{"a":1}'), (None, b"[DONE]")]
    assert framer.feed(b":2}\r") == []
    assert framer.feed(b"\n\r\nevent: e\ndata: x\ndata: y\n\n: c\n\n") == [(None, b'{"b":2}'), (b"e", b"x\ny")]
    assert framer.close() == []
    framer.feed(b"data: last")
    assert framer.close() == [(None, b"last")]


def test_an_event_past_the_limit_is_a_malformed_answer(monkeypatch: pytest.MonkeyPatch) -> None:
    """An event that never ends was held whole and split again on every read (105 MB: 43 s of
    CPU with the event loop stalled); one over MAX_EVENT_BYTES is a malformed answer, and an
    event under it is framed as before, however many reads it spans."""
    from gateway.providers import sse

    monkeypatch.setattr(sse, "MAX_EVENT_BYTES", 100)
    framer = SseFramer()
    assert framer.feed(b"data: ") == []
    for _ in range(9):
        assert framer.feed(b"x" * 10) == []
    assert framer.feed(b"\r\n\r") == []  # a blank line split over reads, with CRs
    assert framer.feed(b"\ndata: y\n\n") == [(None, b"x" * 90), (None, b"y")]
    framer.feed(b"data: ")
    with pytest.raises(errors.MalformedResponse, match="over 100 bytes"):
        for _ in range(20):
            framer.feed(b"x" * 10)


# --- events -> chunks -------------------------------------------------------------------------

TEXT = st.one_of(st.text(max_size=6), st.sampled_from(["", " ", "é", '"\\', "\u2028", "\U0001f600"]))
ODD = st.one_of(st.none(), st.integers(-1, 3), st.booleans(), TEXT)
FINISH = st.one_of(
    st.none(), st.sampled_from(["stop", "length", "tool_calls", "function_call", "content_filter", "odd"]), ODD
)
TOKENS = st.one_of(st.integers(0, 9), st.booleans(), st.none(), st.just("7"))
USAGE = st.one_of(
    st.none(),
    ODD,
    st.fixed_dictionaries(
        {"prompt_tokens": TOKENS, "completion_tokens": TOKENS},
        optional={
            "total_tokens": TOKENS,
            "prompt_tokens_details": st.one_of(st.fixed_dictionaries({"cached_tokens": TOKENS}), ODD),
            "completion_tokens_details": st.one_of(st.fixed_dictionaries({"reasoning_tokens": TOKENS}), ODD),
        },
    ),
)
DELTA = st.one_of(
    st.fixed_dictionaries(
        {}, optional={"role": st.just("assistant"), "content": st.one_of(TEXT, ODD), "refusal": st.one_of(TEXT, ODD)}
    ),
    ODD,
)
CHAT_CHOICE = st.fixed_dictionaries(
    {"index": st.just(0)},
    optional={"delta": DELTA, "finish_reason": FINISH, "logprobs": st.none(), "content_filter_results": st.just({})},
)
TEXT_CHOICE = st.fixed_dictionaries(
    {"index": st.just(0), "text": st.one_of(TEXT, ODD)}, optional={"finish_reason": FINISH}
)
OBJECTS = st.one_of(
    st.fixed_dictionaries(
        {"choices": st.one_of(st.lists(st.one_of(CHAT_CHOICE, TEXT_CHOICE, ODD), max_size=2), ODD)},
        optional={
            "id": st.just("chatcmpl-1"),
            "model": st.one_of(st.sampled_from(["gpt-4o", "gpt-4o-2024-08-06", ""]), ODD),
            "usage": USAGE,
            "obfuscation": st.just("xx"),
            "error": st.one_of(
                st.none(),
                st.just({"message": "slow down", "type": "requests", "code": "rate_limit_exceeded"}),
                st.just({"message": "boom", "type": "server_error", "code": None}),
            ),
        },
    ),
    st.fixed_dictionaries({}, optional={"model": st.just("m"), "usage": USAGE}),  # no choices at all
    st.sampled_from([None, [], 5, "text"]),
)


def _data(obj: Any) -> bytes:
    return orjson.dumps(obj)


RAW = st.sampled_from(
    [b"[DONE]", b" [DONE] ", b"[DONE]\xc2\xa0", b"{bad", b"", b"null", b'{"choices":[{"delta":{"content":"\xff"}}]}']
)
EVENT_DATA = st.one_of(OBJECTS.map(_data), OBJECTS.map(lambda o: orjson.dumps(o, option=orjson.OPT_INDENT_2)), RAW)


@st.composite
def streams(draw: st.DrawFn) -> list[bytes]:
    """An OpenAI-like SSE body (events, maybe comments and ``[DONE]``), cut into reads."""
    parts: list[bytes] = []
    for data in draw(st.lists(EVENT_DATA, max_size=8)):
        end = draw(ENDINGS)
        if draw(st.integers(0, 5)) == 0:
            parts.append(b": keep-alive" + end + end)
        lines = data.split(b"\n")  # pretty-printed JSON goes as several data lines
        parts.append(b"".join(b"data: " + line + end for line in lines) + end)
    if draw(st.booleans()):
        parts.append(b"data: [DONE]\n\n")
    body = b"".join(parts)
    return _split(body, draw(st.lists(st.integers(0, len(body)), max_size=6)))


async def _reference_run(pieces: list[bytes]) -> tuple[list[list[StreamChunk]], BaseException | None]:
    batches: list[list[StreamChunk]] = []
    try:
        async for batch in reference.parse_stream_batches(
            reference.iter_sse_batches(_pieces(pieces)), provider="openai"
        ):
            batches.append(batch)
    except errors.ProviderError as exc:
        return batches, exc
    return batches, None


def _fast_run(pieces: list[bytes]) -> tuple[list[list[StreamChunk]], BaseException | None]:
    """What ``OpenAIProvider.stream_batches`` does with the reads of a body."""
    parser = wire.StreamParser("openai")
    batches: list[list[StreamChunk]] = []
    for piece in [*pieces, b""]:
        chunks = parser.feed(piece) if piece else parser.end()
        if chunks:
            batches.append(chunks)
        if parser.error is not None:
            return batches, parser.error
        if parser.done:
            break
    return batches, None


def _error(exc: BaseException | None) -> tuple[Any, ...] | None:
    if exc is None:
        return None
    assert isinstance(exc, errors.ProviderError)
    return (type(exc), str(exc), exc.http_status, exc.upstream_code, exc.retryable, exc.provider)


@SETTINGS
@given(streams())
async def test_stream_parser_matches_the_generator_path(pieces: list[bytes]) -> None:
    old_batches, old_error = await _reference_run(pieces)
    new_batches, new_error = _fast_run(pieces)
    assert new_batches == old_batches
    assert _error(new_error) == _error(old_error)
    # and the generator path itself (kept for callers that have SSE events) agrees too
    again: list[list[StreamChunk]] = []
    try:
        async for batch in wire.parse_stream_batches(iter_sse_batches(_pieces(pieces)), provider="openai"):  # type: ignore[arg-type]
            again.append(batch)
    except errors.ProviderError as exc:
        assert _error(exc) == _error(old_error)
    else:
        assert old_error is None
    assert again == old_batches


@SETTINGS
@given(OBJECTS)
def test_parse_chunk_matches_the_previous_one(obj: Any) -> None:
    def run(parse: Any) -> Any:
        try:
            return parse(obj, provider="azure")
        except errors.ProviderError as exc:
            return _error(exc)

    assert run(wire.parse_chunk) == run(reference.parse_chunk)


def test_a_usual_stream_in_one_read() -> None:
    """The benchmark's shape: role chunk, words, finish, usage chunk and [DONE] in one read."""
    chunk = {"id": "c", "object": "chat.completion.chunk", "created": 1, "model": "gpt-4o-2024-08-06"}
    events = [
        chunk | {"choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}]},
        chunk | {"choices": [{"index": 0, "delta": {"content": "Hi"}, "finish_reason": None}]},
        chunk | {"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]},
        chunk | {"choices": [], "usage": {"prompt_tokens": 5, "completion_tokens": 1, "total_tokens": 6}},
    ]
    body = b"".join(b"data: " + orjson.dumps(e) + b"\n\n" for e in events) + b"data: [DONE]\n\n"
    parser = wire.StreamParser("openai")
    model = "gpt-4o-2024-08-06"
    assert parser.feed(body) == [
        StreamChunk("Hi", None, None, model),
        StreamChunk("", "stop", None, model),
        StreamChunk("", None, Usage(5, 1), model),
    ]
    assert parser.done and parser.error is None


@pytest.mark.parametrize(
    ("body", "error"),
    [
        (b'data: {"choices":[{"delta":{"content":"a"}}]}\n\ndata: {bad\n\n', errors.MalformedResponse),
        (b'data: {"choices":[{"delta":{"content":"a"}}]}\n\n', errors.StreamCut),
        (
            b'data: {"choices":[{"delta":{"content":"a"}}]}\n\ndata: {"error":{"code":"rate_limit_exceeded"}}\n\n',
            errors.RateLimited,
        ),
    ],
)
def test_what_came_before_an_error_is_returned_first(body: bytes, error: type[errors.ProviderError]) -> None:
    parser = wire.StreamParser("openai")
    chunks = parser.feed(body) + parser.end()
    assert [c.text for c in chunks] == ["a"]
    assert isinstance(parser.error, error) and not parser.done
    assert parser.feed(b'data: {"choices":[{"delta":{"content":"b"}}]}\n\n') == []  # nothing after an error
