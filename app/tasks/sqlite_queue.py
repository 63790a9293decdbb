"""`TaskQueue` on SQLite: the embedded store's durable tasks, for one machine.

The work queue is here; the delivery schedule is `sqlite_deliveries.py`, the idempotency
records `sqlite_idempotency.py` (mixed in: one file, one thread pool).

Schema (created on open; one file, WAL, `synchronous=NORMAL`):

    tasks(id PK, key_id, trace_id, model, status, created, started, finished, callback_url,
          result JSON, error JSON, attempts, worker, heartbeat_at,
          delivered, delivery_attempts, undelivered, delivery_due, last_delivery JSON)
      index tasks_claim(status, heartbeat_at, created)  -- lapsed leases, queue depth
      index tasks_queued(created) WHERE status = 'queued'  -- first come, first served
      index tasks_due(delivery_due) WHERE delivery_due IS NOT NULL
    task_payloads(task_id PK, payload BLOB)             -- deleted when the task finishes
    idempotency(key_id, idem_key, fingerprint, task_id, created, expires, state, response,
                PK(key_id, idem_key))

Every operation is one `BEGIN IMMEDIATE` transaction (the write lock is taken up front, so two
processes or threads claiming at once serialize instead of both reading "queued"). The
blocking sqlite3 calls run on a small private thread pool with one connection per thread, off
the event loop. A lease is `heartbeat_at` (set by claim and heartbeat, the caller's `now`):
the task is reclaimable once `now - heartbeat_at > lease_s` of the claimer, as in Redis.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

import orjson

from app.core.sqlite import enable_wal
from app.tasks.base import Claimed, Task
from app.tasks.sqlite_deliveries import SQLiteDeliveries
from app.tasks.sqlite_idempotency import IDEMPOTENCY_SCHEMA, SQLiteIdempotency
from app.tasks.sqlite_task import COLUMNS, task_from_row

T = TypeVar("T")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS tasks (
    id TEXT PRIMARY KEY,
    key_id TEXT NOT NULL,
    trace_id TEXT NOT NULL,
    model TEXT NOT NULL,
    status TEXT NOT NULL,
    created REAL NOT NULL,
    started REAL,
    finished REAL,
    callback_url TEXT,
    result TEXT,
    error TEXT,
    attempts INTEGER NOT NULL DEFAULT 0,
    worker TEXT,
    heartbeat_at REAL,
    delivered INTEGER NOT NULL DEFAULT 0,
    delivery_attempts INTEGER NOT NULL DEFAULT 0,
    undelivered INTEGER NOT NULL DEFAULT 0,
    delivery_due REAL,
    last_delivery TEXT
);
CREATE INDEX IF NOT EXISTS tasks_claim ON tasks(status, heartbeat_at, created);
CREATE INDEX IF NOT EXISTS tasks_queued ON tasks(created) WHERE status = 'queued';
CREATE INDEX IF NOT EXISTS tasks_due ON tasks(delivery_due) WHERE delivery_due IS NOT NULL;
CREATE TABLE IF NOT EXISTS task_payloads (
    task_id TEXT PRIMARY KEY,
    payload BLOB NOT NULL
);
"""


class SQLiteTaskQueue(SQLiteDeliveries, SQLiteIdempotency):
    """Durable tasks in one SQLite file (the embedded store's data dir)."""

    def __init__(
        self,
        path: str | Path,
        *,
        task_ttl_s: float = 7 * 86400,
        poll_s: float = 0.2,
        threads: int = 4,
    ) -> None:
        self.path = str(path)
        self.task_ttl_s = task_ttl_s
        self.poll_s = poll_s
        self._pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="ig-tasks")
        self._local = threading.local()
        self._conns: list[sqlite3.Connection] = []
        self._conns_lock = threading.Lock()
        self._wake = asyncio.Event()
        Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        conn = self._connect()
        conn.executescript(_SCHEMA + IDEMPOTENCY_SCHEMA)

    # --- plumbing
    def _connect(self) -> sqlite3.Connection:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            conn = sqlite3.connect(
                self.path, timeout=30, isolation_level=None, check_same_thread=False
            )
            enable_wal(conn, 30)
            conn.execute("PRAGMA synchronous=NORMAL")
            conn.execute("PRAGMA busy_timeout=30000")
            self._local.conn = conn
            with self._conns_lock:
                self._conns.append(conn)
        return conn

    def _tx(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        conn = self._connect()
        conn.execute("BEGIN IMMEDIATE")
        try:
            out = fn(conn)
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")
        return out

    async def _run(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._pool, self._tx, fn)

    def _notify(self) -> None:
        # Waiters hold the old event; swapping in a fresh one wakes them all exactly once.
        self._wake.set()
        self._wake = asyncio.Event()

    async def close(self) -> None:
        # Every pooled call has returned once the pool is shut down, so the per-thread
        # connections are idle and can be closed from here.
        await asyncio.to_thread(self._pool.shutdown, wait=True)
        with self._conns_lock:
            for conn in self._conns:
                conn.close()
            self._conns.clear()

    async def ping(self) -> bool:
        return await self._run(lambda c: c.execute("SELECT 1").fetchone() == (1,))

    # --- work queue
    async def enqueue(self, task: Task, payload: bytes) -> None:
        def op(c: sqlite3.Connection) -> None:
            cur = c.execute(
                "INSERT OR IGNORE INTO tasks (id, key_id, trace_id, model, status, created, "
                "callback_url) VALUES (?, ?, ?, ?, 'queued', ?, ?)",
                (task.id, task.key_id, task.trace_id, task.model, task.created, task.callback_url),
            )
            if cur.rowcount:
                c.execute(
                    "INSERT OR REPLACE INTO task_payloads (task_id, payload) VALUES (?, ?)",
                    (task.id, payload),
                )

        await self._run(op)
        self._notify()

    def _claim_one(self, worker_id: str, lease_s: float, now: float) -> Claimed | None:
        def op(c: sqlite3.Connection) -> Claimed | None:
            while True:
                # a lapsed lease first (its task has waited longest), then the oldest queued
                row = (
                    c.execute(
                        "SELECT id FROM tasks WHERE status = 'running' AND heartbeat_at < ? "
                        "ORDER BY heartbeat_at LIMIT 1",
                        (now - lease_s,),
                    ).fetchone()
                    or c.execute(
                        "SELECT id FROM tasks WHERE status = 'queued' ORDER BY created LIMIT 1"
                    ).fetchone()
                )
                if row is None:
                    return None
                task_id = row[0]
                c.execute(
                    "UPDATE tasks SET status = 'running', worker = ?, heartbeat_at = ?, "
                    "started = COALESCE(started, ?), attempts = attempts + 1 WHERE id = ?",
                    (worker_id, now, now, task_id),
                )
                task = task_from_row(
                    c.execute(f"SELECT {COLUMNS} FROM tasks WHERE id = ?", (task_id,)).fetchone()
                )
                prow = c.execute(
                    "SELECT payload FROM task_payloads WHERE task_id = ?", (task_id,)
                ).fetchone()
                if prow is None:
                    error = {"code": "api_error", "message": "the task's request data was lost"}
                    self._finish_in(c, task_id, None, error, now)
                    continue
                return Claimed(task, bytes(prow[0]))

        return self._tx(op)

    async def claim(
        self, worker_id: str, *, lease_s: float, now: float, block_s: float = 0.0
    ) -> Claimed | None:
        loop = asyncio.get_running_loop()
        start = time.monotonic()
        while True:
            wake = self._wake
            elapsed = time.monotonic() - start
            found = await loop.run_in_executor(
                self._pool, self._claim_one, worker_id, lease_s, now + elapsed
            )
            remaining = block_s - (time.monotonic() - start)
            if found is not None or remaining <= 0:
                return found
            # Woken at once by an enqueue in this process; other processes are polled.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(wake.wait(), timeout=min(self.poll_s, remaining))

    async def heartbeat(self, task_id: str, worker_id: str, *, now: float) -> bool:
        def op(c: sqlite3.Connection) -> bool:
            cur = c.execute(
                "UPDATE tasks SET heartbeat_at = ? WHERE id = ? AND status = 'running' "
                "AND worker = ?",
                (now, task_id, worker_id),
            )
            return cur.rowcount == 1

        return await self._run(op)

    async def release(self, task_id: str, worker_id: str) -> bool:
        def op(c: sqlite3.Connection) -> bool:
            cur = c.execute(
                "UPDATE tasks SET status = 'queued', worker = NULL, heartbeat_at = NULL "
                "WHERE id = ? AND status = 'running' AND worker = ?",
                (task_id, worker_id),
            )
            return cur.rowcount == 1

        ok = await self._run(op)
        if ok:
            self._notify()
        return ok

    @staticmethod
    def _finish_in(
        c: sqlite3.Connection,
        task_id: str,
        result: dict[str, Any] | None,
        error: dict[str, Any] | None,
        now: float,
    ) -> bool:
        cur = c.execute(
            "UPDATE tasks SET status = ?, finished = ?, result = ?, error = ?, worker = NULL, "
            "heartbeat_at = NULL, delivery_due = CASE WHEN callback_url IS NOT NULL "
            "AND callback_url != '' THEN ? END "
            "WHERE id = ? AND status NOT IN ('succeeded', 'failed')",
            (
                "failed" if error is not None else "succeeded",
                now,
                orjson.dumps(result).decode() if result is not None else None,
                orjson.dumps(error).decode() if error is not None else None,
                now,
                task_id,
            ),
        )
        if cur.rowcount == 0:
            return False
        c.execute("DELETE FROM task_payloads WHERE task_id = ?", (task_id,))
        return True

    async def finish(
        self,
        task_id: str,
        *,
        result: dict[str, Any] | None = None,
        error: dict[str, Any] | None = None,
        now: float,
    ) -> bool:
        return await self._run(lambda c: self._finish_in(c, task_id, result, error, now))

    async def get(self, task_id: str) -> Task | None:
        def op(c: sqlite3.Connection) -> Task | None:
            row = c.execute(f"SELECT {COLUMNS} FROM tasks WHERE id = ?", (task_id,)).fetchone()
            return task_from_row(row) if row else None

        return await self._run(op)

    async def queue_depth(self) -> int:
        def op(c: sqlite3.Connection) -> int:
            # a payload row exists exactly while an enqueued task is unfinished
            return int(c.execute("SELECT COUNT(*) FROM task_payloads").fetchone()[0])

        return await self._run(op)

    async def purge(self, now: float) -> int:
        def op(c: sqlite3.Connection) -> int:
            c.execute("DELETE FROM idempotency WHERE expires < ?", (now,))
            # finished ones after the retention; anything else that old is a dead record
            cur = c.execute(
                "DELETE FROM tasks WHERE COALESCE(finished, created) < ?",
                (now - self.task_ttl_s,),
            )
            c.execute("DELETE FROM task_payloads WHERE task_id NOT IN (SELECT id FROM tasks)")
            return cur.rowcount

        return await self._run(op)
