"""The recorder's observers (health, metrics): after the log append, optionally deferred to the
next loop turn, and never able to fail the call they observe."""

from __future__ import annotations

import asyncio
import logging

import pytest

from gateway.eventlog.memory import MemoryEventLog
from gateway.events import UsageEvent
from gateway.types import Usage
from gateway.usage import AttemptFacts, CallContext, UsageRecorder
from tests.support.fakes import FixedPriceBook, ManualClock

CTX = CallContext("req_1", "tenant_123", None, "chat.completions", False, "gpt-4")
FACTS = AttemptFacts(1, "openai", "gpt-4", "success", 12.5, usage=Usage(prompt_tokens=10, completion_tokens=5))


def recorder(*, defer: bool) -> tuple[UsageRecorder, MemoryEventLog, list[UsageEvent]]:
    log = MemoryEventLog()
    seen: list[UsageEvent] = []
    rec = UsageRecorder(log, FixedPriceBook(), clock=ManualClock(), observers=[seen.append], defer_observers=defer)
    return rec, log, seen


async def test_observers_run_during_record_by_default() -> None:
    rec, log, seen = recorder(defer=False)
    event = rec.record(CTX, FACTS)
    assert seen == [event] and log.events == [event]


async def test_deferred_observers_run_on_the_next_loop_turn_after_the_append() -> None:
    rec, log, seen = recorder(defer=True)
    event = rec.record(CTX, FACTS)
    assert log.events == [event]  # the record itself is not deferred
    assert seen == []  # the caller answers first
    await asyncio.sleep(0)
    assert seen == [event]


def test_deferred_observers_without_a_running_loop_run_at_once() -> None:
    rec, _, seen = recorder(defer=True)
    event = rec.record(CTX, FACTS)
    assert seen == [event]


@pytest.mark.parametrize("defer", [False, True])
async def test_a_failing_observer_is_logged_and_does_not_stop_the_others(
    defer: bool, caplog: pytest.LogCaptureFixture
) -> None:
    rec, log, seen = recorder(defer=defer)

    def broken(_: UsageEvent) -> None:
        raise RuntimeError("observer bug")

    rec.observers.insert(0, broken)
    with caplog.at_level(logging.ERROR, logger="gateway.usage"):
        event = rec.record(CTX, FACTS)  # does not raise into the call
        await asyncio.sleep(0)
    assert seen == [event] and log.events == [event]
    assert "observer bug" in caplog.text and event.event_id in caplog.text


async def test_deferred_observers_see_every_event_of_a_turn_in_order_in_one_callback() -> None:
    rec, log, seen = recorder(defer=True)
    loop = asyncio.get_running_loop()
    scheduled = len(loop._ready)  # type: ignore[attr-defined]
    events = [rec.record(CTX, FACTS) for _ in range(3)]
    assert len(loop._ready) == scheduled + 1  # type: ignore[attr-defined]  # one callback for the turn
    assert seen == [] and log.events == events
    await asyncio.sleep(0)
    assert seen == events
    later = rec.record(CTX, FACTS)  # the next turn gets a callback of its own
    await asyncio.sleep(0)
    assert seen == [*events, later]
