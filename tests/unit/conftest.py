"""Fixtures shared by the unit tests."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from analytics.store import AnalyticsStore


@pytest.fixture
async def store() -> AsyncIterator[AnalyticsStore]:
    """A migrated in-memory analytics store (modules that need a file define their own)."""
    store = AnalyticsStore()
    await store.open()
    yield store
    await store.close()
