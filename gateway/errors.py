"""One exception root for the gateway, with retry and fallback decisions on the class.

Vendor and driver errors are translated at the adapter boundary (``raise ... from e``);
the router reads ``retryable`` (retry on the same provider) and ``fallback`` (try the next
provider) instead of listing classes.
"""

from __future__ import annotations

import math
from decimal import Decimal
from typing import Any, ClassVar

from gateway.safe_text import redact_secrets
from gateway.types import Usage


class GatewayError(Exception):
    """Root of every error the gateway raises on purpose."""

    status: ClassVar[int] = 500
    type: ClassVar[str] = "server_error"
    code: ClassVar[str | None] = None
    #: retry on the same provider (rate limits, overload)
    retryable: ClassVar[bool] = False
    #: give up on this provider and try the next one
    fallback: ClassVar[bool] = False
    #: the client should not retry (sent as ``x-should-retry: false``)
    client_should_retry: ClassVar[bool | None] = None
    #: set by the router on the error that ends a call after attempts (a provider's refusal, or
    #: a fallback's adapter that cannot put the request): what the call's billed attempts cost
    #: (None: unknown) and how many attempts it made, for its answer's headers
    call_cost: Decimal | None = Decimal(0)
    call_attempts: int | None = None
    #: headers of its own the answer carries (a tenant's rate limit: when to retry)
    headers: dict[str, str] | None = None
    #: the label it is counted under in the metrics, when not its code (two errors share a code)
    metric_code: ClassVar[str | None] = None

    def __init__(self, message: str, *, param: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        if code is not None:
            self.code = code  # type: ignore[misc]

    def to_openai(self) -> dict[str, Any]:
        return {
            "error": {
                "message": self.message,
                "type": self.type,
                "param": self.param,
                "code": self.code,
            }
        }


# --- client-side errors (the request itself is wrong) -------------------------------------


class InvalidRequest(GatewayError):
    status = 400
    type = "invalid_request_error"
    code = "invalid_request"


class AuthenticationFailed(GatewayError):
    status = 401
    type = "invalid_request_error"
    code = "invalid_api_key"


class PermissionDenied(GatewayError):
    status = 403
    type = "permission_error"
    code = "permission_denied"


class ModelNotAllowed(PermissionDenied):
    """The API key may not ask for this model (``gateway/api/access.py``): a 403 before any
    provider is asked."""

    code = "model_not_allowed"
    client_should_retry = False


class MetadataNotAllowed(PermissionDenied):
    """A call gives one of its API key's metadata pairs another value (``gateway/api/metadata.py``)."""

    code = "metadata_not_allowed"
    client_should_retry = False


class ProviderNotAllowed(PermissionDenied):
    """The API key may not use the pinned provider, or none of those serving the model."""

    code = "provider_not_allowed"
    client_should_retry = False


class ModelNotFound(GatewayError):
    status = 404
    type = "invalid_request_error"
    code = "model_not_found"


class RouteNotFound(GatewayError):
    status = 404
    type = "invalid_request_error"
    code = "not_found"


class MethodNotAllowed(GatewayError):
    status = 405
    type = "invalid_request_error"
    code = "method_not_allowed"


class RequestTooLarge(GatewayError):
    status = 413
    type = "invalid_request_error"
    code = "request_too_large"


class ExpectationFailed(GatewayError):
    status = 417
    type = "invalid_request_error"
    code = "expectation_failed"


class UnsupportedMediaType(GatewayError):
    status = 415
    type = "invalid_request_error"
    code = "unsupported_media_type"


class BudgetExceeded(GatewayError):
    """The tenant has spent its budget of the period (``gateway.budgets``): no provider is asked
    until the next period starts. OpenAI's exhausted-quota answer, with our code."""

    status = 429
    type = "insufficient_quota"
    code = "budget_exceeded"
    #: the budget is not back before the period ends (sent as ``x-should-retry: false``)
    client_should_retry = False

    @classmethod
    def of(cls, standing: Any) -> BudgetExceeded:
        """For a ``gateway.budgets.ledger.Standing``."""
        from gateway.pricing.base import format_usd

        period = "daily" if standing.budget.period == "day" else "monthly"
        pairs = standing.pairs
        if not pairs:
            whose, calls = f"Tenant {standing.tenant!r}", "Calls"
        elif standing.tenant is not None:
            whose, calls = f"Tenant {standing.tenant!r}, for calls with metadata {pairs!r},", "Calls with that metadata"
        else:
            whose, calls = f"Every tenant together, for calls with metadata {pairs!r},", "Calls with that metadata"
        if not standing.budget.usd:
            return cls(
                f"{whose} has a {period} budget of $0: no call is accepted until the gateway runs with a higher one."
            )
        again = (
            f"{calls} are accepted again from {standing.resets.strftime('%Y-%m-%dT%H:%M:%SZ')}, or once the gateway "
            "runs with a higher budget."
        )
        if standing.tenant is None:  # every tenant's spend: not told to one of them
            return cls(f"{whose} has used its {period} budget of ${format_usd(standing.budget.usd)}. {again}")
        return cls(
            f"{whose} has used its {period} budget: ${format_usd(standing.spent)} spent of "
            f"${format_usd(standing.budget.usd)}. {again}"
        )


#: the longest wait an answer's ``retry-after`` gives (a day)
MAX_RETRY_AFTER = 86_400


class TenantRateLimited(GatewayError):
    """The tenant is over its requests or tokens a minute (``gateway.limits``): OpenAI's own
    rate-limit answer (type ``requests`` or ``tokens``), with ``retry-after`` and
    ``retry-after-ms``, which the SDKs wait for and retry on."""

    status = 429
    type = "requests"
    code = "rate_limit_exceeded"
    #: OpenAI's code, as an upstream's rate limit: told apart in the metrics
    metric_code = "tenant_rate_limited"

    @classmethod
    def of(
        cls, tenant: str, kind: str, limit: int, wait: float, headers: dict[str, str], scoped: Any = None
    ) -> TenantRateLimited:
        """``headers``: the refusing limit's ``x-ratelimit-*`` headers now (both kinds, when it
        has both); ``scoped``: the ``MetadataRateLimit`` that refused (None: the tenant's)."""
        from gateway.limits.limiter import reset_text, wait_ms

        at_once = kind == "concurrent requests"
        what = "requests at once" if at_once else f"{kind} per min ({'RPM' if kind == 'requests' else 'TPM'})"
        if scoped is None:
            whose = f"tenant {tenant!r}"
        elif scoped.tenant is not None:
            whose = f"tenant {tenant!r}, for calls with metadata {scoped.pairs!r},"
        else:
            whose = f"calls with metadata {scoped.pairs!r} of every tenant together,"
        error = cls(f"Rate limit reached for {whose} on {what}: Limit {limit}. Please try again in {reset_text(wait)}.")
        if not at_once:
            error.type = kind  # type: ignore[misc]
        ms = max(1, wait_ms(wait))
        error.headers = {
            **headers,
            # at most a day, as an upstream's (past 60 s the middleware adds x-should-retry: false)
            "retry-after": str(min(MAX_RETRY_AFTER, math.ceil(ms / 1000))),
            "retry-after-ms": str(min(MAX_RETRY_AFTER * 1000, ms)),
        }
        return error


# --- provider (upstream) errors -------------------------------------------------------------


class ProviderError(GatewayError):
    """An attempt on one provider failed. ``outcome`` is what the usage event records."""

    status = 502
    type = "upstream_error"
    code = "upstream_error"
    outcome: ClassVar[str] = "upstream_error"
    fallback = True

    def __init__(
        self,
        message: str,
        *,
        provider: str,
        http_status: int | None = None,
        retry_after: float | None = None,
        upstream_code: str | None = None,
        param: str | None = None,
    ) -> None:
        super().__init__(redact_secrets(message), param=param)
        #: what the provider reported it used, when it answered and bills the attempt anyway (a
        #: 200 answer the adapter could not read): recorded with the attempt
        self.usage: Usage | None = None
        #: the provider answered and bills this attempt, but its usage could not be read (a 200
        #: answer in the vendor's format with content and usage both unreadable): cost unknown
        self.billed_unseen = False
        #: the model that answer names, when it could be read: the billed usage is priced as it
        #: (the requested name's launch rate billed a snapshot's usage 73% over: a review)
        self.served_model: str | None = None
        # call_cost, call_attempts (GatewayError's): this attempt included, when it ends the call
        self.provider = provider
        self.http_status = http_status
        #: seconds the upstream asked us to wait (retry-after-ms / retry-after / RetryInfo)
        self.retry_after = retry_after
        self.upstream_code = upstream_code

    @property
    def recorded_code(self) -> str | None:
        """The attempt's ``error_code`` in its usage event: the vendor's own code when it gave
        one, else ours."""
        return self.upstream_code or self.code

    def name_provider(self, provider: str) -> None:
        """Say which provider, for an error raised below the adapters (``provider="upstream"``:
        the answer's reader): "upstream: malformed response" reached clients and the stores."""
        if self.provider != provider:
            self.message = self.message.replace(f"{self.provider}:", f"{provider}:", 1)
            self.args = (self.message,)
            self.provider = provider


class RateLimited(ProviderError):
    """429: retried on the same provider with backoff, then fallback."""

    status = 429
    type = "rate_limit_error"
    code = "rate_limit_exceeded"
    outcome = "rate_limited"
    retryable = True


class Overloaded(ProviderError):
    """Anthropic 529 / Gemini 503 UNAVAILABLE / OpenAI 503 slow_down: retried like a rate limit."""

    status = 503
    type = "server_error"
    code = "overloaded"
    outcome = "overloaded"
    retryable = True


class QuotaExhausted(ProviderError):
    """429 meaning the account is out of money or daily quota: fall back at once."""

    status = 429
    type = "insufficient_quota"
    code = "insufficient_quota"
    outcome = "quota_exhausted"
    client_should_retry = False


class UpstreamServerError(ProviderError):
    status = 502
    type = "server_error"
    code = "upstream_server_error"
    outcome = "upstream_error"


class ClientGone(GatewayError):
    """The client left before the next attempt was sent: the call stops there (no attempt is
    made for nobody). 499, nginx's "client closed request", for the metrics alone."""

    status = 499
    type = "client_gone"
    code = "client_closed_request"


class ConnectionsBusy(ProviderError):
    """Every connection the gateway may open to the provider's host stayed busy for the connect
    timeout: the request never left the gateway. No provider attempt (no event; health is not
    told: a burst of one tenant opened a healthy provider's circuit for everyone, a review), and
    the next provider is tried; busy everywhere, a 503."""

    status = 503
    type = "server_error"
    code = "gateway_busy"
    outcome = "overloaded"


class UpstreamTimeout(ProviderError):
    status = 504
    type = "server_error"
    code = "upstream_timeout"
    outcome = "timeout"


class UpstreamConnectionError(ProviderError):
    status = 502
    type = "server_error"
    code = "upstream_unreachable"
    outcome = "connection_error"


class UpstreamAuthError(ProviderError):
    """The gateway's credentials for this provider were refused (401/403): fall back."""

    status = 502
    type = "server_error"
    code = "upstream_auth_failed"
    outcome = "auth_error"


class UpstreamModelNotFound(ProviderError):
    """The provider does not know the model (404): another provider may."""

    status = 404
    type = "invalid_request_error"
    code = "model_not_found"
    outcome = "model_not_found"


class MalformedResponse(ProviderError):
    """The provider answered 2xx with a body we cannot read. It bills the answer whatever is
    wrong with it: billable at the usage it reported when that part can be read
    (``providers.http.with_billed_usage``), else at an unknown cost, never free (a truncated
    JSON body, a stream whose first event is cut, was recorded free and the call's fallback
    showed only what the next provider cost)."""

    status = 502
    type = "server_error"
    code = "malformed_upstream_response"
    outcome = "malformed_response"

    def __init__(self, message: str, **kwargs: Any) -> None:
        super().__init__(message, **kwargs)
        self.billed_unseen = True


class UpstreamBadRequest(ProviderError):
    """The provider rejected the request as invalid (400/413/422): returned to the client."""

    status = 400
    type = "invalid_request_error"
    code = "invalid_request"
    outcome = "client_error"
    fallback = False
    client_should_retry = False
    #: the client sees the vendor's own code (``context_length_exceeded``: clients trim and
    #: retry on it), ours only when the vendor gave none
    shows_upstream_code: ClassVar[bool] = True

    def __init__(self, message: str, **kwargs: Any) -> None:
        super().__init__(message, **kwargs)
        if self.upstream_code and self.shows_upstream_code:
            self.code = self.upstream_code  # type: ignore[misc]


class UpstreamTooLarge(UpstreamBadRequest):
    """The provider refused the request as too large (413): the client's request is, too. The code
    is ours whatever the vendor's (OpenAI's 413 has none, and its ``type`` stood in for it)."""

    status = 413
    code = "request_too_large"
    shows_upstream_code = False


class ModelCannotServe(UpstreamBadRequest):
    """The provider's model cannot do what the request asks (Ollama: "llama3 does not support
    tools"): the request is fine, another provider's model may serve it."""

    code = "model_cannot_serve"
    fallback = True
    shows_upstream_code = False


class ContentFiltered(UpstreamBadRequest):
    code = "content_filter"
    outcome = "content_filtered"
    shows_upstream_code = False
    #: Azure's ``innererror`` (``code`` and ``content_filter_result``: which category fired, at
    #: what severity), passed on to the client as Azure sends it
    innererror: dict[str, Any] | None = None

    def to_openai(self) -> dict[str, Any]:
        out = super().to_openai()
        if self.innererror is not None:
            out["error"]["innererror"] = self.innererror
        return out


class ToolCallFailed(ProviderError):
    """The model answered, but the tool call it made failed (Gemini's ``MALFORMED_FUNCTION_CALL``,
    ``UNEXPECTED_TOOL_CALL``, ``TOO_MANY_TOOL_CALLS``): billed at the answer's usage. Answered as
    an empty ``stop``, a tool loop took it for the model's last word and ended (a review); as an
    error, the next provider of the model is tried, and a client may try again (such failures
    come and go). The request's tools, not the provider's health: neutral (``client_error``), or
    one client's schema would open the provider's circuit for every caller."""

    status = 502
    type = "server_error"
    code = "tool_call_failed"
    outcome = "client_error"


class StreamCut(ProviderError):
    """The upstream stream broke after it had started."""

    status = 502
    type = "server_error"
    code = "stream_interrupted"
    outcome = "stream_cut"

    @property
    def recorded_code(self) -> str | None:
        """Its own code: the cause's (``upstream_code``) is in its message."""
        return self.code


class ToolCallFailedMidStream(StreamCut):
    """A :class:`ToolCallFailed` after the answer's first text reached the client: the stream
    ends with its error, billed at the usage the answer reported, neutral for health (as a
    ``stream_cut`` it was unpriced and five opened the provider's circuit: a re-test)."""

    code = "tool_call_failed"
    outcome = "client_error"

    @property
    def recorded_code(self) -> str | None:
        """The vendor's reason, as when the call fails before its stream began."""
        return self.upstream_code or self.code


class ClientTooSlow(StreamCut):
    """The upstream ended a stream the client had stopped reading (``StreamSession.batches``):
    the client's doing, so neutral for provider health."""

    code = "client_too_slow"
    outcome = "cancelled"


class InternalError(GatewayError):
    """A bug of the gateway's (an exception no code path expected): a 500 that says
    ``x-should-retry: false``. The SDKs retry a 500 twice, and a bug after a billed attempt
    billed all three (a review: one ``create()``, three vendor calls)."""

    code = "internal_error"
    client_should_retry = False


class StreamFailedInternally(StreamCut):
    """A bug of the gateway's during a stream it had begun: the stream ends with this error
    event (a 500 answer sent on the begun stream was no valid HTTP: a review). The attempt is
    recorded ``cancelled``, neutral for the provider's health, and billed: the provider made
    the answer."""

    status = 500
    code = "internal_error"
    outcome = "cancelled"
    client_should_retry = False


class CallStopped(StreamCut):
    """An attempt made of several upstream calls (Gemini's embeddings, 100 inputs a call) that
    the gateway's side stopped between two of them: the client left, or no connection came free
    for the next call. Billed for the calls made; neutral for the provider's health."""

    status = 503
    code = "call_stopped"
    outcome = "cancelled"


class CallTimedOut(CallStopped):
    """The request timeout ran out during an attempt made of several upstream calls, before the
    next call was sent or while it waited for its answer with what the calls before had left of
    it: the request too large for its timeout. Neutral for the provider's health (a ``timeout``
    there, five such calls of one tenant opened Google's circuit for every call: a diff review)."""

    status = 504
    code = "request_timeout"


class AllProvidersFailed(GatewayError):
    """Every candidate provider failed: one error naming each attempt's outcome."""

    status = 502
    type = "server_error"
    code = "all_providers_failed"
    #: what the failed attempts cost that their providers bill (None: unknown); set by the router
    cost: Decimal | None = Decimal(0)
    #: seconds until the first skipped provider's circuit lets a probe through (every provider
    #: was skipped); set by the router
    retry_after: float | None = None

    def __init__(
        self,
        message: str,
        *,
        attempts: list[ProviderError],
        status: int = 502,
        code: str | None = None,
        type: str | None = None,
        client_should_retry: bool | None = None,
    ) -> None:
        super().__init__(message, code=code)
        self.attempts = attempts
        self.status = status  # type: ignore[misc]
        if type is not None:
            self.type = type  # type: ignore[misc]
        self.client_should_retry = client_should_retry  # type: ignore[misc]


class GatewayStopping(GatewayError):
    """The gateway stopped while the call ran: its shutdown timeout (``LLM_GATEWAY_SHUTDOWN_TIMEOUT``)
    ended it. The answer says what its attempts cost; after an attempt its provider may bill,
    ``x-should-retry: false`` (the SDKs retried the dropped connection it was before on another
    replica, billed again: a review)."""

    status = 503
    type = "server_error"
    code = "gateway_stopping"


class NoProviderAvailable(GatewayError):
    status = 503
    type = "server_error"
    code = "no_provider_available"
