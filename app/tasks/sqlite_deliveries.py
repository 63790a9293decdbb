"""The callback delivery schedule on SQLite: `tasks.delivery_due`, leased by pushing it out
while a deliverer POSTs (`DeliverySchedule`)."""

from __future__ import annotations

import sqlite3
from collections.abc import Awaitable, Callable
from typing import Any

import orjson

from app.tasks.base import DeliveryOutcome, Task, delivery_note
from app.tasks.sqlite_task import COLUMNS, task_from_row


class SQLiteDeliveries:
    """Mixed into `SQLiteTaskQueue` (its `_run`: one transaction on its thread pool)."""

    _run: Callable[[Callable[[sqlite3.Connection], Any]], Awaitable[Any]]

    async def schedule_delivery(self, task_id: str, due_at: float) -> None:
        await self._run(
            lambda c: c.execute("UPDATE tasks SET delivery_due = ? WHERE id = ?", (due_at, task_id))
        )

    async def claim_due_deliveries(
        self, now: float, limit: int, *, lease_s: float = 60.0
    ) -> list[Task]:
        def op(c: sqlite3.Connection) -> list[Task]:
            rows = c.execute(
                f"SELECT {COLUMNS} FROM tasks WHERE delivery_due IS NOT NULL "
                "AND delivery_due <= ? ORDER BY delivery_due LIMIT ?",
                (now, limit),
            ).fetchall()
            tasks: list[Task] = []
            for row in rows:
                task = task_from_row(row)
                if task.delivered or task.undelivered or not task.done:
                    c.execute("UPDATE tasks SET delivery_due = NULL WHERE id = ?", (task.id,))
                    continue
                c.execute(
                    "UPDATE tasks SET delivery_due = ? WHERE id = ?", (now + lease_s, task.id)
                )
                tasks.append(task)
            return tasks

        return await self._run(op)

    async def record_delivery(
        self,
        task_id: str,
        *,
        status_code: int | None = None,
        error: str | None = None,
        delivered: bool,
        next_due: float | None,
        now: float,
    ) -> DeliveryOutcome | None:
        last = delivery_note(now, status_code, error)
        retry_at = next_due if not delivered else None
        gave_up = not delivered and retry_at is None

        def op(c: sqlite3.Connection) -> DeliveryOutcome | None:
            cur = c.execute(
                "UPDATE tasks SET delivery_attempts = delivery_attempts + 1, last_delivery = ?, "
                "delivered = MAX(delivered, ?), undelivered = MAX(undelivered, ?), "
                "delivery_due = ? WHERE id = ?",
                (orjson.dumps(last).decode(), int(delivered), int(gave_up), retry_at, task_id),
            )
            if cur.rowcount == 0:
                return None
            n = c.execute(
                "SELECT delivery_attempts FROM tasks WHERE id = ?", (task_id,)
            ).fetchone()[0]
            return DeliveryOutcome(
                delivered=delivered, undelivered=gave_up, attempts=int(n), next_due=retry_at
            )

        return await self._run(op)
