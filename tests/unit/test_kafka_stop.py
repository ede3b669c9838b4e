"""Stopping a Kafka consumer must not fail a shutdown: with the broker gone, aiokafka's fetcher
re-raised its cancelled fetch from ``consumer.stop()``, and a SIGTERM'd ``consume`` exited 1 with
a traceback, its DuckDB file unclosed (a re-test)."""

from __future__ import annotations

import asyncio
import logging
from typing import Any, cast

import pytest

from gateway.eventlog.kafka_admin import stop_consumer


class Consumer:
    def __init__(self, stop: str) -> None:
        self.how = stop
        self.stopped = False

    async def stop(self) -> None:
        if self.how == "cancelled inside":  # what aiokafka's Fetcher.close re-raised
            inner = asyncio.ensure_future(asyncio.sleep(10))
            await asyncio.sleep(0)
            inner.cancel()
            await inner
        if self.how == "hangs":
            await asyncio.Event().wait()
        if self.how == "fails":
            raise ConnectionResetError("the broker went away")
        self.stopped = True


async def test_a_stop_cut_short_inside_the_client_is_logged_not_raised(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING):
        await stop_consumer(cast(Any, Consumer("cancelled inside")))
        await stop_consumer(cast(Any, Consumer("fails")))
    assert "cut short inside aiokafka" in caplog.text
    assert "error while stopping the Kafka consumer: ConnectionResetError: the broker went away" in caplog.text
    clean = Consumer("clean")
    await stop_consumer(cast(Any, clean))
    assert clean.stopped


async def test_a_stop_that_hangs_is_left_after_its_time(caplog: pytest.LogCaptureFixture) -> None:
    started = asyncio.get_running_loop().time()
    await stop_consumer(cast(Any, Consumer("hangs")), 0.2)
    assert asyncio.get_running_loop().time() - started < 2
    assert "did not stop within 0s" in caplog.text


async def test_the_callers_own_cancellation_goes_through() -> None:
    task = asyncio.create_task(stop_consumer(cast(Any, Consumer("hangs")), 30))
    await asyncio.sleep(0.05)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_a_cleanup_after_a_ctrl_c_still_goes_on_past_the_clients_failing_stop() -> None:
    """Ctrl-C cancels the main task, and the cleanup in its ``finally`` runs while it is being
    cancelled: aiokafka's re-raised fetch was taken for the caller's own cancellation, and the
    stores after the reader were never closed (a diff read)."""
    closed: list[str] = []

    async def serving() -> None:
        try:
            await asyncio.sleep(10)
        finally:
            await stop_consumer(cast(Any, Consumer("cancelled inside")))
            closed.append("the stores")

    task = asyncio.create_task(serving())
    await asyncio.sleep(0.01)
    task.cancel()  # what asyncio.run does on Ctrl-C
    with pytest.raises(asyncio.CancelledError):
        await task
    assert closed == ["the stores"]
