"""Asynchronous edit tasks: durable queue, payload framing, signed callbacks, workers.

What clients see is documented in docs/API.md, "Asynchronous edits".

`base` holds the contract (`TaskQueue`, `Task`), `redis_queue` / `sqlite_queue` its two
implementations, `worker` runs tasks, `delivery` POSTs their outcomes to callback URLs.
"""

from app.tasks.base import (
    Claimed,
    CounterMetrics,
    DeliveryOutcome,
    IdemState,
    NullMetrics,
    Task,
    TaskMetrics,
    TaskQueue,
)

__all__ = [
    "Claimed",
    "CounterMetrics",
    "DeliveryOutcome",
    "IdemState",
    "NullMetrics",
    "Task",
    "TaskMetrics",
    "TaskQueue",
]
