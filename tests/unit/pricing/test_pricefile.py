"""The operator price file: parsing exact decimals, history, precedence and clear errors."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Context, Decimal, localcontext
from pathlib import Path

import pytest

from gateway.errors import GatewayError
from gateway.pricing.base import Rate, format_usd
from gateway.pricing.pricefile import PriceFileError, load_price_file, parse_price_file, price_document
from gateway.types import Usage

AT = datetime(2026, 6, 1, tzinfo=UTC)


def write(tmp_path: Path, text: str, name: str = "prices.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_example_file(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
version: "2026-11-ops-1"
prices:
  - provider: openai
    model: my-finetune
    input_per_1k: "0.002"
    output_per_1k: "0.004"
    cached_input_per_1k: "0.001"
    effective_from: 2026-01-01T00:00:00Z
""",
    )
    prices = load_price_file(path)
    assert prices.label == "2026-11-ops-1"
    assert prices.rate("openai", "my-finetune", AT) == Rate(
        input=Decimal("0.002"), output=Decimal("0.004"), cached_input=Decimal("0.001")
    )
    assert prices.rate("openai", "my-finetune-2026-02-01", AT) == prices.rate("openai", "my-finetune", AT)
    assert prices.rate("azure", "my-finetune", AT) is None
    assert prices.rate("openai", "my-finetune", datetime(2025, 12, 31, 23, 59, tzinfo=UTC)) is None


def test_yaml_numbers_are_read_from_their_text_never_through_float(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
prices:
  - model: a
    input_per_1k: 0.1
    output_per_1k: 0.30000000000000000001
    cached_input_per_1k: 2
    cache_write_per_1k: 1_000.5
""",
    )
    rate = load_price_file(path).rate("openai", "a", AT)
    assert rate is not None
    assert rate.input == Decimal("0.1")
    assert rate.output == Decimal("0.30000000000000000001")  # a float would give 0.3
    assert rate.cached_input == Decimal(2)
    assert rate.cache_write == Decimal("1000.5")
    for value in (rate.input, rate.output, rate.cached_input, rate.cache_write):
        assert isinstance(value, Decimal)


def test_json_numbers_are_exact_too(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        '{"prices": [{"model": "a", "input_per_1k": 0.1, "output_per_1m": 3, "provider": "*"}]}',
        name="prices.json",
    )
    rate = load_price_file(path).rate("google", "a", AT)
    assert rate == Rate(input=Decimal("0.1"), output=Decimal("0.003"))


def test_python_floats_are_rejected() -> None:
    with pytest.raises(PriceFileError, match=r"prices\[0\] \(model 'a'\): input_per_1k: got the float 0.1"):
        parse_price_file({"prices": [{"model": "a", "input_per_1k": 0.1, "output_per_1k": "1"}]}, source="x")


def test_per_million_fields_convert_exactly() -> None:
    prices = parse_price_file(
        {
            "prices": [
                {
                    "model": "a",
                    "input_per_1m": "2.5",
                    "output_per_1m": 10,
                    "cached_input_per_1m": "1.25",
                }
            ]
        }
    )
    assert prices.rate("openai", "a", AT) == Rate(
        input=Decimal("0.0025"), output=Decimal("0.01"), cached_input=Decimal("0.00125")
    )


def test_effective_from_picks_the_latest_price_in_effect() -> None:
    prices = parse_price_file(
        {
            "prices": [
                {"model": "m", "input_per_1k": "1", "output_per_1k": "1"},
                {
                    "model": "m",
                    "input_per_1k": "2",
                    "output_per_1k": "2",
                    "effective_from": "2026-03-01",
                },
                {
                    "model": "m",
                    "input_per_1k": "3",
                    "output_per_1k": "3",
                    "effective_from": "2026-05-01T12:00:00+02:00",
                },
            ]
        }
    )

    def rate_at(text: str) -> Decimal:
        rate = prices.rate("openai", "m", datetime.fromisoformat(text))
        assert rate is not None
        return rate.input

    assert rate_at("2026-02-28T23:59:59+00:00") == 1
    assert rate_at("2026-03-01T00:00:00+00:00") == 2  # at the instant it starts
    assert rate_at("2026-05-01T09:59:59+00:00") == 2
    assert rate_at("2026-05-01T10:00:00+00:00") == 3  # 12:00+02:00


def test_history_without_a_base_falls_through_before_it_starts() -> None:
    prices = parse_price_file(
        {
            "prices": [
                {
                    "model": "m",
                    "input_per_1k": "2",
                    "output_per_1k": "2",
                    "effective_from": "2026-03-01",
                }
            ]
        }
    )
    assert prices.rate("openai", "m", datetime(2026, 2, 1, tzinfo=UTC)) is None


def test_exact_name_beats_family_and_provider_beats_wildcard() -> None:
    prices = parse_price_file(
        {
            "prices": [
                {"model": "gpt-4o", "input_per_1k": "1", "output_per_1k": "1"},
                {"model": "gpt-4o", "provider": "azure", "input_per_1k": "2", "output_per_1k": "2"},
                {
                    "model": "gpt-4o-2024-08-06",
                    "provider": "*",
                    "input_per_1k": "3",
                    "output_per_1k": "3",
                },
            ]
        }
    )

    def input_rate(provider: str, model: str) -> Decimal | None:
        rate = prices.rate(provider, model, AT)
        return None if rate is None else rate.input

    assert input_rate("openai", "gpt-4o") == 1
    assert input_rate("azure", "gpt-4o") == 2
    assert input_rate("azure", "gpt-4o-2024-05-13") == 2
    assert input_rate("azure", "gpt-4o-2024-08-06") == 3
    assert input_rate("openai", "gpt-4o-mini") is None


def test_aliases_apply_to_file_entries() -> None:
    prices = parse_price_file({"prices": [{"model": "gpt-4-turbo", "input_per_1k": "1", "output_per_1k": "2"}]})
    assert prices.rate("openai", "gpt-4-0125-preview", AT) is not None
    assert prices.rate("openai", "gpt-4", AT) is None


def test_model_and_provider_names_are_case_insensitive() -> None:
    prices = parse_price_file(
        {
            "prices": [
                {
                    "model": "My-Model",
                    "provider": "OpenAI",
                    "input_per_1k": "1",
                    "output_per_1k": "2",
                }
            ]
        }
    )
    assert prices.rate("openai", "my-model", AT) is not None


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            "prices: [{model: a, input_per_1k: .inf, output_per_1k: 1}]",
            r"prices\[0\] \(model 'a'\): input_per_1k: '.inf'",
        ),
        ("prices: [{model: a, input_per_1k: .nan, output_per_1k: 1}]", r"input_per_1k: '.nan'"),
        (
            "prices: [{model: a, input_per_1k: '-1', output_per_1k: 1}]",
            r"input_per_1k: '-1' must be a finite, non-negative",
        ),
        (
            "prices: [{model: a, input_per_1k: 0x10, output_per_1k: 1}]",
            r"'0x10' is not a decimal number",
        ),
        # Decimal's context overflowed on these (a traceback, a 500 from the replay endpoint), or
        # would write a billion digits
        ("prices: [{model: a, input_per_1k: '1e999999999', output_per_1k: 1}]", r"'1e999999999' is out of range"),
        ("prices: [{model: a, input_per_1m: '1e999999', output_per_1k: 1}]", r"input_per_1m: '1e999999' is out of"),
        ("prices: [{model: a, input_per_1k: '1e-999999999', output_per_1k: 1}]", r"at most 30 decimals"),
        ("prices: [{model: a, input_per_1k: '1000000000000000.5', output_per_1k: 1}]", r"at most 10\*\*15 USD"),
        (
            "prices: [{model: a, input_per_1k: abc, output_per_1k: 1}]",
            r"'abc' is not a decimal number",
        ),
        (
            "prices: [{model: a, input_per_1k: yes, output_per_1k: 1}]",
            r"input_per_1k: expected a decimal number",
        ),
        (
            "prices: [{model: a, output_per_1k: 1}]",
            r"prices\[0\] \(model 'a'\): input_per_1k \(or input_per_1m\) is required",
        ),
        ("prices: [{model: a, input_per_1k: 1, input_per_1m: 1, output_per_1k: 1}]", r"not both"),
        (
            "prices: [{model: a, input_per_1K: 1, output_per_1k: 1}]",
            r"unknown keys \['input_per_1K'\]",
        ),
        ("prices: [{input_per_1k: 1, output_per_1k: 1}]", r"prices\[0\]: 'model' is required"),
        (
            "prices: [{model: a, provider: [x], input_per_1k: 1, output_per_1k: 1}]",
            r"'provider' must be",
        ),
        (
            "prices: [{model: a, provider: ' ', input_per_1k: 1, output_per_1k: 1}]",
            r"'provider' must be",
        ),
        (
            "prices: [{model: a, input_per_1k: 1, output_per_1k: 1, effective_from: '2026-01-01T00:00:00'}]",
            r"effective_from: '2026-01-01T00:00:00' has no timezone",
        ),
        (
            "prices: [{model: a, input_per_1k: 1, output_per_1k: 1, effective_from: 2026-01-01 10:00:00}]",
            r"has no timezone",
        ),
        (
            "prices: [{model: a, input_per_1k: 1, output_per_1k: 1, effective_from: soon}]",
            r"'soon' is not an ISO 8601",
        ),
        (
            "prices: [{model: a, input_per_1k: 1, output_per_1k: 1, effective_from: 20260101}]",
            r"expected an ISO 8601 date or date-time, got a number",
        ),
        (
            "prices:\n - {model: a, input_per_1k: 1, output_per_1k: 1}\n"
            " - {model: b, input_per_1k: 1, output_per_1k: 1}\n"
            " - {model: A, provider: '*', input_per_1k: 2, output_per_1k: 2}",
            r"prices\[2\] \(model 'a'\) repeats prices\[0\]",
        ),
        ("prices: {model: a}", r"'prices' must be a list of entries, got a dict"),
        ("- a\n- b", r"expected a mapping with a 'prices' list, got a list"),
        ("", r"got nothing"),
        ("prices: []\nextra: 1", r"unknown top-level keys \['extra'\]"),
        ("version: 'has space'\nprices: []", r"version 'has space' must be"),
        ("prices: [oops", r"not valid YAML"),
        ("prices: [a]", r"prices\[0\]: expected a mapping, got a str"),
        # the gateway's provider is "google": an entry for "gemini" was never applied (a review)
        (
            "prices: [{provider: gemini, model: gemini-1.5-pro, input_per_1k: '0.1', output_per_1k: '0.1'}]",
            r"unknown provider 'gemini'; one of openai, azure, anthropic, google, ollama or '\*'",
        ),
    ],
)
def test_bad_files_name_the_file_and_the_entry(tmp_path: Path, text: str, message: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(PriceFileError, match=message) as info:
        load_price_file(path)
    assert str(info.value).startswith(f"{path}: ")
    assert isinstance(info.value, GatewayError)


def test_bad_json_and_json_constants(tmp_path: Path) -> None:
    with pytest.raises(PriceFileError, match="not valid JSON"):
        load_price_file(write(tmp_path, "{", name="p.json"))
    with pytest.raises(PriceFileError, match="NaN is not a price"):
        load_price_file(write(tmp_path, '{"prices": [{"model": "a", "input_per_1k": NaN}]}', name="p.json"))
    # a key given twice: the last one was the price, silently (as a YAML file's is refused)
    twice = '{"prices": [{"model": "a", "input_per_1k": "0.002", "output_per_1k": "1", "input_per_1k": "9"}]}'
    with pytest.raises(PriceFileError, match="not valid JSON: the key 'input_per_1k' is given twice"):
        load_price_file(write(tmp_path, twice, name="p.json"))


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(PriceFileError, match=r"nope\.yaml: cannot read the price file"):
        load_price_file(tmp_path / "nope.yaml")


def test_digest_ignores_formatting_and_units_but_not_prices(tmp_path: Path) -> None:
    a = load_price_file(write(tmp_path, "prices: [{model: a, input_per_1k: '0.002', output_per_1k: 1}]", "a.yaml"))
    b = load_price_file(
        write(
            tmp_path,
            "# comment\nprices:\n  - output_per_1k: 1.000\n    input_per_1m: 2\n    model: A\n",
            "b.yaml",
        )
    )
    c = load_price_file(write(tmp_path, "prices: [{model: a, input_per_1k: '0.003', output_per_1k: 1}]", "c.yaml"))
    assert a.digest == b.digest
    assert a.digest != c.digest
    assert a.version == f"file-{a.digest[:12]}"


PRE_1H_FILE = """
version: "ops-7"
prices:
  - provider: anthropic
    model: claude-x
    input_per_1k: "0.003"
    output_per_1k: "0.015"
    cached_input_per_1k: "0.0003"
    cache_write_per_1k: "0.00375"
"""


def test_a_file_written_before_the_1h_rate_keeps_its_version(tmp_path: Path) -> None:
    """The version names the prices every stored call was costed with: had adding a rate
    changed the version of files that do not give it, a replay would have re-stamped every call
    (the digest below is what the gateway computed before ``cache_write_1h`` existed)."""
    prices = load_price_file(write(tmp_path, PRE_1H_FILE))
    assert prices.digest == "d41151110286bdea0bdcf96ff77435633ac3240d57b2550304f222e51c7cd998"
    with_1h = load_price_file(write(tmp_path, PRE_1H_FILE + '    cache_write_1h_per_1k: "0.006"\n', "b.yaml"))
    assert with_1h.digest != prices.digest


def test_the_1h_cache_write_rate_prices_those_writes_and_defaults_to_the_write_rate(tmp_path: Path) -> None:
    plain = load_price_file(write(tmp_path, PRE_1H_FILE)).rate("anthropic", "claude-x", AT)
    given = load_price_file(write(tmp_path, PRE_1H_FILE + "    cache_write_1h_per_1m: 6\n", "b.yaml")).rate(
        "anthropic", "claude-x", AT
    )
    assert plain is not None and given is not None
    assert given.cache_write_1h == Decimal("0.006") and plain.cache_write_1h is None
    # 100 plain + 1,000 read + 300 written for 5 minutes + 200 for an hour; 10 out
    usage = Usage(
        prompt_tokens=1600, completion_tokens=10, cached_tokens=1000, cache_creation_tokens=500,
        cache_creation_1h_tokens=200,
    )  # fmt: skip
    base = 100 * Decimal("0.003") + 1000 * Decimal("0.0003") + 300 * Decimal("0.00375") + 10 * Decimal("0.015")
    assert given.cost(usage) == (base + 200 * Decimal("0.006")) / 1000
    assert plain.cost(usage) == (base + 200 * Decimal("0.00375")) / 1000  # no 1h rate: the write rate
    # and the document a replay writes reads back to the same rate
    doc = price_document(load_price_file(write(tmp_path, PRE_1H_FILE + "    cache_write_1h_per_1m: 6\n", "c.yaml")))
    assert doc["prices"][0]["cache_write_1h_per_1k"] == "0.006"


def test_a_negative_zero_rate_is_zero() -> None:
    """``-0`` loaded as is: the header and the cost line said -0.000000, the stores 0."""
    prices = parse_price_file({"prices": [{"model": "m", "input_per_1k": "-0", "output_per_1m": "-0.0"}]}, source="x")
    cost = prices.entries[0].rate.cost(Usage(prompt_tokens=10, completion_tokens=5))
    assert cost == 0 and not cost.is_signed()
    assert format_usd(cost) == "0.000000"


def test_long_rates_are_kept_and_costed_exactly_and_travel_to_a_replay() -> None:
    """Decimal's default context has 28 digits: a rate per 1M with 30 decimals lost digits on the
    way to per 1K, and long products were rounded. And ``replay --price-file`` refused such a
    file a running gateway had taken: its document carried the rate per 1K, 3 decimals more than
    the limit (a review)."""
    long_in, long_out = "0.123456789012345678901234567891", "98765432109876.123456789012345678901234567891"
    doc = {"prices": [{"model": "m", "input_per_1m": long_in, "output_per_1k": long_out}]}
    prices = parse_price_file(doc, source="x")
    rate = prices.entries[0].rate
    assert str(rate.input) == "0.000123456789012345678901234567891"  # per 1K: every digit
    usage = Usage(prompt_tokens=999_999_937, completion_tokens=3)
    with localcontext(Context(prec=200)):  # the reference: far wider than any operand
        expected = (999_999_937 * Decimal(long_in) / 1000 + 3 * Decimal(long_out)) / 1000
    assert rate.cost(usage) == expected
    assert expected != (999_999_937 * Decimal(long_in) / 1000 + 3 * Decimal(long_out)) / 1000  # 28 digits
    again = parse_price_file(price_document(prices), source="the document")
    assert again.entries == prices.entries and again.digest == prices.digest
