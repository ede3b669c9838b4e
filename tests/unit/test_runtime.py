"""The commands' garbage-collector settings (gateway/runtime.py)."""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest

from gateway import cli
from gateway.runtime import GC_THRESHOLDS, tune_gc


@pytest.fixture
def restore_gc() -> Iterator[None]:
    before = gc.get_threshold()
    yield
    gc.unfreeze()
    gc.set_threshold(*before)


@pytest.mark.usefixtures("restore_gc")
def test_tune_gc_raises_the_thresholds_and_freezes_what_exists() -> None:
    gc.unfreeze()
    survivor = [object() for _ in range(10)]
    tune_gc()
    assert gc.get_threshold() == GC_THRESHOLDS
    assert GC_THRESHOLDS[0] > 700  # far fewer young collections than CPython's default
    assert gc.get_freeze_count() > 0
    assert survivor  # frozen objects stay alive and usable


@pytest.mark.usefixtures("restore_gc")
def test_every_command_runs_with_the_tuned_collector(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[str] = []
    monkeypatch.setattr(cli, "tune_gc", lambda: calls.append("tuned"))
    import gateway.commands

    monkeypatch.setattr(gateway.commands, "run_command", lambda args, settings: calls.append(args.command) or 0)
    assert cli.main(["costs", "--tenant", "t"]) == 0
    assert calls == ["tuned", "costs"]
