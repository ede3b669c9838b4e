"""The operator's price file (YAML or JSON): prices over the built-in table and the database.

::

    version: "2026-11-ops-1"          # optional label, part of the price version
    prices:
      - provider: openai              # optional; "*" or absent = any provider
        model: my-finetune            # exact name or family; dated snapshots resolve to it
        input_per_1k: "0.002"         # or input_per_1m: "2"
        output_per_1k: "0.004"        # or output_per_1m
        cached_input_per_1k: "0.001"  # optional (cache reads); default: the input rate
        cache_write_per_1k: "0.0025"  # optional (cache writes); default: the input rate
        cache_write_1h_per_1k: "0.004" # optional (writes to a 1-hour cache); default: cache_write
        effective_from: 2026-01-01T00:00:00Z   # optional: applies to calls at/after this instant

Money is never a float. Prices may be written as strings or as plain numbers; numbers are read from
their source text (``0.1`` is exactly ``Decimal("0.1")``), never through a binary float. JSON files
are parsed the same way. Non-finite, negative, hexadecimal/octal/sexagesimal numbers and booleans
are rejected. A date without a time means 00:00 UTC; a time must carry a timezone.

Lookup: the most specific model name first (``gpt-4o-2024-08-06`` before ``gpt-4o``); for that name,
a provider-specific entry before a ``*`` entry; among those, the latest ``effective_from`` not after
the call. A name with no entry in effect at the call's time falls through to its family, then to
the built-in table and the database.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any

import yaml

from gateway import strict_json
from gateway.errors import GatewayError
from gateway.pricing.base import EXACT, Rate
from gateway.pricing.models import model_candidates, normalize_model
from gateway.routing.catalog import KNOWN_PROVIDERS
from gateway.strict_yaml import StrictLoader

#: the largest rate a price file may give (per 1K or per 1M tokens), and its most decimals: far
#: beyond any real price (a slip such as a per-token price entered per million still loads, and
#: its calls are recorded unpriced: see ``quote_models``), within Decimal's arithmetic
MAX_RATE = Decimal(10) ** 15
MAX_RATE_DECIMALS = 30
_LABEL = re.compile(r"^[A-Za-z0-9._-]{1,64}$")
_TOP_KEYS = frozenset({"version", "prices"})
#: the rates of an entry, each the name of a :class:`Rate` field (``<name>_per_1k``/``_per_1m``)
_RATE_FIELDS = ("input", "output", "cached_input", "cache_write", "cache_write_1h")
#: rates added later: in the canonical content only when given, so that the version of a file
#: written before them stays what it was (a changed version re-stamps every call on replay)
_LATER_RATES = frozenset({"cache_write_1h"})
_ENTRY_KEYS = frozenset(
    {"provider", "model", "effective_from"} | {f"{name}_per_{unit}" for name in _RATE_FIELDS for unit in ("1k", "1m")}
)


class PriceFileError(GatewayError):
    """The price file cannot be read or is invalid. The message names the file and the entry."""


@dataclass(frozen=True, slots=True)
class PriceEntry:
    model: str
    rate: Rate
    #: None: any provider
    provider: str | None = None
    #: None: since always
    effective_from: datetime | None = None

    def canonical(self) -> dict[str, str | None]:
        return {
            "provider": self.provider,
            "model": self.model,
            "effective_from": self.effective_from.isoformat() if self.effective_from else None,
            **{
                name: _canonical_decimal(getattr(self.rate, name))
                for name in _RATE_FIELDS
                if name not in _LATER_RATES or getattr(self.rate, name) is not None
            },
        }


@dataclass(frozen=True)
class PriceFile:
    entries: tuple[PriceEntry, ...]
    label: str | None = None
    source: str = "<price file>"
    #: model name -> provider (None = any) -> entries, latest effective_from first
    _index: dict[str, dict[str | None, tuple[PriceEntry, ...]]] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        index: dict[str, dict[str | None, list[PriceEntry]]] = {}
        for entry in self.entries:
            index.setdefault(entry.model, {}).setdefault(entry.provider, []).append(entry)
        frozen = {
            model: {
                provider: tuple(sorted(entries, key=_effective_key, reverse=True)) for provider, entries in by.items()
            }
            for model, by in index.items()
        }
        object.__setattr__(self, "_index", frozen)

    @property
    def digest(self) -> str:
        """sha256 of the canonical content: formatting, comments, order and units do not count."""
        body = {
            "version": self.label,
            "prices": sorted((e.canonical() for e in self.entries), key=_sort_key),
        }
        return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()).hexdigest()

    @property
    def version(self) -> str:
        short = self.digest[:12]
        return f"file-{self.label}-{short}" if self.label else f"file-{short}"

    def rate(self, provider: str, model: str, at: datetime) -> Rate | None:
        """The rate the file sets for this call, or None when it sets none."""
        return self.rate_first(provider, (model,), at)

    def rate_first(self, provider: str, models: Sequence[str], at: datetime) -> Rate | None:
        """The rate the file sets for a call of the first of ``models`` it prices by that very
        name, else by a name it stands for (a snapshot's family: ``gpt-4o-2024-11-20`` ->
        ``gpt-4o``), in ``models``' order each time. So an entry for the deployment the gateway
        called (``prod-gpt4o``) beats one for the family of the snapshot Azure says served it: a
        review found the file's general ``gpt-4o`` priced a call of the operator's ``prod-gpt4o``
        entry (4.6x)."""
        provider = provider.lower()
        chains = [model_candidates(model) for model in models]
        for names in [chain[:1] for chain in chains] + [chain[1:] for chain in chains]:
            for name in names:
                by_provider = self._index.get(name)
                if by_provider is None:
                    continue
                for key in (provider, None):
                    for entry in by_provider.get(key, ()):
                        if entry.effective_from is None or entry.effective_from <= at:
                            return entry.rate
        return None


def load_price_file(path: Path) -> PriceFile:
    """Read and validate a price file (``.json`` as JSON, anything else as YAML)."""
    source = str(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise PriceFileError(f"{source}: cannot read the price file: {e}") from e
    try:
        if path.suffix.lower() == ".json":
            data = strict_json.loads(
                text,
                parse_float=_NumberText,
                parse_int=_NumberText,
                parse_constant=_reject_constant,
            )
        else:
            data = yaml.load(text, Loader=_PriceFileLoader)  # a SafeLoader subclass
    except (ValueError, yaml.YAMLError) as e:
        raise PriceFileError(f"{source}: not valid {'JSON' if path.suffix.lower() == '.json' else 'YAML'}: {e}") from e
    return parse_price_file(data, source=source)


def parse_price_file(data: object, *, source: str = "<price file>") -> PriceFile:
    """Validate already-parsed content (numbers as strings, ints or Decimals; never floats)."""
    if not isinstance(data, Mapping):
        raise PriceFileError(f"{source}: expected a mapping with a 'prices' list, got {_kind(data)}")
    unknown = set(data) - _TOP_KEYS
    if unknown:
        raise PriceFileError(
            f"{source}: unknown top-level keys {sorted(map(str, unknown))}; expected {sorted(_TOP_KEYS)}"
        )
    label = data.get("version")
    if label is not None:
        label = str(label)
        if not _LABEL.match(label):
            raise PriceFileError(
                f"{source}: version {label!r} must be 1-64 characters of letters, digits, '.', '_', '-'"
            )
    raw_prices = data.get("prices")
    if not isinstance(raw_prices, list):
        raise PriceFileError(f"{source}: 'prices' must be a list of entries, got {_kind(raw_prices)}")
    entries = tuple(_parse_entry(raw, where=f"{source}: prices[{i}]") for i, raw in enumerate(raw_prices))
    seen: dict[tuple[str | None, str, datetime | None], int] = {}
    for i, entry in enumerate(entries):
        key = (entry.provider, entry.model, entry.effective_from)
        if key in seen:
            raise PriceFileError(
                f"{source}: prices[{i}] (model {entry.model!r}) repeats prices[{seen[key]}] "
                "(same provider, model and effective_from)"
            )
        seen[key] = i
    return PriceFile(entries=entries, label=label, source=source)


# --- parsing ------------------------------------------------------------------------------------


class _NumberText(str):
    """A number as written in the file: parsed to Decimal from this text, never via float."""

    __slots__ = ()


class _PriceFileLoader(StrictLoader):
    """SafeLoader that keeps YAML numbers as their source text and refuses a key given twice."""


def _number_text(loader: yaml.SafeLoader, node: yaml.Node) -> _NumberText:
    return _NumberText(loader.construct_scalar(node))


_PriceFileLoader.add_constructor("tag:yaml.org,2002:float", _number_text)
_PriceFileLoader.add_constructor("tag:yaml.org,2002:int", _number_text)


def _reject_constant(name: str) -> object:
    raise ValueError(f"{name} is not a price")


def _parse_entry(raw: object, *, where: str) -> PriceEntry:
    if not isinstance(raw, Mapping):
        raise PriceFileError(f"{where}: expected a mapping, got {_kind(raw)}")
    model_raw = raw.get("model")
    if not isinstance(model_raw, str) or not model_raw.strip():
        raise PriceFileError(f"{where}: 'model' is required and must be a non-empty string")
    model = normalize_model(model_raw)
    where = f"{where} (model {model_raw!r})"
    unknown = set(raw) - _ENTRY_KEYS
    if unknown:
        raise PriceFileError(f"{where}: unknown keys {sorted(map(str, unknown))}; allowed: {sorted(_ENTRY_KEYS)}")

    provider_raw = raw.get("provider")
    if provider_raw is not None and (not isinstance(provider_raw, str) or not provider_raw.strip()):
        raise PriceFileError(f"{where}: 'provider' must be a provider name or '*'")
    provider = None if provider_raw is None or provider_raw.strip() == "*" else provider_raw.strip().lower()
    if provider is not None and provider not in KNOWN_PROVIDERS:
        # an entry for "gemini" (the gateway's provider is "google") loaded and never applied:
        # its calls were billed from the database at another rate (a review)
        raise PriceFileError(f"{where}: unknown provider {provider_raw!r}; one of {', '.join(KNOWN_PROVIDERS)} or '*'")

    rate = _parse_rate(raw, where=where)
    effective = raw.get("effective_from")
    return PriceEntry(
        model=model,
        rate=rate,
        provider=provider,
        effective_from=None if effective is None else _instant(effective, where=f"{where}: effective_from"),
    )


def _parse_rate(raw: Mapping[str, Any], *, where: str) -> Rate:
    rates: dict[str, Decimal | None] = {}
    for name in _RATE_FIELDS:
        per_1k, per_1m = raw.get(f"{name}_per_1k"), raw.get(f"{name}_per_1m")
        if per_1k is not None and per_1m is not None:
            raise PriceFileError(f"{where}: give {name}_per_1k or {name}_per_1m, not both")
        if per_1k is not None:
            rates[name] = _money(per_1k, where=f"{where}: {name}_per_1k")
        elif per_1m is not None:
            rates[name] = _money(per_1m, where=f"{where}: {name}_per_1m").scaleb(-3, EXACT)  # per 1K, exactly
        else:
            rates[name] = None
    input_rate, output_rate = rates["input"], rates["output"]
    if input_rate is None:
        raise PriceFileError(f"{where}: input_per_1k (or input_per_1m) is required")
    if output_rate is None:
        raise PriceFileError(f"{where}: output_per_1k (or output_per_1m) is required")
    return Rate(
        input=input_rate,
        output=output_rate,
        cached_input=rates["cached_input"],
        cache_write=rates["cache_write"],
        cache_write_1h=rates["cache_write_1h"],
    )


def _money(value: Any, *, where: str) -> Decimal:
    if isinstance(value, float):
        raise PriceFileError(
            f"{where}: got the float {value!r}; money is never a float: write the price as a string or Decimal"
        )
    if isinstance(value, bool) or not isinstance(value, str | int | Decimal):
        raise PriceFileError(f'{where}: expected a decimal number (e.g. "0.002"), got {_kind(value)}')
    if isinstance(value, Decimal):
        amount = value
    else:
        try:
            amount = Decimal(str(value).strip())
        except InvalidOperation as e:
            raise PriceFileError(f"{where}: {str(value)!r} is not a decimal number") from e
    if not amount.is_finite() or amount < 0:
        raise PriceFileError(f"{where}: {str(value)!r} must be a finite, non-negative amount of USD")
    if amount.is_zero():
        amount = abs(amount)  # "-0": the header and the log said -0.000000 where the stores said 0
    # within what the arithmetic and the stores can carry: "1e999999999" overflowed Decimal's
    # context (a traceback, a 500 from the replay endpoint), "1e-999999999" is a billion digits
    if amount > MAX_RATE or (amount and _decimals(amount) > MAX_RATE_DECIMALS):
        raise PriceFileError(
            f"{where}: {str(value)[:40]!r} is out of range: at most 10**15 USD, with at most "
            f"{MAX_RATE_DECIMALS} decimals"
        )
    return amount


def _decimals(amount: Decimal) -> int:
    """How many decimals ``amount`` is written with (finite amounts only)."""
    exponent = amount.as_tuple().exponent
    assert isinstance(exponent, int)
    return -exponent


def _instant(value: object, *, where: str) -> datetime:
    if isinstance(value, str) and not isinstance(value, _NumberText):
        text = value.strip()
        try:
            value = date.fromisoformat(text)
        except ValueError:
            try:
                value = datetime.fromisoformat(text)
            except ValueError as e:
                raise PriceFileError(f"{where}: {text!r} is not an ISO 8601 date or date-time") from e
    if isinstance(value, datetime):
        if value.tzinfo is None or value.utcoffset() is None:
            raise PriceFileError(f"{where}: {value.isoformat()!r} has no timezone; add 'Z' or an offset")
        return value.astimezone(UTC)
    if isinstance(value, date):
        return datetime.combine(value, time(0, 0), tzinfo=UTC)
    raise PriceFileError(f"{where}: expected an ISO 8601 date or date-time, got {_kind(value)}")


def _effective_key(entry: PriceEntry) -> datetime:
    return entry.effective_from or datetime.min.replace(tzinfo=UTC)


def _sort_key(canonical: dict[str, str | None]) -> tuple[str, ...]:
    return tuple(canonical[k] or "" for k in ("model", "provider", "effective_from"))


def _canonical_decimal(value: Decimal | None) -> str | None:
    return None if value is None else format(value.normalize(EXACT), "f")


def _kind(value: object) -> str:
    if value is None:
        return "nothing"
    return "a number" if isinstance(value, _NumberText) else f"a {type(value).__name__}"


def price_document(prices: PriceFile) -> dict[str, Any]:
    """A price file as a JSON document that :func:`parse_price_file` reads back to the same
    entries, label and version (rates as exact decimal text per 1K tokens)."""
    entries = []
    for entry in prices.entries:
        item: dict[str, Any] = {"model": entry.model, "provider": entry.provider or "*"}
        if entry.effective_from is not None:
            item["effective_from"] = entry.effective_from.isoformat()
        for name in _RATE_FIELDS:
            value = getattr(entry.rate, name)
            if value is None:
                continue
            if _decimals(value) > MAX_RATE_DECIMALS:  # given per 1M with 28 to 30 decimals
                item[f"{name}_per_1m"] = format(value.scaleb(3, EXACT), "f")
            else:
                item[f"{name}_per_1k"] = format(value, "f")
        entries.append(item)
    doc: dict[str, Any] = {"prices": entries}
    if prices.label is not None:
        doc["version"] = prices.label
    return doc
