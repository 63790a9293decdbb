"""The callback delivery schedule: which finished task's callback is due, and its attempts.

A finished task with a `callback_url` is put on the schedule in the same atomic step as its
status change (`WorkQueue.finish`); deliverers claim due entries under a short lease, so two
gateways never POST the same attempt twice, and record each attempt's outcome.
"""

from __future__ import annotations

from typing import Protocol

from app.tasks.base import DeliveryOutcome, Task


class DeliverySchedule(Protocol):
    async def schedule_delivery(self, task_id: str, due_at: float) -> None: ...

    async def claim_due_deliveries(
        self, now: float, limit: int, *, lease_s: float = 60.0
    ) -> list[Task]:
        """Tasks whose delivery is due, each pushed `lease_s` into the future so no other
        deliverer takes it while this one POSTs (a crash mid-POST means a retry later)."""
        ...

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
        """Count one attempt. Delivered -> done; else `next_due` -> retry then; else (None)
        -> undelivered for good. None if the task is unknown."""
        ...
