"""Run the gateway (over simulators) on a background thread, for synchronous test tools."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from tests.support.gateway import RunningGateway, running_gateway


@contextmanager
def gateway_in_thread(**kwargs: Any) -> Iterator[RunningGateway]:
    loop = asyncio.new_event_loop()
    ready = threading.Event()
    stop: asyncio.Event | None = None
    holder: dict[str, Any] = {}

    async def main() -> None:
        nonlocal stop
        stop = asyncio.Event()
        try:
            async with running_gateway(**kwargs) as gw:
                holder["gw"] = gw
                ready.set()
                await stop.wait()
        except BaseException as exc:  # noqa: BLE001 - surface start-up failures to the test thread
            holder["error"] = exc
            ready.set()

    thread = threading.Thread(target=loop.run_until_complete, args=(main(),), daemon=True)
    thread.start()
    ready.wait(30)
    if "error" in holder:
        raise holder["error"]
    try:
        yield holder["gw"]
    finally:
        assert stop is not None
        loop.call_soon_threadsafe(stop.set)
        thread.join(30)
        loop.close()
