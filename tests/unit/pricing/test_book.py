"""The composite price book: lookup order, free vs unpriced, and the recorded price version."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import genai_prices
import pytest

from gateway.pricing.base import PriceBook, Quote
from gateway.pricing.book import CompositePriceBook, load_price_book
from gateway.pricing.pricefile import PriceFileError, parse_price_file
from gateway.types import Usage

AT = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)
USAGE = Usage(prompt_tokens=1000, completion_tokens=500)

FILE = """
version: ops-1
prices:
  - model: gpt-4                # overrides the built-in 0.03/0.06
    input_per_1k: "0.02"
    output_per_1k: "0.04"
  - provider: openai
    model: gpt-4o-mini          # overrides genai-prices
    input_per_1m: "1"
    output_per_1m: "2"
  - provider: ollama
    model: llama3
    input_per_1k: "0.0001"
    output_per_1k: "0.0002"
  - model: my-finetune
    input_per_1k: "0.002"
    output_per_1k: "0.004"
    cached_input_per_1k: "0.001"
"""


@pytest.fixture
def price_file(tmp_path: Path) -> Path:
    path = tmp_path / "prices.yaml"
    path.write_text(FILE)
    return path


def test_is_a_price_book() -> None:
    book: PriceBook = CompositePriceBook()
    assert isinstance(book.quote("openai", "gpt-4", USAGE, AT), Quote)


def test_version_without_file() -> None:
    book = load_price_book(None)
    assert book.version == f"builtin-4+genai-prices-{genai_prices.__version__}"
    assert book.quote("openai", "gpt-4", USAGE, AT).price_version == book.version


def test_lookup_order(price_file: Path) -> None:
    book = load_price_book(price_file)

    def q(provider: str, model: str) -> tuple[str, Decimal | None]:
        quote = book.quote(provider, model, USAGE, AT)
        assert quote.price_version == book.version
        return quote.source, quote.cost

    assert q("openai", "gpt-4") == ("file", Decimal("0.04"))  # file beats built-in
    assert q("azure", "gpt-4-0613") == (
        "file",
        Decimal("0.04"),
    )  # snapshots resolve in the file too
    assert q("openai", "gpt-4o-mini") == ("file", Decimal("0.002"))  # file beats genai-prices
    assert q("azure", "gpt-4o-mini") == (
        "genai-prices",
        Decimal("0.00045"),
    )  # file entry is openai-only
    assert q("openai", "gpt-4-turbo") == (
        "builtin",
        Decimal("0.025"),
    )  # built-in beats genai-prices
    assert q("openai", "gpt-3.5-turbo") == ("genai-prices", Decimal("0.00125"))
    assert q("ollama", "llama3") == ("file", Decimal("0.0002"))  # the file prices local models
    # under Ollama's own name too (it was free: the ":latest" tag was not the model; a review)
    assert q("ollama", "llama3:latest") == ("file", Decimal("0.0002"))
    assert q("ollama", "llama3:70b") == ("free", Decimal(0))  # another size: not that entry's
    assert q("ollama", "mistral") == ("free", Decimal(0))
    assert q("openai", "no-such-model") == ("unpriced", None)


def test_ollama_is_free_by_default_even_under_an_openai_name() -> None:
    book = CompositePriceBook()
    for model in ("llama3", "llama3:8b", "gpt-4", "qwen2.5:0.5b"):
        quote = book.quote("ollama", model, USAGE, AT)
        assert (quote.source, quote.cost) == ("free", Decimal(0))
        assert isinstance(quote.cost, Decimal)


def test_unknown_model_is_unpriced_never_free() -> None:
    book = CompositePriceBook()
    for provider in ("openai", "azure", "anthropic", "google", "some-new-provider"):
        quote = book.quote(provider, "definitely-not-a-model-7", USAGE, AT)
        assert quote.cost is None
        assert quote.source == "unpriced"


def test_cached_tokens_from_file_rates_are_billed_once(price_file: Path) -> None:
    book = load_price_book(price_file)
    usage = Usage(prompt_tokens=1000, completion_tokens=100, cached_tokens=600)
    quote = book.quote("anthropic", "my-finetune", usage, AT)
    # 400 at 0.002/1K + 600 at 0.001/1K + 100 at 0.004/1K
    assert quote.cost == Decimal("0.0008") + Decimal("0.0006") + Decimal("0.0004") == Decimal("0.0018")


def test_an_entry_for_the_name_called_beats_one_for_the_served_snapshots_family() -> None:
    """Azure serves ``prod-gpt4o`` (the operator's deployment) and says ``gpt-4o-2024-11-20``:
    the file's entry for the deployment prices it, not its general ``gpt-4o`` entry, which the
    snapshot's family matched first (a review: 4.6x). A name's own entry still goes first in
    the gateway's order, and a family entry is found when no name has its own."""
    book = CompositePriceBook(
        parse_price_file(
            {
                "prices": [
                    {"model": "gpt-4o", "input_per_1k": "0.0025", "output_per_1k": "0.01"},
                    {"provider": "azure", "model": "prod-gpt4o", "input_per_1k": "0.001", "output_per_1k": "0.002"},
                    {"model": "gpt-4o-2024-08-06", "input_per_1k": "0.003", "output_per_1k": "0.012"},
                ]
            }
        )
    )
    deployment = book.quote_first("azure", ["gpt-4o-2024-11-20", "prod-gpt4o"], USAGE, AT)
    assert (deployment.source, deployment.cost) == ("file", Decimal("0.002"))
    snapshot = book.quote_first("azure", ["gpt-4o-2024-08-06", "prod-gpt4o"], USAGE, AT)
    assert snapshot.cost == Decimal("0.009")  # the served snapshot's own entry, first in order
    family = book.quote_first("openai", ["gpt-4o-2024-11-20", "gpt-4o-custom-deploy"], USAGE, AT)
    assert family.cost == Decimal("0.0075")  # no name has its own: the served model's family


def test_effective_from_corrects_history(tmp_path: Path) -> None:
    path = tmp_path / "p.yaml"
    path.write_text(
        "prices:\n  - model: gpt-4\n    input_per_1k: '0.01'\n    output_per_1k: '0.01'\n"
        "    effective_from: 2026-05-01T00:00:00Z\n"
    )
    book = load_price_book(path)
    before = book.quote("openai", "gpt-4", USAGE, datetime(2026, 4, 30, 23, 59, 59, tzinfo=UTC))
    after = book.quote("openai", "gpt-4", USAGE, datetime(2026, 5, 1, tzinfo=UTC))
    assert (before.source, before.cost) == ("builtin", Decimal("0.06"))
    assert (after.source, after.cost) == ("file", Decimal("0.015"))


def test_version_names_the_file_and_changes_with_its_prices(tmp_path: Path, price_file: Path) -> None:
    book = load_price_book(price_file)
    assert book.version.startswith(f"builtin-4+genai-prices-{genai_prices.__version__}+file-ops-1-")
    assert load_price_book(price_file).version == book.version  # stable

    reformatted = tmp_path / "reformatted.yaml"
    reformatted.write_text("# same prices, other layout\n" + FILE.replace('"0.02"', "0.020"))
    assert load_price_book(reformatted).version == book.version

    changed = tmp_path / "changed.yaml"
    changed.write_text(FILE.replace('"0.02"', '"0.021"'))
    assert load_price_book(changed).version != book.version

    relabelled = tmp_path / "relabelled.yaml"
    relabelled.write_text(FILE.replace("version: ops-1", "version: ops-2"))
    assert load_price_book(relabelled).version != book.version


def test_book_from_parsed_file() -> None:
    prices = parse_price_file({"prices": [{"model": "x", "input_per_1k": "1", "output_per_1k": "1"}]})
    book = CompositePriceBook(file_prices=prices)
    assert book.version.endswith(f"+file-{prices.digest[:12]}")
    assert book.quote("openai", "x", USAGE, AT).cost == Decimal("1.5")


def test_bad_file_fails_loading(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("prices: [{model: a, input_per_1k: 1}]")
    with pytest.raises(PriceFileError, match=r"bad\.yaml: prices\[0\] \(model 'a'\): output_per_1k"):
        load_price_book(path)


def test_naive_time_is_refused() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        CompositePriceBook().quote("openai", "gpt-4", USAGE, datetime(2026, 1, 1))  # noqa: DTZ001


def test_costs_are_decimal_everywhere(price_file: Path) -> None:
    book = load_price_book(price_file)
    cases = [
        ("openai", "gpt-4"),
        ("openai", "gpt-4o"),
        ("anthropic", "claude-3-haiku-20240307"),
        ("google", "gemini-pro"),
        ("openai", "gpt-4o-mini"),
        ("azure", "gpt-35-turbo"),
        ("anthropic", "claude-3-5-haiku-20241022"),
        ("google", "gemini-1.5-flash"),
        ("ollama", "llama3"),
        ("ollama", "phi3"),
        ("openai", "my-finetune"),
    ]
    usage = Usage(prompt_tokens=3333, completion_tokens=777, cached_tokens=1111, reasoning_tokens=10)
    for provider, model in cases:
        quote = book.quote(provider, model, usage, AT)
        assert isinstance(quote.cost, Decimal), (provider, model, quote)
        assert quote.cost >= 0
        assert quote.cost.is_finite()


def test_zero_usage_costs_zero() -> None:
    book = CompositePriceBook()
    for provider, model in (("openai", "gpt-4"), ("openai", "gpt-4o-mini")):
        assert book.quote(provider, model, Usage(), AT).cost == 0
