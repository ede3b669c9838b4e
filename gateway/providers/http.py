"""HTTP plumbing shared by the adapters: posting JSON, reading errors, translating failures."""

from __future__ import annotations

import contextlib
import email.utils
import json
import logging
import re
import time
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import Any

import orjson

from gateway import errors
from gateway.providers.upstream_http import WIRE, ClientGone, PoolBusy, UpstreamClient
from gateway.providers.upstream_response import BodyCut, Response, Timeout
from gateway.safe_text import redact_secrets
from gateway.types import UnreadableUsage, Usage

log = logging.getLogger(__name__)

ErrorClassifier = Callable[[int, Mapping[str, str], Any, str], errors.ProviderError]


def _seconds(text: str, per_second: float = 1.0) -> float | None:
    """A number of seconds (``> 0``; infinity is a wait no budget allows), or None for NaN,
    which no wait would ever compare with (``sleep(nan)`` never ends), and for zero or less: no
    wait named, so the backoff applies (a ``retry-after: -5`` or ``0`` made three retries in 10
    ms, and a negative ``retry-after-ms`` overrode a valid ``retry-after``: review; the official
    SDKs honour only a positive wait too). Raises ``ValueError`` for text that is not a number."""
    value = float(text) / per_second
    return value if value > 0 else None  # NaN compares false


def parse_retry_after(headers: Mapping[str, str]) -> float | None:
    """Seconds to wait from ``retry-after-ms`` or ``retry-after`` (seconds or HTTP date)."""
    ms = headers.get("retry-after-ms")
    if ms:
        with contextlib.suppress(ValueError):
            if (wait := _seconds(ms, 1000.0)) is not None:
                return wait
    ra = headers.get("retry-after")
    if not ra:
        return None
    with contextlib.suppress(ValueError):
        return _seconds(ra)  # a number (None for NaN: no wait at all)
    try:
        when = email.utils.parsedate_to_datetime(ra)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    wait = (when - datetime.now(UTC)).total_seconds()
    return wait if wait > 0 else None  # a date past: no wait named (as above)


def parse_duration(value: str) -> float | None:
    """A protobuf duration string such as ``"27s"`` or ``"41.2s"`` in seconds."""
    value = value.strip()
    if not value.endswith("s"):
        return None
    try:
        return _seconds(value[:-1])
    except ValueError:
        return None


def error_message(body: Any, fallback: str) -> str:
    """The human message in an OpenAI / Azure / Anthropic / Gemini / Ollama error body."""
    if isinstance(body, dict):
        err = body.get("error")
        if isinstance(err, dict) and isinstance(err.get("message"), str):
            return str(err["message"])
        if isinstance(err, str):
            return err
        if isinstance(body.get("message"), str):
            return str(body["message"])
    return fallback


#: a vendor's words for a prompt longer than the model's context: OpenAI's code for it
#: (``context_length_exceeded``) is what clients trim and retry on. Anthropic: "prompt is too
#: long: 215000 tokens > 200000 maximum"; Gemini: "The input token count (1200000) exceeds the
#: maximum number of tokens allowed (1048576)"; Ollama: "input length exceeds the context length"
_CONTEXT_TOO_LONG = re.compile(
    r"prompt is too long|input token count.*exceeds the maximum|maximum context length"
    r"|exceeds (?:the )?(?:maximum )?context (?:length|window)",
    re.IGNORECASE,
)
CONTEXT_LENGTH_EXCEEDED = "context_length_exceeded"


def default_classify(
    provider: str,
    status: int,
    headers: Mapping[str, str],
    message: str,
    upstream_code: str | None = None,
) -> errors.ProviderError:
    """The status-code mapping every vendor shares; adapters refine it before calling this."""
    retry_after = parse_retry_after(headers)
    kwargs: dict[str, Any] = {
        "provider": provider,
        "http_status": status,
        "retry_after": retry_after,
        "upstream_code": upstream_code,
    }
    text = f"{provider}: {message}"
    should_retry = headers.get("x-should-retry")
    if status == 429:
        if should_retry == "false":
            return errors.QuotaExhausted(text, **kwargs)
        return errors.RateLimited(text, **kwargs)
    if status == 529:
        return errors.Overloaded(text, **kwargs)
    if status in (401, 403):
        return errors.UpstreamAuthError(text, **kwargs)
    if status == 404:
        return errors.UpstreamModelNotFound(text, **kwargs)
    if status == 408:
        return errors.UpstreamTimeout(text, **kwargs)
    if status in (400, 409, 413, 422):
        if _CONTEXT_TOO_LONG.search(message):
            kwargs["upstream_code"] = CONTEXT_LENGTH_EXCEEDED
        return (errors.UpstreamTooLarge if status == 413 else errors.UpstreamBadRequest)(text, **kwargs)
    if status == 504:
        return errors.UpstreamTimeout(text, **kwargs)
    if status == 503:
        return (
            errors.Overloaded(text, **kwargs) if should_retry != "false" else errors.UpstreamServerError(text, **kwargs)
        )
    return errors.UpstreamServerError(text, **kwargs)


#: the most of an error answer read: its message and code (a 2 GB 500 body was read whole)
ERROR_BODY_BYTES = 256 * 1024


async def read_error_body(resp: Response) -> tuple[Any, str]:
    """The parsed JSON body of an error response (or None) and its raw text (truncated)."""
    try:
        raw = await resp.text(ERROR_BODY_BYTES)  # an error's text is all we need of it
    except (TimeoutError, BodyCut, OSError):
        return None, ""
    try:
        return orjson.loads(raw), raw[:2000]
    except ValueError:
        return None, raw[:2000]


@asynccontextmanager
async def post(
    session: UpstreamClient,
    provider: str,
    url: str,
    *,
    headers: Mapping[str, str],
    body: Any,
    timeout: Timeout,
    classify: ErrorClassifier,
    params: Mapping[str, str] | None = None,
) -> AsyncIterator[Response]:
    """POST JSON; yield the 2xx response; raise a translated ProviderError otherwise.

    ``classify(status, headers, parsed_body, raw_text)`` maps a non-2xx answer to an error.
    Transport failures become UpstreamTimeout / UpstreamConnectionError.
    """
    try:
        exchange = session.post(
            url,
            data=encode_json(body),
            headers={"content-type": "application/json", **headers},
            timeout=timeout,
            params=params,
        )
    except ValueError as exc:  # a URL or header the client will not send: the provider's settings
        _log_unreachable(provider, url, exc)
        raise errors.UpstreamConnectionError(
            f"{provider}: cannot call the provider's endpoint ({exc.__class__.__name__}): see the gateway's log",
            provider=provider,
        ) from exc
    refused = False
    try:
        async with exchange as resp:
            if resp.status >= 300:
                refused = True  # no answer to bill, whatever comes of its body
                if (wire := WIRE.get()) is not None:
                    wire.state = "answered"
                parsed, raw = await read_error_body(resp)
                raise classify(resp.status, resp.headers, parsed, raw)
            yield resp
    except errors.ProviderError as exc:
        exc.name_provider(provider)
        raise
    except ClientGone:
        raise errors.ClientGone(f"{provider}: the client left before the request was sent") from None
    except PoolBusy as exc:
        raise errors.ConnectionsBusy(f"{provider}: {exc}, the request was not sent", provider=provider) from None
    except TimeoutError as exc:
        timed_out = errors.UpstreamTimeout(f"{provider}: request timed out", provider=provider)
        # the provider had the whole request: it bills the call whether or not its answer is read
        # (recorded free, a review's three 6 s answers, each given up at 4 s, cost $0)
        timed_out.billed_unseen = exchange.sent and not refused
        raise timed_out from exc
    except BodyCut as exc:
        raise errors.StreamCut(f"{provider}: response body cut: {exc}", provider=provider) from exc
    except OSError as exc:
        if exchange.answered and not refused:  # its body broke (a chunk that is no chunk): as a cut
            raise errors.StreamCut(f"{provider}: response body broke: {exc}", provider=provider) from exc
        _log_unreachable(provider, url, exc)
        if exchange.answer_lost():  # it had the request: billed, at an amount nobody saw
            lost = errors.UpstreamConnectionError(
                f"{provider}: the connection ended without an answer after the provider had the request "
                f"({exc.__class__.__name__})",
                provider=provider,
            )
            lost.billed_unseen = True
            raise lost from exc
        raise errors.UpstreamConnectionError(
            f"{provider}: cannot reach the provider's endpoint ({exc.__class__.__name__})", provider=provider
        ) from exc


#: (provider, failure) -> when it was last logged: an outage fails every call
_UNREACHABLE_LOGGED: dict[tuple[str, str], float] = {}
_UNREACHABLE_EVERY = 60.0


def _log_unreachable(provider: str, url: str, exc: Exception) -> None:
    """The endpoint's URL goes to the operator's log, not into the error: the error reaches the
    tenant's client and the stores, and a review read an internal host name
    (``myres-prod-eastus.internal.corp``) in a tenant's 502. Once a minute per failure."""
    key = (provider, exc.__class__.__name__)
    now = time.monotonic()
    if now - _UNREACHABLE_LOGGED.get(key, -_UNREACHABLE_EVERY) >= _UNREACHABLE_EVERY:
        _UNREACHABLE_LOGGED[key] = now
        # the URL's password, one of the gateway's credentials, is redacted with them
        log.warning(
            "%s: cannot reach %s: %s", provider, redact_secrets(url), redact_secrets(str(exc)) or exc.__class__.__name__
        )


#: how long a connection may take, after a stream's end event, to receive the end of its body
END_OF_BODY_WAIT = 0.5


def let_body_finish(resp: Response) -> None:
    """After a stream's end event (``[DONE]``, ``message_stop``, ``done: true``): the body's end
    (the chunked terminator) may come a moment later. Nobody waits for it: the connection takes
    it by itself and goes back to the pool, instead of being closed when the adapter stops
    reading (a new connection, a TLS handshake with a real vendor, for the next call); closed
    if the end has not come within ``END_OF_BODY_WAIT``."""
    if not resp.content.ended:
        resp.content.linger(END_OF_BODY_WAIT)


def parse_json(data: bytes | str, *, exact_if: bytes | None = None) -> Any:
    """JSON by orjson, or by the standard library's parser when ``exact_if`` occurs in it: orjson
    reads an integer past 64 bits as a float, and tool-call arguments (an account number, an
    id) must come through exact."""
    if exact_if is not None and (exact_if in data if isinstance(data, bytes) else exact_if.decode() in data):
        if _may_hold_surrogates(data):
            # the standard parser takes a lone surrogate (``"\\ud83c"``) that orjson refuses: the
            # text then crashed the answer's encoding after the call was billed (a 500 the SDKs
            # retried twice, each billed; a stream's 500 was no valid HTTP: a review). The answer
            # is malformed, as it is without a tool call
            orjson.loads(data)
        try:
            return json.loads(data)
        except RecursionError:  # nested past Python's parser (~1,000 levels): orjson takes 1,024
            return orjson.loads(data)  # (an answer it fails was an adapter failure, billed 0)
    return orjson.loads(data)


def _may_hold_surrogates(data: bytes | str) -> bool:
    """Whether a JSON text has an escape of a UTF-16 surrogate (``\\ud800`` to ``\\udfff``)."""
    if isinstance(data, bytes):
        return b"\\ud" in data or b"\\uD" in data
    return "\\ud" in data or "\\uD" in data


def encode_json(value: Any) -> bytes:
    """A request body: orjson, or the standard library for what orjson refuses (an integer
    past 64 bits in a tool call's arguments)."""
    try:
        return orjson.dumps(value)
    except TypeError:
        try:
            return json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode()
        except RecursionError:  # nested past Python's encoder (the API bounds what it takes)
            raise errors.InvalidRequest(
                "The request nests too deep to be sent to a provider", code="invalid_value"
            ) from None
        except UnicodeEncodeError as exc:
            # the request's own text, which no vendor can take: the client's error, never the
            # provider's (it was a connection error: five such calls opened the provider's circuit)
            raise errors.InvalidRequest(
                "The request holds text that is not valid Unicode (a lone surrogate, such as a \\udfff "
                "escape in a tool call's arguments or a tool result)",
                code="invalid_value",
            ) from exc


async def read_json(resp: Response, provider: str, *, exact_if: bytes | None = None) -> Any:
    """The JSON body of a 2xx response, or MalformedResponse (``exact_if``: see ``parse_json``)."""
    raw = await resp.read()
    try:
        return parse_json(raw, exact_if=exact_if)
    except ValueError as exc:
        raise errors.MalformedResponse(
            f"{provider}: response is not JSON: {raw[:200]!r}", provider=provider, http_status=resp.status
        ) from exc


async def post_json(
    session: UpstreamClient,
    provider: str,
    url: str,
    *,
    headers: Mapping[str, str],
    body: Any,
    timeout: Timeout,
    classify: ErrorClassifier,
    params: Mapping[str, str] | None = None,
) -> tuple[Any, Mapping[str, str]]:
    """:func:`post` and :func:`read_json`: a non-streaming call's JSON answer and its headers."""
    async with post(
        session, provider, url, headers=headers, body=body, timeout=timeout, classify=classify, params=params
    ) as resp:
        return await read_json(resp, provider), resp.headers


def with_billed_usage(
    exc: errors.MalformedResponse, usage_of: Callable[[], Usage | None], model_of: Callable[[], object] | None = None
) -> errors.MalformedResponse:
    """``exc`` (a 200 answer the adapter could not read) with the usage the answer reported, when
    that part can be read: the provider bills the answer whatever is wrong with its content (it
    was recorded free, and the call fell back and paid again); and with the model it names
    (``model_of``), which prices that usage."""
    try:
        exc.usage = usage_of()
    except (errors.ProviderError, ValueError, TypeError, LookupError, AttributeError):
        exc.usage = None
    try:
        model = model_of() if model_of is not None else None
    except (ValueError, TypeError, LookupError, AttributeError):
        model = None
    exc.served_model = model if isinstance(model, str) and model else None
    # billed all the same: an answer without readable usage is of unknown cost, not free
    exc.billed_unseen = exc.usage is None
    return exc


def usage_unknown(provider: str, why: UnreadableUsage) -> None:
    """An answer's usage report could not be read: the answer is served and its attempt is
    recorded as usage unknown (billable at an unknown cost), never as free."""
    log.warning("%s sent a usage report that cannot be read (%s): recorded as usage unknown", provider, why)


def malformed(provider: str, what: str) -> errors.MalformedResponse:
    return errors.MalformedResponse(f"{provider}: malformed response: {what}", provider=provider, http_status=200)
