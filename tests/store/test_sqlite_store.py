"""SQLite-only behaviour: real processes racing on one file, a locked database failing closed
without blocking the event loop, and the journal mode."""

from __future__ import annotations

import asyncio
import multiprocessing
import sqlite3
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import pytest

from app.store.base import StoreUnavailable, UsageQuery
from app.store.sqlite_store import SQLiteStore
from tests.store.conftest import T0, make_key
from tests.store.test_contract import KEY, admit, balance


def _admit_many(path: str, worker: int, n: int) -> list[str]:
    """Runs in a child process: n admits of 0.14 on the shared file; returns the admitted ids."""

    async def run() -> list[str]:
        store = SQLiteStore(path)
        try:
            ok: list[str] = []
            for i in range(n):
                rid = f"w{worker}-{i}"
                if (await admit(store, rid, T0 + i * 0.001, rpm=10_000)).ok:
                    ok.append(rid)
            return ok
        finally:
            await store.close()

    return asyncio.run(run())


async def test_two_processes_never_overspend(tmp_path: Path) -> None:
    path = tmp_path / "imagegate.db"
    store = SQLiteStore(path)
    await store.create_key(make_key(balance=1_000_000))
    ctx = multiprocessing.get_context("spawn")
    loop = asyncio.get_running_loop()
    with ProcessPoolExecutor(max_workers=2, mp_context=ctx) as pool:
        results = await asyncio.gather(
            *(loop.run_in_executor(pool, _admit_many, str(path), w, 60) for w in range(2))
        )
    admitted = [rid for ok in results for rid in ok]
    assert len(admitted) == 7
    assert await balance(store) == 20_000
    assert await store.sweep(T0 + 10_000) == 7
    assert await balance(store) == 1_000_000
    assert len(await store.usage_records(UsageQuery())) == 7
    await store.close()


async def test_locked_database_fails_closed_without_blocking_the_loop(tmp_path: Path) -> None:
    path = tmp_path / "imagegate.db"
    store = SQLiteStore(path, busy_timeout_s=0.5)
    await store.create_key(make_key())
    other = sqlite3.connect(path, isolation_level=None)
    other.execute("BEGIN IMMEDIATE")  # another process holds the write lock
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            ticks += 1
            await asyncio.sleep(0.01)

    task = asyncio.create_task(ticker())
    started = time.monotonic()
    try:
        with pytest.raises(StoreUnavailable):
            await admit(store, "r1")
    finally:
        task.cancel()
        other.execute("ROLLBACK")
        other.close()
    assert 0.4 < time.monotonic() - started < 5
    assert ticks >= 20  # the loop kept running while sqlite waited in its thread
    assert (await admit(store, "r2")).ok  # and the store works once the lock is gone
    assert await balance(store) == 860_000
    await store.close()
    with pytest.raises(StoreUnavailable):
        await store.get_key(KEY)  # closed


async def test_wal_mode_and_schema_on_open(tmp_path: Path) -> None:
    path = tmp_path / "deep" / "imagegate.db"
    store = SQLiteStore(path)
    assert await store.ping()
    conn = sqlite3.connect(path)
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    conn.close()
    assert {"keys", "rate_window", "reservations", "usage", "credit_log"} <= tables
    await store.close()
    again = SQLiteStore(path)  # reopening an existing file is fine: the schema is idempotent
    assert await again.ping()
    await again.close()
