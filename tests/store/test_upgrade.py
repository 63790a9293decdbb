"""Ledgers written before channel/operation/usage/cost existed still read and still count.

SQLite: a file with the old `usage` table is migrated on open. Redis: rows and aggregate
fields in the old layout are read with the defaults (no channel, an edit, cost 0 estimated).
"""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import redis.asyncio as aioredis

from app.store.base import UsageGroup, UsageQuery
from app.store.redis_store import RedisStore
from app.store.sqlite_store import SQLiteStore
from tests.store.conftest import T0
from tests.store.test_contract import admit, record
from tests.support.redis_server import RedisServer

OLD_USAGE = """
CREATE TABLE usage (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, reservation_id TEXT NOT NULL, key_id TEXT NOT NULL,
    model TEXT NOT NULL, size_tier TEXT NOT NULL, images INTEGER NOT NULL,
    credits INTEGER NOT NULL, reserved INTEGER NOT NULL, task_id TEXT NOT NULL,
    trace_id TEXT NOT NULL, status TEXT NOT NULL, latency_ms INTEGER NOT NULL,
    created_at REAL NOT NULL, error_code TEXT
);
INSERT INTO usage (reservation_id, key_id, model, size_tier, images, credits, reserved, task_id,
    trace_id, status, latency_ms, created_at, error_code)
VALUES ('old1', 'key_old', 'gpt-image-1', '1k', 1, 40000, 40000, 't', 'tr', 'succeeded', 5,
    1717200010.0, NULL);
"""


def _old_row_expectations(rows: list) -> None:
    (old,) = [r for r in rows if r.reservation_id == "old1"]
    assert (old.channel, old.operation, old.usage) == ("", "edit", None)
    assert (old.cost_usd, old.cost_estimated, old.credits) == (0, True, 40_000)


async def test_sqlite_file_from_before_cost_is_migrated(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    conn = sqlite3.connect(path)
    conn.executescript(OLD_USAGE)
    conn.close()
    store = SQLiteStore(path)
    try:
        from tests.store.conftest import make_key

        await store.create_key(make_key())
        assert (await admit(store, "new1", T0 + 20)).ok
        row = record("new1", at=T0 + 21)
        row.channel, row.cost_usd = "openai", 7
        assert await store.settle("new1", "key_test", 1, row)
        rows = await store.usage_records(UsageQuery())
        _old_row_expectations(rows)
        assert [r.channel for r in rows if r.reservation_id == "new1"] == ["openai"]
        assert await store.usage_summary(UsageQuery(), "channel") == [
            UsageGroup("", 1, 1, 0, 1, 40_000, cost_usd=0, estimated=1),
            UsageGroup("openai", 1, 1, 0, 1, 1, cost_usd=7, estimated=0),
        ]
    finally:
        await store.close()
    SQLiteStore(path)  # opening a migrated file again changes nothing


async def test_redis_rows_from_before_cost_read_with_defaults(redis_server: RedisServer) -> None:
    redis_server.flushall()
    raw = aioredis.from_url(redis_server.url, decode_responses=True)
    body = {
        "reservation_id": "old1", "key_id": "key_old", "model": "gpt-image-1",
        "size_tier": "1k", "images": 1, "task_id": "t", "trace_id": "tr",
        "status": "succeeded", "latency_ms": 5, "created_at": T0 + 10, "error_code": None,
    }  # fmt: skip
    await raw.zadd("ig:{key_old}:ledger", {"40000:40000:" + json.dumps(body): T0 + 10})
    await raw.hset(
        "ig:{key_old}:agg",
        mapping={
            "2024-06-01\tgpt-image-1\trequests": 1,
            "2024-06-01\tgpt-image-1\tsucceeded": 1,
            "2024-06-01\tgpt-image-1\timages": 1,
            "2024-06-01\tgpt-image-1\tcredits": 40_000,
        },
    )
    await raw.sadd("ig:keys:known", "key_old")
    await raw.aclose()
    store = RedisStore(redis_server.url)
    try:
        _old_row_expectations(await store.usage_records(UsageQuery()))
        old = UsageGroup("", 1, 1, 0, 1, 40_000, cost_usd=0, estimated=0)
        assert await store.usage_summary(UsageQuery(), "channel") == [old]
        old.group = "edit"
        assert await store.usage_summary(UsageQuery(), "operation") == [old]
        old.group, old.estimated = "", 1  # the scan path reads the row itself
        assert await store.usage_summary(UsageQuery(since=T0 + 1), "channel") == [old]
    finally:
        await store.close()
