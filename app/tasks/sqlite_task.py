"""How a `Task` is read from a row of the SQLite `tasks` table, shared by the SQLite task store."""

from __future__ import annotations

from typing import Any

import orjson

from app.tasks.base import Task

COLUMNS = (
    "id, key_id, trace_id, model, status, created, started, finished, callback_url, result, "
    "error, attempts, delivered, delivery_attempts, undelivered, last_delivery"
)


def task_from_row(row: tuple[Any, ...]) -> Task:
    return Task(
        id=row[0],
        key_id=row[1],
        trace_id=row[2],
        model=row[3],
        status=row[4],
        created=row[5],
        started=row[6],
        finished=row[7],
        callback_url=row[8],
        result=orjson.loads(row[9]) if row[9] else None,
        error=orjson.loads(row[10]) if row[10] else None,
        attempts=row[11],
        delivered=bool(row[12]),
        delivery_attempts=row[13],
        undelivered=bool(row[14]),
        last_delivery=orjson.loads(row[15]) if row[15] else None,
    )
