"""`open_store` picks the store from the settings; the embedded one survives a restart."""

from __future__ import annotations

from pathlib import Path

from app.store import SQLITE_FILENAME, open_store
from app.store.redis_store import RedisStore
from app.store.sqlite_store import SQLiteStore
from tests.store.conftest import make_key
from tests.store.test_contract import KEY, admit, balance
from tests.support.redis_server import RedisServer


async def test_sqlite_when_no_redis_url(tmp_path: Path) -> None:
    data_dir = tmp_path / "data" / "nested"  # created on open
    store = open_store(None, data_dir)
    assert isinstance(store, SQLiteStore)
    assert (data_dir / SQLITE_FILENAME).exists()
    await store.create_key(make_key())
    assert (await admit(store, "r1")).ok
    await store.close()

    again = open_store("", data_dir)  # an empty URL means "not configured" too
    assert await balance(again) == 860_000
    await again.close()


async def test_redis_when_url_given(tmp_path: Path, redis_server: RedisServer) -> None:
    redis_server.flushall()
    store = open_store(redis_server.url, tmp_path)
    assert isinstance(store, RedisStore)
    assert await store.ping()
    await store.create_key(make_key())
    assert await store.get_key(KEY) is not None
    assert not (tmp_path / SQLITE_FILENAME).exists()
    await store.close()
