"""The genai-prices fallback: the right provider, every token billed once, historic prices."""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from decimal import Decimal

import genai_prices
import pytest

from gateway.pricing import genai
from gateway.pricing.book import CompositePriceBook
from gateway.pricing.genai import genai_cost, to_genai_usage
from gateway.types import Usage

AT = datetime(2025, 9, 1, 12, 0, tzinfo=UTC)
M = Decimal(1_000_000)


def quote(provider: str, model: str, usage: Usage, at: datetime = AT) -> Decimal:
    q = CompositePriceBook().quote(provider, model, usage, at)
    assert q.source == "genai-prices", q
    assert isinstance(q.cost, Decimal)
    return q.cost


def test_gpt_4o_mini_is_not_gpt_4o_and_comes_from_the_database() -> None:
    # gpt-4o-mini: $0.15 / $0.60 per million tokens
    cost = quote("openai", "gpt-4o-mini", Usage(prompt_tokens=1000, completion_tokens=500))
    assert cost == (1000 * Decimal("0.15") + 500 * Decimal("0.60")) / M == Decimal("0.00045")


def test_gpt_35_turbo_from_the_database_on_openai_and_azure() -> None:
    usage = Usage(prompt_tokens=2000, completion_tokens=1000)
    expected = (2000 * Decimal("0.5") + 1000 * Decimal("1.5")) / M
    assert quote("openai", "gpt-3.5-turbo", usage) == expected == Decimal("0.0025")
    assert quote("azure", "gpt-35-turbo", usage) == expected


def test_matches_what_genai_prices_computes() -> None:
    usage = Usage(prompt_tokens=12_345, completion_tokens=678, cached_tokens=2_000)
    direct = genai_prices.calc_price(
        genai_prices.Usage(input_tokens=12_345, output_tokens=678, cache_read_tokens=2_000),
        "gpt-4o-mini",
        provider_id="openai",
        genai_request_timestamp=AT,
    ).total_price
    assert quote("openai", "gpt-4o-mini", usage) == direct


def test_cached_tokens_billed_once_at_the_cache_rate() -> None:
    # prompt_tokens includes the 800 cached tokens: 200 at $0.15/M, 800 at $0.075/M
    cost = quote("openai", "gpt-4o-mini", Usage(prompt_tokens=1000, completion_tokens=0, cached_tokens=800))
    assert cost == (200 * Decimal("0.15") + 800 * Decimal("0.075")) / M == Decimal("0.00009")


def test_anthropic_cache_reads_and_writes_billed_once_each() -> None:
    # claude-3-5-sonnet: input $3, output $15, cache read $0.30, cache write $3.75 per million
    usage = Usage(prompt_tokens=1000, completion_tokens=500, cached_tokens=200, cache_creation_tokens=100)
    expected = (700 * Decimal(3) + 200 * Decimal("0.3") + 100 * Decimal("3.75") + 500 * Decimal(15)) / M
    assert quote("anthropic", "claude-3-5-sonnet-20241022", usage) == expected == Decimal("0.010035")


def test_anthropic_1h_cache_writes_at_their_own_rate_the_rest_at_the_write_rate() -> None:
    # claude-sonnet-4: input $3, output $15, cache write $3.75, 1-hour cache write $6 per million
    usage = Usage(prompt_tokens=1000, completion_tokens=500, cache_creation_tokens=300, cache_creation_1h_tokens=200)
    expected = (700 * Decimal(3) + 100 * Decimal("3.75") + 200 * Decimal(6) + 500 * Decimal(15)) / M
    assert quote("anthropic", "claude-sonnet-4-20250514", usage) == expected
    # a model with no 1-hour rate bills those writes at its write rate (gpt-4o: the input rate)
    assert to_genai_usage(usage).cache_write_1h_tokens == 200


def test_reasoning_tokens_are_part_of_completion_not_extra() -> None:
    with_reasoning = quote("openai", "gpt-4o-mini", Usage(completion_tokens=1000, reasoning_tokens=800))
    without = quote("openai", "gpt-4o-mini", Usage(completion_tokens=1000))
    assert with_reasoning == without == 1000 * Decimal("0.6") / M


def test_historic_prices_follow_the_call_time() -> None:
    # o3 dropped from $10/$40 to $2/$8 per million on 2025-06-10
    usage = Usage(prompt_tokens=1_000_000, completion_tokens=1_000_000)
    assert quote("openai", "o3", usage, datetime(2025, 6, 9, 23, 0, tzinfo=UTC)) == Decimal(50)
    assert quote("openai", "o3", usage, datetime(2025, 6, 10, 1, 0, tzinfo=UTC)) == Decimal(10)


def test_gemini_names_and_provider() -> None:
    usage = Usage(prompt_tokens=1000, completion_tokens=1000)
    assert quote("google", "models/gemini-2.0-flash", usage) == quote("google", "gemini-2.0-flash", usage)


@pytest.mark.parametrize(
    ("provider", "model"),
    [("openai", "no-such-model"), ("anthropic", "claude-99"), ("mystery-provider", "gpt-4o-mini")],
)
def test_unknown_is_none(provider: str, model: str) -> None:
    assert genai_cost(provider, model, Usage(prompt_tokens=10), AT) is None


def test_usage_mapping_passes_totals_and_clamps_subsets() -> None:
    mapped = to_genai_usage(Usage(prompt_tokens=100, completion_tokens=50, cached_tokens=30, cache_creation_tokens=20))
    assert (
        mapped.input_tokens,
        mapped.cache_read_tokens,
        mapped.cache_write_tokens,
        mapped.output_tokens,
    ) == (
        100,
        30,
        20,
        50,
    )
    clamped = to_genai_usage(Usage(prompt_tokens=10, cached_tokens=8, cache_creation_tokens=8, reasoning_tokens=5))
    assert (clamped.input_tokens, clamped.cache_read_tokens, clamped.cache_write_tokens) == (
        10,
        8,
        2,
    )
    assert clamped.output_reasoning_tokens == 0


def test_a_price_genai_cannot_compute_is_unpriced_not_an_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    real = genai.calc_price

    def failing(usage: genai_prices.Usage, *args: object, **kwargs: object) -> object:
        if usage.__dict__.get("input_tokens"):
            raise ValueError("odd price structure")
        return real(usage, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(genai, "calc_price", failing)
    assert genai_cost("openai", "gpt-4o-mini", Usage(prompt_tokens=10), AT) is None
    q = CompositePriceBook().quote("openai", "gpt-4o-mini", Usage(prompt_tokens=10), AT)
    assert (q.cost, q.source) == (None, "unpriced")


def test_the_database_is_loaded_only_when_a_price_falls_back_to_it() -> None:
    """A built-in model is priced without importing genai-prices (~6 MB); a model only the
    database knows loads it and is priced from it. A fresh interpreter, as a gateway starts."""
    import subprocess
    import sys

    code = (
        "import sys\n"
        "from datetime import UTC, datetime\n"
        "from gateway.pricing.book import CompositePriceBook\n"
        "from gateway.types import Usage\n"
        "book, at = CompositePriceBook(), datetime(2025, 6, 1, tzinfo=UTC)\n"
        "q = book.quote('openai', 'gpt-4o', Usage(prompt_tokens=1000), at)\n"
        "from importlib.metadata import version\n"
        "current = book.version.endswith('genai-prices-' + version('genai-prices'))\n"
        "print(q.source, 'genai_prices' in sys.modules, current)\n"
        "q = book.quote('openai', 'o1-mini', Usage(prompt_tokens=1000), at)\n"
        "print(q.source, 'genai_prices' in sys.modules, q.cost is not None)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split("\n")
    assert out[0] == "builtin False True", out
    assert out[1].startswith("genai") and out[1].endswith("True True"), out


def test_an_entry_without_an_output_rate_is_unpriced_not_partly_free() -> None:
    """genai-prices' Azure davinci-002 entry has an input price only, and the library bills the
    output at 0: a call with completion tokens was recorded at half its price. Unpriced instead;
    a call that used only what the entry prices is still priced."""
    with_output = Usage(prompt_tokens=1000, completion_tokens=1000)
    assert genai_cost("azure", "davinci-002", with_output, AT) is None
    assert genai_cost("azure", "babbage-002", with_output, AT) is None
    # the book prices both by the built-in table since builtin-4, never by the partial entry
    q = CompositePriceBook().quote("azure", "davinci-002", with_output, AT)
    assert (q.cost, q.source) == (Decimal("0.004"), "builtin")
    assert genai_cost("azure", "davinci-002", Usage(prompt_tokens=1000), AT) == Decimal("0.002")
    assert genai_cost("openai", "davinci-002", with_output, AT) == Decimal("0.004")


def test_a_missing_rate_is_said_once_per_model_not_per_call(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two WARNINGs a call for every Gemini embedding call (a review): once is enough."""
    import logging

    from gateway.pricing import genai

    monkeypatch.setattr(genai, "_SAID_MISSING", set())
    caplog.set_level(logging.WARNING, logger="gateway.pricing.genai")
    with_output = Usage(prompt_tokens=10, completion_tokens=10)
    for _ in range(3):
        assert genai_cost("azure", "babbage-002", with_output, AT) is None
    said = [r.getMessage() for r in caplog.records if "babbage-002" in r.getMessage()]
    assert len(said) == 1


def test_the_probe_of_an_unseen_attempts_cost_says_nothing_of_missing_rates(caplog: pytest.LogCaptureFixture) -> None:
    """An embedding model has no output rate: the probe of what an attempt whose usage no one
    saw may cost (one token of every kind) logged "its calls that use such tokens are recorded
    unpriced" on the model's first such attempt, where no call uses any (a review)."""
    from gateway.pricing.base import EVERY_KIND_OF_TOKEN

    genai._SAID_MISSING.discard(("openai", "text-embedding-3-small", "output"))
    at = datetime.now(UTC)
    with caplog.at_level(logging.WARNING, logger="gateway.pricing.genai"):
        assert genai.genai_cost("openai", "text-embedding-3-small", EVERY_KIND_OF_TOKEN, at) is None
        assert not caplog.records
        assert genai.genai_cost("openai", "text-embedding-3-small", Usage(prompt_tokens=3), at) is not None
        assert not caplog.records
        assert (
            genai.genai_cost("openai", "text-embedding-3-small", Usage(prompt_tokens=3, completion_tokens=1), at)
            is None
        )
    assert ["no output price for 'openai'/'text-embedding-3-small'" in r.getMessage() for r in caplog.records] == [True]
