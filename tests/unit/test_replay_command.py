"""``llm-gateway replay --reprice`` sends the configured price file with the request: the service
that replays (in Kafka mode a ``consume`` member, often run without the gateway's config) used
its own prices, and a review's reprice put 249 events back at the built-in rates."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import pytest

from consumers import replay_command
from gateway.settings import Settings

PRICES = """version: ops-7
prices:
  - {provider: ollama, model: nomic-embed-text, input_per_1m: "0.03", output_per_1m: "0"}
"""


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    replay_command.register(parser.add_subparsers())
    return parser.parse_args(["replay", *argv])


@pytest.mark.parametrize(
    ("argv", "sent"),
    [
        (("--reprice",), "configured"),
        (("--reprice", "--price-file", "OTHER"), "other"),
        ((), None),  # no reprice: the prices recorded at call time stay
    ],
)
def test_the_configured_price_file_goes_with_a_reprice(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, argv: tuple[str, ...], sent: str | None
) -> None:
    configured = tmp_path / "prices.yaml"
    configured.write_text(PRICES, encoding="utf-8")
    other = tmp_path / "other.yaml"
    other.write_text(PRICES.replace("ops-7", "ops-8"), encoding="utf-8")
    seen: list[Any] = []

    async def replay(settings: Settings, args: Any, options: Any, prices: Any, bar: Any) -> dict[str, Any]:
        seen.append(prices)
        return {}

    monkeypatch.setattr(replay_command, "_replay", replay)
    monkeypatch.setattr(replay_command, "render_report", lambda doc: "", raising=False)
    args = parse(*(str(other) if a == "OTHER" else a for a in argv), "--json")
    settings = Settings(price_file=configured, data_dir=tmp_path)
    assert replay_command.run(args, settings) == 0
    (prices,) = seen
    if sent is None:
        assert prices is None
    else:
        assert prices is not None and ("ops-7" if sent == "configured" else "ops-8") in prices.version
