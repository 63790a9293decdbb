"""Asynchronous edit tasks (SPEC §4): durable queue, payload framing, signed callbacks, workers.

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
