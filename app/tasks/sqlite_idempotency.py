"""`Idempotency-Key` records on SQLite: the `idempotency` table (`IdempotencyRecords`)."""

from __future__ import annotations

import sqlite3
from collections.abc import Awaitable, Callable
from typing import Any

from app.tasks.idempotency import IdemState

IDEMPOTENCY_SCHEMA = """
CREATE TABLE IF NOT EXISTS idempotency (
    key_id TEXT NOT NULL,
    idem_key TEXT NOT NULL,
    fingerprint TEXT NOT NULL,
    task_id TEXT NOT NULL,
    created REAL NOT NULL,
    expires REAL NOT NULL,
    state TEXT NOT NULL,
    response BLOB,
    PRIMARY KEY (key_id, idem_key)
);
"""


class SQLiteIdempotency:
    """Mixed into `SQLiteTaskQueue` (its `_run`: one transaction on its thread pool)."""

    _run: Callable[[Callable[[sqlite3.Connection], Any]], Awaitable[Any]]

    async def idem_begin(
        self,
        key_id: str,
        idem_key: str,
        fingerprint: str,
        *,
        task_id: str,
        now: float,
        ttl_s: float,
        stale_after_s: float | None = None,
    ) -> IdemState:
        def op(c: sqlite3.Connection) -> IdemState:
            row = c.execute(
                "SELECT fingerprint, task_id, created, state, response, expires FROM idempotency "
                "WHERE key_id = ? AND idem_key = ?",
                (key_id, idem_key),
            ).fetchone()
            fresh = row is None or row[5] <= now
            stale = (
                row is not None
                and row[3] == "pending"
                and row[0] == fingerprint
                and stale_after_s is not None
                and now - row[2] > stale_after_s
            )
            if fresh or stale:
                c.execute(
                    "INSERT OR REPLACE INTO idempotency (key_id, idem_key, fingerprint, task_id, "
                    "created, expires, state, response) VALUES (?, ?, ?, ?, ?, ?, 'pending', NULL)",
                    (key_id, idem_key, fingerprint, task_id, now, now + ttl_s),
                )
                return IdemState("new", task_id)
            assert row is not None
            if row[0] != fingerprint:
                return IdemState("conflict", row[1])
            if row[3] == "done":
                return IdemState("done", row[1], bytes(row[4]))
            if row[1] == task_id:  # our own record: a re-sent call gets its first answer
                return IdemState("new", task_id)
            return IdemState("pending", row[1])

        return await self._run(op)

    async def idem_finish(self, key_id: str, idem_key: str, response: bytes) -> None:
        await self._run(
            lambda c: c.execute(
                "UPDATE idempotency SET state = 'done', response = ? "
                "WHERE key_id = ? AND idem_key = ?",
                (response, key_id, idem_key),
            )
        )

    async def idem_abort(self, key_id: str, idem_key: str, task_id: str) -> None:
        await self._run(
            lambda c: c.execute(
                "DELETE FROM idempotency WHERE key_id = ? AND idem_key = ? AND task_id = ? "
                "AND state = 'pending'",
                (key_id, idem_key, task_id),
            )
        )
