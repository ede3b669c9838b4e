"""Waiting in tests for what happens in the background (a replica reading a topic)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest


async def until(condition: Callable[[], bool], what: str, seconds: float = 30.0) -> None:
    """Return once ``condition()`` holds; fail the test naming ``what`` after ``seconds``."""
    deadline = asyncio.get_running_loop().time() + seconds
    while not condition():
        if asyncio.get_running_loop().time() > deadline:
            pytest.fail(f"not within {seconds:g}s: {what}")
        await asyncio.sleep(0.05)
