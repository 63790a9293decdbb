"""Records of synchronous requests: finished tasks that never went through the queue.

A synchronous edit is kept as a task so `GET /v1/tasks/{id}` answers for it too. Its record is
written by the metering store's settle, in the same round trip that charges it (see
`Store.settle(task=...)`), so it exists the moment the response is sent and the request path
stays at one store call before the upstream and one after. It lives next to the key's metering
data (`Store.task_record(key_id, task_id)`), which is why looking it up needs the key.
"""

from __future__ import annotations

from typing import Protocol

from app.tasks.base import Task, task_from_record


class RequestRecords(Protocol):
    """Where settle keeps synchronous requests' task records (both stores implement it)."""

    async def task_record(self, key_id: str, task_id: str) -> bytes | None: ...


class TaskLookup(Protocol):
    async def get(self, task_id: str) -> Task | None: ...


async def find_task(
    queue: TaskLookup, records: RequestRecords, key_id: str, task_id: str
) -> Task | None:
    """A queued task, else a synchronous request's record -- for `key_id` only."""
    task = await queue.get(task_id)
    if task is not None:
        return task if task.key_id == key_id else None
    raw = await records.task_record(key_id, task_id)
    return task_from_record(raw) if raw is not None else None
