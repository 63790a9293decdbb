"""The types behind asynchronous edits, shared by Redis and SQLite.

What clients see is documented in docs/API.md, "Asynchronous edits".

A task is one edit request answered early with a `task_id` and run later by a worker. The
queue keeps three things per task: the public record (`Task`: status, result or error,
callback bookkeeping), the request payload (opaque bytes, see `payload.py`, deleted once the
task finishes) and its place in the work queue. Everything needed to resume after a crash
lives in the store, never in a process:

- a claimed task carries a *lease*: a worker renews it with `heartbeat` while the handler
  runs, and a running task not renewed for longer than a claimer's `lease_s` (its worker
  died) is handed to that claimer. All workers of a deployment use one `lease_s`
  (`tasks.lease_s`), so "the lease" is one number; the claimer's value is what counts;
- `finish` is first-wins and idempotent, so a task that ran twice (after a reclaim) still has
  one outcome; charging exactly once is the metering store's job (`settle` keyed by task id);
- a finished task with a `callback_url` is scheduled for delivery in the same atomic step as
  the status change, so a crash between the two cannot lose a callback;
- delivery claims are leased too, so two gateways never POST the same attempt twice.

Times are unix seconds passed in by the caller (`now`) so tests can drive them. (Redis leases
are the one exception: they are stream idle times measured by the Redis server clock, which
also makes them immune to clock skew between worker machines.)
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any, Literal, Protocol

import orjson

TaskStatus = Literal["queued", "running", "succeeded", "failed"]
FINAL_STATUSES: frozenset[str] = frozenset({"succeeded", "failed"})


#: How long a finished task (queued or synchronous) can be looked up.
TASK_RETENTION_S = 7 * 86400


@dataclass(slots=True)
class Task:
    """One asynchronous edit. `attempts` counts runs (claims); `delivery_attempts` counts POSTs."""

    id: str
    key_id: str
    trace_id: str
    model: str
    created: float
    status: TaskStatus = "queued"
    started: float | None = None
    finished: float | None = None
    callback_url: str | None = None
    result: dict[str, Any] | None = None
    error: dict[str, Any] | None = None
    delivered: bool = False
    delivery_attempts: int = 0
    undelivered: bool = False
    attempts: int = 0
    # where the last delivery attempt ended: {"at", "status_code"} or {"at", "error"}
    last_delivery: dict[str, Any] | None = None

    @property
    def done(self) -> bool:
        return self.status in FINAL_STATUSES

    def callback_state(self) -> str:
        """none | pending | delivered | undelivered -- one word for logs and the public view."""
        if not self.callback_url:
            return "none"
        if self.delivered:
            return "delivered"
        return "undelivered" if self.undelivered else "pending"

    def to_public(self) -> dict[str, Any]:
        """The `GET /v1/tasks/{task_id}` body (docs/API.md); `result` or `error` only once final."""
        out: dict[str, Any] = {
            "task_id": self.id,
            "trace_id": self.trace_id,
            "model": self.model,
            "status": self.status,
            "created": int(self.created),
            "finished": int(self.finished) if self.finished is not None else None,
        }
        if self.status == "succeeded":
            out["result"] = self.result
        elif self.status == "failed":
            out["error"] = self.error
        out["callback"] = {
            "delivered": self.delivered,
            "attempts": self.delivery_attempts,
            "state": self.callback_state(),
        }
        return out


def task_record_bytes(task: Task) -> bytes:
    """A finished task as the JSON a task record holds (see `task_from_record`)."""
    if task.status not in FINAL_STATUSES:
        raise ValueError("only finished tasks are recorded")
    return orjson.dumps({name: getattr(task, name) for name in _TASK_FIELDS})


def task_from_record(raw: bytes) -> Task:
    return Task(**orjson.loads(raw))


_TASK_FIELDS = tuple(f.name for f in fields(Task))


@dataclass(slots=True)
class Claimed:
    """A task handed to one worker, with the payload it was enqueued with."""

    task: Task
    payload: bytes


@dataclass(slots=True)
class DeliveryOutcome:
    """What `record_delivery` stored, for the caller's logs and metrics."""

    delivered: bool
    undelivered: bool
    attempts: int
    next_due: float | None = None


class TaskMetrics(Protocol):
    """Where workers and deliverers report outcomes; the lead wires it to `/metrics`.

    Queue depth is a gauge read on scrape: `await queue.queue_depth()`.
    """

    def task_finished(self, status: str) -> None:
        """status: succeeded | failed."""
        ...

    def delivery(self, outcome: str) -> None:
        """outcome: delivered | retry | undelivered."""
        ...


class NullMetrics:
    def task_finished(self, status: str) -> None:
        pass

    def delivery(self, outcome: str) -> None:
        pass


class CounterMetrics:
    """In-memory counters (tests, and a simple source for a Prometheus collector)."""

    def __init__(self) -> None:
        self.tasks: dict[str, int] = {}
        self.deliveries: dict[str, int] = {}

    def task_finished(self, status: str) -> None:
        self.tasks[status] = self.tasks.get(status, 0) + 1

    def delivery(self, outcome: str) -> None:
        self.deliveries[outcome] = self.deliveries.get(outcome, 0) + 1


def delivery_note(now: float, status_code: int | None, error: str | None) -> dict[str, Any]:
    """What a task keeps about its last delivery attempt (both queues store the same)."""
    last: dict[str, Any] = {"at": now}
    if status_code is not None:
        last["status_code"] = status_code
    if error is not None:
        last["error"] = error
    return last


# The contracts live one concern per file; `TaskQueue` is all of them (both implementations).
from app.tasks.idempotency import IdemKind, IdempotencyRecords, IdemState  # noqa: E402
from app.tasks.queue import TaskQueue, WorkQueue  # noqa: E402
from app.tasks.schedule import DeliverySchedule  # noqa: E402

__all__ = [
    "FINAL_STATUSES", "TASK_RETENTION_S", "Claimed", "CounterMetrics", "DeliveryOutcome",
    "DeliverySchedule", "IdemKind", "IdemState", "IdempotencyRecords", "NullMetrics", "Task",
    "TaskMetrics", "TaskQueue", "TaskStatus", "WorkQueue", "delivery_note", "task_from_record",
    "task_record_bytes",
]  # fmt: skip
