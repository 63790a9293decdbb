"""Store fixtures: every contract test runs against both stores.

`backend` knows how to open more stores on the same data (same SQLite file / same Redis), for
the races between two processes' worth of connections; `store` is the first of them. Redis
tests share the session `redis_server` and flush it first; SQLite tests get a fresh file.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from app.store.base import ApiKey, Store, hash_secret
from app.store.redis_store import RedisStore
from app.store.sqlite_store import SQLiteStore
from tests.support.redis_cluster import RedisCluster
from tests.support.redis_server import RedisServer

# 2024-06-01T00:00:00Z: a UTC midnight, so day boundaries in tests are easy to reason about.
T0 = 1_717_200_000.0
DAY = 86_400.0


class Backend:
    """Opens stores on one shared backing (file or server) and closes them all at teardown."""

    def __init__(self, kind: str, *, path: Path | None = None, url: str | None = None) -> None:
        self.kind = kind
        self._path = path
        self._url = url
        self._open: list[Store] = []

    def new(self) -> Store:
        store: Store
        if self.kind == "sqlite":
            assert self._path is not None
            store = SQLiteStore(self._path)
        else:
            assert self._url is not None
            store = RedisStore(self._url)
        self._open.append(store)
        return store

    async def close(self) -> None:
        for store in self._open:
            await store.close()


@pytest.fixture(params=["sqlite", "redis", "cluster"])
async def backend(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Backend]:
    if request.param == "redis":
        redis_server: RedisServer = request.getfixturevalue("redis_server")
        redis_server.flushall()
        b = Backend("redis", url=redis_server.url)
    elif request.param == "cluster":
        cluster: RedisCluster = request.getfixturevalue("redis_cluster")
        cluster.flushall()
        b = Backend("redis", url=cluster.url)
    else:
        b = Backend("sqlite", path=tmp_path / "imagegate.db")
    try:
        yield b
    finally:
        await b.close()


@pytest.fixture
def store(backend: Backend) -> Store:
    return backend.new()


def make_key(
    key_id: str = "key_test",
    *,
    balance: int = 1_000_000,
    created_at: float = T0,
    **fields: object,
) -> ApiKey:
    """An ApiKey whose secret is `secret-<id>` (so `hash_secret` finds it)."""
    return ApiKey(
        id=key_id,
        name=f"name of {key_id}",
        key_hash=hash_secret(f"secret-{key_id}"),
        prefix="ig-secr",
        balance=balance,
        webhook_secret=f"whsec-{key_id}",
        created_at=created_at,
        **fields,  # type: ignore[arg-type]
    )
