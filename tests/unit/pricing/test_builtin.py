"""The built-in table: the seed's rates, exact, on every provider serving the family."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal

import pytest

from gateway.pricing.base import Rate
from gateway.pricing.book import CompositePriceBook
from gateway.pricing.builtin import BUILTIN_RATES, builtin_rate
from gateway.types import Usage

AT = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)

EXPECTED = {
    "gpt-4": ("0.03", "0.06"),
    "gpt-4-turbo": ("0.01", "0.03"),
    "gpt-4o": ("0.005", "0.015"),
    "claude-3-opus": ("0.015", "0.075"),
    "claude-3-sonnet": ("0.003", "0.015"),
    "claude-3-haiku": ("0.00025", "0.00125"),
    "gemini-pro": ("0.0005", "0.0015"),
}
#: snapshots whose vendor price is not their family's
SNAPSHOTS = {
    "gpt-4o-2024-08-06": ("0.0025", "0.01"),
    "gpt-4o-2024-11-20": ("0.0025", "0.01"),
    # the legacy completion models (OpenAI's price, on Azure too)
    "davinci-002": ("0.002", "0.002"),
    "babbage-002": ("0.0004", "0.0004"),
}


def test_table_holds_exactly_the_seed_rates() -> None:
    assert {k: (str(r.input), str(r.output)) for k, r in BUILTIN_RATES.items()} == EXPECTED | SNAPSHOTS
    for rate in BUILTIN_RATES.values():
        assert isinstance(rate.input, Decimal)
        assert isinstance(rate.output, Decimal)


@pytest.mark.parametrize(("family", "rates"), (EXPECTED | SNAPSHOTS).items())
def test_each_rate_prices_1k_prompt_and_1k_completion(family: str, rates: tuple[str, str]) -> None:
    book = CompositePriceBook()
    prompt_only = book.quote("openai", family, Usage(prompt_tokens=1000), AT)
    completion_only = book.quote("openai", family, Usage(completion_tokens=1000), AT)
    assert prompt_only.source == completion_only.source == "builtin"
    assert prompt_only.cost == Decimal(rates[0])
    assert completion_only.cost == Decimal(rates[1])
    assert isinstance(prompt_only.cost, Decimal)


def test_gpt4_1000_prompt_500_completion_is_six_cents() -> None:
    quote = CompositePriceBook().quote("openai", "gpt-4", Usage(prompt_tokens=1000, completion_tokens=500), AT)
    assert quote.cost == Decimal("0.06")
    assert isinstance(quote.cost, Decimal)


def test_claude_3_haiku_ten_prompt_tokens() -> None:
    quote = CompositePriceBook().quote("anthropic", "claude-3-haiku-20240307", Usage(prompt_tokens=10), AT)
    assert quote.cost == Decimal("0.0000025")
    assert str(quote.cost.normalize()) == "0.0000025"  # type: ignore[union-attr]


def test_no_float_rounding_on_odd_counts() -> None:
    quote = CompositePriceBook().quote("google", "gemini-pro", Usage(prompt_tokens=7, completion_tokens=3), AT)
    # 7 * 0.0005 / 1000 + 3 * 0.0015 / 1000
    assert quote.cost == Decimal("0.000008")
    usage = Usage(prompt_tokens=123_457, completion_tokens=98_765)
    quote = CompositePriceBook().quote("openai", "gpt-4o", usage, AT)
    assert quote.cost == Decimal("0.617285") + Decimal("1.481475")


@pytest.mark.parametrize("provider", ["openai", "azure", "anthropic", "google"])
def test_builtin_rates_apply_on_any_provider(provider: str) -> None:
    quote = CompositePriceBook().quote(provider, "gpt-4-0613", Usage(prompt_tokens=1000, completion_tokens=500), AT)
    assert (quote.source, quote.cost) == ("builtin", Decimal("0.06"))


@pytest.mark.parametrize(
    ("model", "family"),
    [
        ("gpt-4-turbo-2024-04-09", "gpt-4-turbo"),
        ("gpt-4-1106-preview", "gpt-4-turbo"),
        ("gpt-4o-2024-05-13", "gpt-4o"),
        ("claude-3-opus-20240229", "claude-3-opus"),
        ("models/gemini-1.0-pro-001", "gemini-pro"),
    ],
)
def test_snapshots_take_the_family_rate(model: str, family: str) -> None:
    assert builtin_rate(model) == BUILTIN_RATES[family]


@pytest.mark.parametrize("provider", ["openai", "azure"])
def test_the_gpt_4o_snapshots_served_since_august_2024_cost_what_openai_bills(provider: str) -> None:
    """OpenAI and Azure name ``gpt-4o-2024-08-06`` (what the ``gpt-4o`` alias points at) or
    ``-11-20`` as the served model: $2.50 / $10 per 1M, cached input $1.25. At the family's
    launch rate ($5 / $15) a review's call was billed 67% over."""
    usage = Usage(prompt_tokens=1000, completion_tokens=500, cached_tokens=400)
    for model in ("gpt-4o-2024-08-06", "gpt-4o-2024-11-20"):
        quote = CompositePriceBook().quote(provider, model, usage, AT)
        assert quote.cost == (600 * Decimal("0.0025") + 400 * Decimal("0.00125") + 500 * Decimal("0.01")) / 1000
    assert CompositePriceBook().quote(provider, "gpt-4o-2024-05-13", usage, AT).cost == Decimal("0.0115")


def test_builtin_has_no_cache_rate_so_cached_tokens_cost_the_input_rate() -> None:
    rate = BUILTIN_RATES["gpt-4"]
    assert rate == Rate(input=Decimal("0.03"), output=Decimal("0.06"))
    assert rate.cost(Usage(prompt_tokens=1000, cached_tokens=400)) == Decimal("0.03")


def test_gpt4o_cached_prompt_tokens_cost_half_the_input_rate() -> None:
    """The reviewer's case: 1,000 prompt tokens of which 800 read from OpenAI's cache, 100
    completion tokens: 200 x 0.005 + 800 x 0.0025 + 100 x 0.015, per 1K."""
    usage = Usage(prompt_tokens=1000, completion_tokens=100, cached_tokens=800)
    for provider in ("openai", "azure"):
        assert CompositePriceBook().quote(provider, "gpt-4o", usage, AT).cost == Decimal("0.0045")


def test_claude_cache_reads_cost_a_tenth_and_writes_five_quarters() -> None:
    """input 100 + cache write 1,000 + cache read 2,000 (prompt 3,100, OpenAI semantics), output
    50: 100 x 0.00025 + 1000 x 0.0003125 + 2000 x 0.000025 + 50 x 0.00125, per 1K."""
    usage = Usage(prompt_tokens=3100, completion_tokens=50, cached_tokens=2000, cache_creation_tokens=1000)
    quote = CompositePriceBook().quote("anthropic", "claude-3-haiku-20240307", usage, AT)
    assert quote.cost == Decimal("0.00045")  # (0.025 + 0.3125 + 0.05 + 0.0625) / 1000


def test_claude_writes_to_a_1h_cache_cost_twice_the_input_rate() -> None:
    """Anthropic bills a write to a cache that lives an hour at 2x the input rate, a 5-minute
    write at 1.25x. Of 1,000 writes, 600 for an hour; input 100, output 50 (claude-3-haiku:
    0.00025 / 0.00125 per 1K)."""
    usage = Usage(prompt_tokens=1100, completion_tokens=50, cache_creation_tokens=1000, cache_creation_1h_tokens=600)
    quote = CompositePriceBook().quote("anthropic", "claude-3-haiku-20240307", usage, AT)
    # (100 x 0.00025 + 400 x 0.0003125 + 600 x 0.0005 + 50 x 0.00125) / 1000
    assert quote.cost == Decimal("0.0005125")
    assert quote.price_version.startswith("builtin-4")
    # more 1-hour writes than writes: the writes bound them (as the writes are bound by the prompt)
    over = Usage(prompt_tokens=1100, completion_tokens=50, cache_creation_tokens=1000, cache_creation_1h_tokens=5000)
    assert CompositePriceBook().quote("anthropic", "claude-3-haiku", over, AT).cost == Decimal("0.0005875")


def test_families_without_a_prompt_cache_keep_the_input_rate() -> None:
    for family in ("gpt-4", "gpt-4-turbo", "gemini-pro"):
        rate = BUILTIN_RATES[family]
        assert rate.cached_input is None and rate.cache_write is None and rate.cache_write_1h is None


def test_the_legacy_completion_models_cost_the_same_on_azure_as_on_openai() -> None:
    """davinci-002 and babbage-002 were priced by the database on OpenAI only: an Azure call of
    either (a fallback) was unpriced (a review)."""
    from datetime import UTC, datetime
    from decimal import Decimal

    from gateway.pricing.book import CompositePriceBook
    from gateway.types import Usage

    book = CompositePriceBook()
    usage = Usage(prompt_tokens=1000, completion_tokens=500)
    for model, per_1k in (("davinci-002", Decimal("0.002")), ("babbage-002", Decimal("0.0004"))):
        for provider in ("openai", "azure"):
            quote = book.quote(provider, model, usage, datetime.now(UTC))
            assert quote.cost == per_1k * Decimal("1.5") and quote.source == "builtin"
    assert book.quote("openai", "ft:davinci-002:org::x1", usage, datetime.now(UTC)).cost is None
