"""The running gateway follows its price file (gateway/pricing/reload.py)."""

from __future__ import annotations

import asyncio
import logging
import os
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import pytest

from gateway.pricing.book import load_price_book
from gateway.pricing.reload import PriceFileWatch
from gateway.types import Usage

AT = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)
USAGE = Usage(prompt_tokens=1000, completion_tokens=500)


def prices(input_per_1k: str) -> str:
    return f'version: ops\nprices:\n  - model: gpt-4\n    input_per_1k: "{input_per_1k}"\n    output_per_1k: "0.04"\n'


def write(path: Path, text: str) -> None:
    """A write that changes the signature even within the file system's timestamp granularity."""
    before = path.stat().st_mtime_ns if path.exists() else 0
    path.write_text(text)
    os.utime(path, ns=(before + 1_000_000_000, before + 1_000_000_000))


def cost(watch: PriceFileWatch) -> Decimal | None:
    return watch.book.quote("openai", "gpt-4", USAGE, AT).cost


async def test_a_changed_file_prices_new_calls_and_a_bad_one_keeps_the_prices_in_use(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "prices.yaml"
    path.write_text(prices("0.02"))
    watch = PriceFileWatch(load_price_book(path), path, settle=0)
    first = watch.book.version
    assert cost(watch) == Decimal("0.04")  # 1k in at 0.02 + 0.5k out at 0.04
    assert await watch.check() is False  # unchanged: not read again

    write(path, prices("0.10"))
    assert await watch.check() is True
    assert cost(watch) == Decimal("0.12") and watch.book.version != first
    second = watch.book.version

    write(path, "version: ops\nprices:\n  - model: gpt-4\n    input_per_1k: [")  # half-written
    assert await watch.check() is False
    assert cost(watch) == Decimal("0.12") and watch.book.version == second
    assert "was not taken, keeping prices" in caplog.text

    write(path, prices("0.03"))  # the editor finishes
    assert await watch.check() is True and cost(watch) == Decimal("0.05")

    caplog.clear()
    caplog.set_level(logging.INFO, logger="gateway.pricing.reload")
    write(path, prices("0.03") + "# a comment\n")  # rewritten, same prices: not a warning
    assert await watch.check() is True and cost(watch) == Decimal("0.05")
    assert [r.levelname for r in caplog.records] == ["INFO"] and "prices unchanged" in caplog.text

    path.unlink()
    assert await watch.check() is False and cost(watch) == Decimal("0.05")
    assert "is gone" in caplog.text


async def test_the_watch_survives_a_surprise_and_looks_again(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "prices.yaml"
    path.write_text(prices("0.02"))
    calls: list[Path] = []

    def load(p: Path):  # type: ignore[no-untyped-def]
        calls.append(p)
        if len(calls) == 1:
            raise RuntimeError("surprise")
        from gateway.pricing.pricefile import load_price_file

        return load_price_file(p)

    watch = PriceFileWatch(load_price_book(path), path, load=load, settle=0)
    caplog.set_level(logging.WARNING)
    task = asyncio.create_task(watch.run(0.01))
    try:
        write(path, prices("0.10"))
        for _ in range(200):
            await asyncio.sleep(0.01)
            if calls:
                break
        write(path, prices("0.20"))
        for _ in range(200):
            await asyncio.sleep(0.01)
            if cost(watch) == Decimal("0.22"):
                break
    finally:
        task.cancel()
    assert "reload failed" in caplog.text and cost(watch) == Decimal("0.22")


async def test_a_copy_that_keeps_the_modification_time_and_size_is_still_seen(tmp_path: Path) -> None:
    """``cp -p``, ``rsync -t`` or ``tar x`` keep the modification time: a same-size edit was
    never reloaded, while ``replay --reprice`` read the new file (a review)."""
    path = tmp_path / "prices.yaml"
    path.write_text(prices("0.02"))
    watch = PriceFileWatch(load_price_book(path), path, settle=0)
    before = path.stat()
    path.write_text(prices("0.09"))  # the same size
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
    assert path.stat().st_size == before.st_size and path.stat().st_mtime_ns == before.st_mtime_ns
    assert await watch.check() is True and cost(watch) == Decimal("0.11")


async def test_a_file_changed_a_moment_ago_is_read_once_it_has_rested(tmp_path: Path) -> None:
    """An editor writes in bursts: a file caught between two is a valid file with entries
    missing (a review's truncated file priced its gpt-4o calls at the built-in rate)."""
    path = tmp_path / "prices.yaml"
    path.write_text(prices("0.02"))
    now = [0.0]
    watch = PriceFileWatch(load_price_book(path), path, clock=lambda: now[0])
    path.write_text(prices("0.10"))
    changed = path.stat().st_ctime_ns / 1e9
    now[0] = changed + 0.5
    assert await watch.check() is False and cost(watch) == Decimal("0.04")  # not yet
    now[0] = changed + 1.5
    assert await watch.check() is True and cost(watch) == Decimal("0.12")


async def test_a_file_that_changes_while_it_is_read_is_read_again(tmp_path: Path) -> None:
    path = tmp_path / "prices.yaml"
    path.write_text(prices("0.02"))

    def load(p: Path):  # type: ignore[no-untyped-def]
        from gateway.pricing.pricefile import load_price_file

        taken = load_price_file(p)
        if not loads:
            write(p, prices("0.30"))  # the next burst lands during the read
        loads.append(taken)
        return taken

    loads: list[object] = []
    watch = PriceFileWatch(load_price_book(path), path, load=load, settle=0)
    write(path, prices("0.10"))
    assert await watch.check() is False and cost(watch) == Decimal("0.04")  # not the stale read
    assert await watch.check() is True and cost(watch) == Decimal("0.32")
