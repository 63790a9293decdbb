"""Shared fixtures of the media tests."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from app.media import GuardedFetcher


@pytest.fixture
async def fetcher() -> AsyncIterator[GuardedFetcher]:
    """A fetcher that may reach the tests' servers on 127.0.0.1."""
    f = GuardedFetcher(allow_private=True, timeout_s=5)
    yield f
    await f.aclose()
