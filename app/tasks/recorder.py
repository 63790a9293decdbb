"""Batched records of synchronous requests, so `GET /v1/tasks/{id}` answers for them too.

A synchronous edit already costs one store round trip before the upstream call and one after;
writing its task record per request would add a third. Records are buffered instead and
flushed together (one pipeline / one transaction) every `interval_s` or when `max_batch` are
waiting. The cost is that a record can appear up to `interval_s` after the response.
"""

from __future__ import annotations

import asyncio
import contextlib

from app.core.logging import fields, get_logger
from app.tasks.base import Task, TaskQueue

log = get_logger("imagegate.tasks")


class TaskRecorder:
    def __init__(self, queue: TaskQueue, *, interval_s: float = 0.05, max_batch: int = 256) -> None:
        self.queue = queue
        self.interval_s = interval_s
        self.max_batch = max_batch
        self._pending: list[Task] = []
        self._wake = asyncio.Event()

    def add(self, task: Task) -> None:
        self._pending.append(task)
        if len(self._pending) >= self.max_batch:
            self._wake.set()

    async def flush(self) -> int:
        batch, self._pending = self._pending, []
        if not batch:
            return 0
        try:
            await self.queue.record_many(batch)
        except Exception:
            # A lost record only means GET /v1/tasks says 404 for a request that was answered
            # and charged correctly; never fail or slow the request path for it.
            log.warning("task.record.failed", extra=fields(count=len(batch)))
        return len(batch)

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout=self.interval_s)
            self._wake.clear()
            await self.flush()
        await self.flush()
