"""The work queue: durable tasks, claimed under a renewed lease, finished once.

`TaskQueue` is the whole task store the gateway holds: this work queue, the callback delivery
schedule (`schedule.py`) and the `Idempotency-Key` records (`idempotency.py`). Records of
synchronous requests are not here: the metering store keeps them (`records.py`).
"""

from __future__ import annotations

from typing import Any, Protocol

from app.tasks.base import Claimed, Task
from app.tasks.idempotency import IdempotencyRecords
from app.tasks.schedule import DeliverySchedule


class WorkQueue(Protocol):
    """Durable tasks and their leases (see `base.py` for the crash rules)."""

    async def close(self) -> None: ...

    async def ping(self) -> bool: ...

    # --- work queue
    async def enqueue(self, task: Task, payload: bytes) -> None:
        """Store the task (status queued) and its payload and make it claimable, atomically."""
        ...

    async def claim(
        self, worker_id: str, *, lease_s: float, now: float, block_s: float = 0.0
    ) -> Claimed | None:
        """Take the oldest claimable task: one whose lease lapsed first, else a queued one.

        "Lapsed" means running with no claim or heartbeat for more than `lease_s`. Marks the
        task running, bumps `attempts`, starts its lease. Waits up to `block_s` for work;
        None when there is none.
        """
        ...

    async def heartbeat(self, task_id: str, worker_id: str, *, now: float) -> bool:
        """Renew the lease (call well within `lease_s`). False if the worker no longer holds
        it (it was reclaimed, released or finished)."""
        ...

    async def release(self, task_id: str, worker_id: str) -> bool:
        """Give a running task back at once (graceful shutdown), instead of waiting for its
        lease to lapse. False if the worker did not hold it."""
        ...

    async def finish(
        self,
        task_id: str,
        *,
        result: dict[str, Any] | None = None,
        error: dict[str, Any] | None = None,
        now: float,
    ) -> bool:
        """Record the outcome (error given -> failed, else succeeded), drop the payload, take the
        task off the work queue and, if it has a callback_url, schedule delivery at `now`.
        First call wins: False (and no change) if the task is already final or unknown."""
        ...

    async def get(self, task_id: str) -> Task | None: ...

    async def queue_depth(self) -> int:
        """Tasks not yet finished (queued or running), for the metrics gauge."""
        ...

    async def purge(self, now: float) -> int:
        """Drop finished tasks and idempotency records past their retention (SQLite; Redis
        uses key TTLs and returns 0). Returns how many tasks were removed."""
        ...


class TaskQueue(WorkQueue, DeliverySchedule, IdempotencyRecords, Protocol):
    """The task store: work queue + delivery schedule + idempotency records."""
