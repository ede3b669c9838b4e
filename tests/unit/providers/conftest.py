"""Fixtures for adapter tests: the gateway's upstream HTTP client, an aiohttp client for talking
to the simulators directly, and fast timeouts."""

from __future__ import annotations

from collections.abc import AsyncIterator

import aiohttp
import pytest

from gateway.providers.base import Timeouts
from gateway.providers.upstream_http import UpstreamClient


@pytest.fixture
async def session() -> AsyncIterator[UpstreamClient]:
    async with UpstreamClient() as s:
        yield s


@pytest.fixture
async def aio() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as s:
        yield s


@pytest.fixture
def timeouts() -> Timeouts:
    """Short timeouts so `timeout` faults (which hold the request) end tests quickly."""
    return Timeouts(request=0.5, connect=0.5, stream_idle=0.5)
