"""Admin actions on tasks: send an undelivered callback now (audited)."""

from __future__ import annotations

import time
from collections.abc import Callable

from app.core.errors import GatewayError
from app.domain.audit import Actor, AuditLog
from app.tasks.base import Task, TaskQueue
from app.tasks.delivery import CallbackDeliverer


class TaskAdmin:
    def __init__(
        self,
        queue: TaskQueue,
        deliverer: CallbackDeliverer,
        audit: AuditLog,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.queue = queue
        self.deliverer = deliverer
        self.audit = audit
        self.clock = clock

    async def redeliver(self, task_id: str, *, by: Actor) -> Task:
        """POST a finished task's callback now, whether its retries are still running or were
        given up; returns the task after the attempt. 404 for an unknown task; 409 when there
        is nothing to redeliver (no callback_url, already delivered, or not finished yet)."""
        task = await self.queue.get(task_id)
        if task is None:
            raise GatewayError("not_found", f"no task {task_id!r}", param="task_id")
        if not task.callback_url:
            raise GatewayError("conflict", "this task has no callback_url", param="task_id")
        if task.delivered:
            raise GatewayError("conflict", "the callback was already delivered", param="task_id")
        if not task.done:
            raise GatewayError(
                "conflict",
                "the task has not finished; its callback is sent when it does",
                param="task_id",
            )
        # Keep the background deliverer off this task while we POST (as its own claim would).
        await self.queue.schedule_delivery(task_id, self.clock() + self.deliverer.claim_lease_s)
        outcome = await self.deliverer.attempt(task)
        if outcome is None:  # the key's webhook secret could not be read: the store is down
            raise GatewayError(
                "service_unavailable", "could not sign the callback, try again", status=503
            )
        after = await self.queue.get(task_id) or task
        await self.audit.record(
            by,
            "task.redeliver",
            task_id,
            {
                "delivered": outcome.delivered,
                "attempts": outcome.attempts,
                "last_delivery": after.last_delivery,
            },
        )
        return after
