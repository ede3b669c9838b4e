"""An embedding attempt in several upstream calls (``embed_in_batches``): one deadline for all of
them, and a failure after the first billed for what was embedded, never retried or fallen back
from, and the failure it is (a review: every such failure was a ``stream_cut``)."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Callable

import pytest

from gateway import errors
from gateway.embedding import EmbeddingRequest, EmbeddingResult
from gateway.events import PROVIDER_FAILURES
from gateway.providers.base import Timeouts
from gateway.providers.embedding_batches import embed_in_batches
from gateway.providers.upstream_response import Timeout
from gateway.types import Usage

TEXTS = tuple(f"t{i}" for i in range(25))


class Upstream:
    """Each call answers one vector per text and reports 2 tokens a text, unless told to fail."""

    def __init__(self, fail_at: int | None = None, failure: BaseException | None = None, wait: float = 0.0) -> None:
        self.fail_at, self.failure, self.wait = fail_at, failure, wait
        self.timeouts: list[Timeout] = []

    async def __call__(self, request: EmbeddingRequest, timeout: Timeout) -> EmbeddingResult:
        self.timeouts.append(timeout)
        if len(self.timeouts) - 1 == self.fail_at:
            assert self.failure is not None
            raise self.failure
        await asyncio.sleep(self.wait)
        texts = request.texts or ()
        return EmbeddingResult([[float(len(t))] for t in texts], Usage(prompt_tokens=2 * len(texts)), "m")


async def embed(upstream: Upstream, timeouts: Timeouts | None = None) -> EmbeddingResult:
    return await embed_in_batches(
        upstream, EmbeddingRequest("m", texts=TEXTS), 10, "google", timeouts or Timeouts(request=30, connect=5)
    )


async def test_the_calls_share_one_request_timeout() -> None:
    """Each call had a fresh timeout: 300 inputs at 4 s a call took 12 s under a 5 s timeout."""
    upstream = Upstream(wait=0.05)
    result = await embed(upstream, Timeouts(request=10, connect=5))
    assert len(result.vectors) == 25 and result.usage == Usage(prompt_tokens=50)
    totals = [t.total for t in upstream.timeouts]
    assert totals[0] is not None and totals[0] <= 10
    assert all(b is not None and a is not None and b <= a - 0.04 for a, b in itertools.pairwise(totals))

    slow = Upstream(wait=0.15)
    with pytest.raises(errors.CallTimedOut) as out:
        await embed(slow, Timeouts(request=0.2, connect=5))
    assert "ran out" in out.value.message and "inputs 20 to 24 of 25" in out.value.message
    assert len(slow.timeouts) == 2  # the third call is not sent past the deadline
    assert out.value.usage == Usage(prompt_tokens=40) and not out.value.retryable
    # the request too large for its timeout, not the provider slow: neutral for its health (a
    # ``timeout`` there, five such calls opened Google's circuit for every call: a diff review)
    assert (out.value.status, out.value.outcome) == (504, "cancelled")
    assert out.value.outcome not in PROVIDER_FAILURES


@pytest.mark.parametrize(
    ("make", "status", "outcome"),
    [
        (lambda: errors.UpstreamBadRequest("google: requests[0]: too long", provider="google"), 400, "client_error"),
        (
            lambda: errors.RateLimited("google: quota", provider="google", http_status=429, retry_after=7),
            429,
            "rate_limited",
        ),
        (lambda: errors.Overloaded("google: overloaded", provider="google", http_status=503), 503, "overloaded"),
        (
            lambda: errors.UpstreamServerError("google: internal", provider="google", http_status=500),
            502,
            "upstream_error",
        ),
        (lambda: KeyError("a bug in the adapter"), 502, "upstream_error"),
    ],
)
async def test_a_later_failure_is_itself_billed_for_the_inputs_before_it(
    make: Callable[[], Exception], status: int, outcome: str
) -> None:
    """The vendor's failure as it came (its class: the client's status and the health's outcome;
    its retry-after), or a bug's as an upstream error, billed for the first 10 inputs (a bug
    after the first call was recorded free, and fallen back from)."""
    failure = make()
    with pytest.raises(errors.ProviderError) as out:
        await embed(Upstream(fail_at=1, failure=failure))
    error = out.value
    assert (error.status, error.outcome) == (status, outcome)
    assert error is failure or not isinstance(failure, errors.ProviderError)
    assert not error.retryable and not error.fallback and error.client_should_retry is False
    assert error.usage == Usage(prompt_tokens=20) and not error.billed_unseen  # the first 10 inputs
    assert "inputs 10 to 19 of 25 failed, after the first 10 were embedded" in error.message
    assert error.__cause__ is not error


async def test_what_the_failing_call_reports_or_hides_is_billed_too() -> None:
    """A 200 the adapter could not read is billed at the usage it reports (it was left out: the
    cost recorded was the calls' before it alone); one that reports none, or a timeout after the
    call had the whole request, makes the attempt's cost unknown, never an exact figure."""
    unreadable = errors.MalformedResponse("google: not a vector", provider="google")
    unreadable.usage, unreadable.billed_unseen = Usage(prompt_tokens=20), False
    with pytest.raises(errors.MalformedResponse) as out:
        await embed(Upstream(fail_at=2, failure=unreadable))
    assert out.value.usage == Usage(prompt_tokens=60) and not out.value.billed_unseen

    for hidden in (errors.MalformedResponse("google: garbage", provider="google"), _sent_timeout()):
        with pytest.raises(errors.ProviderError) as out:
            await embed(Upstream(fail_at=1, failure=hidden))
        assert out.value.usage is None and out.value.billed_unseen


def _sent_timeout() -> errors.UpstreamTimeout:
    timed_out = errors.UpstreamTimeout("google: request timed out", provider="google")
    timed_out.billed_unseen = True
    return timed_out


@pytest.mark.parametrize(
    "failure",
    [errors.ClientGone("google: the client left"), errors.ConnectionsBusy("google: pool busy", provider="google")],
)
async def test_the_gateways_own_stop_is_a_billed_cancelled_attempt(failure: Exception) -> None:
    """Nothing was sent for the later inputs, but the calls before were billed: an attempt the
    router records (it records none for a busy pool or a client gone before an attempt), as
    cancelled, which provider health does not count against the provider."""
    with pytest.raises(errors.CallStopped) as out:
        await embed(Upstream(fail_at=1, failure=failure))
    assert out.value.outcome == "cancelled" and out.value.usage == Usage(prompt_tokens=20)
    assert out.value.outcome not in PROVIDER_FAILURES


async def test_a_first_call_failing_is_the_failure_as_it_came() -> None:
    failure = errors.RateLimited("google: quota", provider="google", http_status=429)
    with pytest.raises(errors.RateLimited) as out:
        await embed(Upstream(fail_at=0, failure=failure))
    assert out.value is failure and out.value.retryable and out.value.usage is None


async def test_a_client_gone_between_calls_stops_the_calls_left() -> None:
    """Only a wait for a connection noticed a client gone: every call left was sent and billed,
    and the attempt recorded a success (a re-test: a client that timed out and retried paid for
    every call each time)."""
    from gateway.providers.upstream_http import CLIENT_GONE

    upstream = Upstream()
    watching = CLIENT_GONE.set(lambda: len(upstream.timeouts) >= 2)
    try:
        with pytest.raises(errors.CallStopped) as out:
            await embed(upstream)
    finally:
        CLIENT_GONE.reset(watching)
    assert len(upstream.timeouts) == 2 and out.value.usage == Usage(prompt_tokens=40)
    assert "inputs 20 to 24 of 25 failed, after the first 20 were embedded: the client left" in out.value.message


async def test_vectors_of_another_size_from_a_later_call_are_malformed_and_billed() -> None:
    class Ragged(Upstream):
        async def __call__(self, request: EmbeddingRequest, timeout: Timeout) -> EmbeddingResult:
            result = await super().__call__(request, timeout)
            if len(self.timeouts) == 2:
                result.vectors[:] = [[1.0, 2.0]] * len(result.vectors)
            return result

    with pytest.raises(errors.MalformedResponse, match="different lengths") as out:
        await embed(Ragged())
    assert out.value.usage == Usage(prompt_tokens=50) and not out.value.billed_unseen


@pytest.mark.parametrize("sent", [True, False])
async def test_a_later_call_timed_out_ran_out_of_the_requests_time_not_the_providers(sent: bool) -> None:
    """A later call waits with what the calls before left of the request timeout: its timeout is
    the request's, not the provider's (a diff review: recorded ``timeout``, it counted against
    the provider's health); billed at an unknown cost when the provider had the whole call."""
    timed_out = errors.UpstreamTimeout("google: request timed out", provider="google")
    timed_out.billed_unseen = sent
    with pytest.raises(errors.CallTimedOut) as out:
        await embed(Upstream(fail_at=1, failure=timed_out))
    assert (out.value.status, out.value.code, out.value.outcome) == (504, "request_timeout", "cancelled")
    assert "the request timeout (30s) ran out while it waited" in out.value.message
    assert out.value.billed_unseen is sent
    assert out.value.usage == (None if sent else Usage(prompt_tokens=20))
