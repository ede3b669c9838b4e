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
    args = parse(*(str(other) if a == "OTHER" else a for a in argv), "--json")
    settings = Settings(price_file=configured, data_dir=tmp_path)
    assert replay_command.run(args, settings) == 0
    (prices,) = seen
    if sent is None:
        assert prices is None
    else:
        assert prices is not None and ("ops-7" if sent == "configured" else "ops-8") in prices.version


def test_without_a_configured_file_the_service_uses_its_own_and_an_unreadable_one_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from consumers.replay import ReplayOptions

    seen: list[Any] = []

    async def replay(settings: Settings, args: Any, options: Any, prices: Any, bar: Any) -> dict[str, Any]:
        seen.append((options, prices))
        return {}

    monkeypatch.setattr(replay_command, "_replay", replay)
    assert replay_command.run(parse("--reprice", "--json"), Settings(data_dir=tmp_path)) == 0
    ((options, prices),) = seen
    assert prices is None and options.reprice
    assert replay_command.request_body(options, prices)["prices"] is None  # the service's own
    broken = tmp_path / "broken.yaml"
    broken.write_text("prices: [{model: x}]", encoding="utf-8")
    assert replay_command.run(parse("--reprice"), Settings(data_dir=tmp_path, price_file=broken)) == 2
    assert "replay:" in capsys.readouterr().err and len(seen) == 1
    configured = tmp_path / "prices.yaml"
    configured.write_text(PRICES, encoding="utf-8")
    assert replay_command.run(parse("--reprice", "--json"), Settings(data_dir=tmp_path, price_file=configured)) == 0
    assert "repricing with" in capsys.readouterr().err
    sent = replay_command.request_body(ReplayOptions(reprice=True), seen[-1][1])
    assert sent["reprice"] and sent["prices"]["version"] == "ops-7"
