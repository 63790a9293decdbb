"""Redis-only behaviour: outages fail closed and heal by themselves; the key layout is
Cluster-safe (every script touches one hash slot)."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Iterator

import pytest
import redis
from redis.crc import key_slot

from app.store.base import StoreUnavailable, UsageQuery
from app.store.redis_store import RedisStore
from tests.store.conftest import T0, make_key
from tests.store.test_contract import KEY, admit, balance, record
from tests.support.redis_server import RedisServer


@pytest.fixture
def own_server() -> Iterator[RedisServer]:
    """A server of our own to crash, so the session one is left alone."""
    server = RedisServer(appendonly=True).start()
    try:
        yield server
    finally:
        server.cleanup()


@pytest.fixture
async def redis_store(redis_server: RedisServer) -> AsyncIterator[RedisStore]:
    redis_server.flushall()
    store = RedisStore(redis_server.url)
    try:
        yield store
    finally:
        await store.close()


async def test_outage_fails_closed_then_recovers(own_server: RedisServer) -> None:
    store = RedisStore(own_server.url)
    try:
        await store.create_key(make_key(balance=1_000_000))
        assert (await admit(store, "r1", cost=140_000)).ok  # reserved before the crash
        assert await store.adjust_balance(KEY, 500_000, "top up", T0) == 1_360_000

        own_server.kill()
        started = time.monotonic()
        assert not await store.ping()
        with pytest.raises(StoreUnavailable):
            await admit(store, "r2", T0 + 1)
        with pytest.raises(StoreUnavailable):
            await store.get_key(KEY)
        with pytest.raises(StoreUnavailable):
            await store.find_key_by_hash(make_key().key_hash)
        with pytest.raises(StoreUnavailable):
            await store.settle("r1", KEY, 140_000, record("r1"))
        with pytest.raises(StoreUnavailable):
            await store.adjust_balance(KEY, 1, None, T0)
        with pytest.raises(StoreUnavailable):
            await store.sweep(T0 + 10_000)
        with pytest.raises(StoreUnavailable):
            await store.usage_records(UsageQuery())
        with pytest.raises(StoreUnavailable):
            await store.list_keys()
        assert time.monotonic() - started < 5  # refused connections fail fast, no long retries

        own_server.start()  # same port, same AOF
        # the same object works again: the pool reconnects, EVALSHA meets NOSCRIPT (a restart
        # empties the script cache) and redis-py loads the script again
        assert await store.ping()
        assert await balance(store) == 1_360_000
        assert await store.settle("r1", KEY, 100_000, record("r1")) == "settled"
        assert await balance(store) == 1_400_000
        a = await admit(store, "r2", T0 + 2)
        assert a.ok and a.balance == 1_260_000
        assert await store.sweep(T0 + 10_000) == 1
        assert await balance(store) == 1_400_000
        log = await store.credit_log(KEY)
        assert [e["amount"] for e in log] == [500_000]
    finally:
        await store.close()


async def test_script_cache_flush_is_survived(
    redis_store: RedisStore, redis_server: RedisServer
) -> None:
    await redis_store.create_key(make_key())
    assert (await admit(redis_store, "r1")).ok
    client = redis.Redis.from_url(redis_server.url)
    client.script_flush()
    client.close()
    assert (await admit(redis_store, "r2", T0 + 1)).ok
    assert await redis_store.settle("r1", KEY, 0, record("r1")) == "settled"
    client = redis.Redis.from_url(redis_server.url)
    client.script_flush()
    client.close()
    assert await redis_store.sweep(T0 + 10_000) == 1  # pipelined EVALSHA reloads too
    assert await balance(redis_store) == 1_000_000


async def test_key_layout_is_cluster_safe(
    redis_store: RedisStore, redis_server: RedisServer
) -> None:
    """Every structure a script touches carries the `{key_id}` tag, so all of one key's data
    is in one slot; only the index/set keys (never touched by scripts) are untagged."""
    for key_id in ("key_a", "key_b"):
        await redis_store.create_key(make_key(key_id))
        assert (await admit(redis_store, "r1", key_id=key_id, hold_s=5)).ok
        assert (await admit(redis_store, "r2", T0 + 1, key_id=key_id)).ok
        assert await redis_store.settle("r2", key_id, 1, record("r2", key_id=key_id)) == "settled"
        await redis_store.adjust_balance(key_id, 10, None, T0)
    assert await redis_store.sweep(T0 + 100) == 2

    client = redis.Redis.from_url(redis_server.url, decode_responses=True)
    names: list[str] = sorted(client.keys("*"))  # type: ignore[arg-type]
    client.close()
    untagged = {n for n in names if "{" not in n}
    hashes = {f"ig:hash:{make_key(k).key_hash}" for k in ("key_a", "key_b")}
    assert untagged == {"ig:keys", "ig:keys:known"} | hashes
    for key_id in ("key_a", "key_b"):
        mine = [n for n in names if f"{{{key_id}}}" in n]
        # res/exp exist only while a reservation is live (Redis drops empty structures)
        assert {n.rsplit(":", 1)[1] for n in mine} == {"key", "win", "ledger", "agg", "credits"}
        assert len({key_slot(n.encode()) for n in mine}) == 1


def test_prefix_with_braces_refused() -> None:
    with pytest.raises(ValueError):
        RedisStore("redis://127.0.0.1:1/0", prefix="{ig}")


async def test_stale_hash_index_is_taken_over(
    redis_store: RedisStore, redis_server: RedisServer
) -> None:
    """A delete interrupted between its steps leaves an index entry naming a gone key; it must
    not block a new key with that secret, nor resolve to anything."""
    key = make_key()
    client = redis.Redis.from_url(redis_server.url)
    client.set(f"ig:hash:{key.key_hash}", "key_gone")
    client.close()
    assert await redis_store.find_key_by_hash(key.key_hash) is None
    await redis_store.create_key(key)
    assert await redis_store.find_key_by_hash(key.key_hash) == key
