"""Callback delivery: POST a finished task's outcome to its `callback_url`, signed, with retries.

Deliveries are driven by the queue's due-set, not by the worker that ran the task, so any
gateway or worker process may make any attempt and a crash loses nothing: `finish` schedules
the first attempt atomically, `claim_due_deliveries` leases due ones (no double POSTs between
processes), and `record_delivery` counts the attempt and sets the next due time.

Retry policy: after the n-th failed attempt (non-2xx, timeout, unreachable) wait
`min(backoff_max_s, backoff_base_s * 2**(n-1))`, shortened by up to `JITTER` (so retries from
many tasks spread out, while the schedule never gets shorter than `min_schedule_s`), until
`max_attempts`, then mark the task undelivered. The defaults (8 attempts, 10 s base, 600 s cap)
span at least 0.9 * 1230 s > 18 minutes, over the documented promise of at least 6 attempts
over 10 minutes (docs/API.md, "Callbacks").
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

import orjson

from app.core.config import CallbacksConfig
from app.tasks.base import DeliveryOutcome, NullMetrics, Task, TaskMetrics
from app.tasks.schedule import DeliverySchedule
from app.tasks.signing import HEADER, sign

log = logging.getLogger("imagegate.tasks.delivery")

JITTER = 0.1  # each delay is shortened by a random 0..10%


class CallbackPoster(Protocol):
    """What delivery needs from the guarded fetcher (`app.media.fetch.GuardedFetcher`)."""

    async def post(
        self, url: str, *, body: bytes, headers: dict[str, str], timeout_s: float
    ) -> int: ...


SecretLookup = Callable[[str], Awaitable[str | None]]


def backoff_delay(attempt: int, config: CallbacksConfig, *, rand: float | None = None) -> float:
    """Seconds to wait after the `attempt`-th (1-based) failed POST."""
    nominal = min(config.backoff_max_s, config.backoff_base_s * 2 ** min(attempt - 1, 62))
    return nominal * (1 - JITTER * (random.random() if rand is None else rand))


def min_schedule_s(config: CallbacksConfig) -> float:
    """The shortest time from the first to the last attempt this config can produce."""
    return sum(backoff_delay(n, config, rand=1.0) for n in range(1, config.max_attempts))


def callback_body(task: Task) -> bytes:
    """The exact JSON POSTed for a finished task (documented in docs/API.md, "Callbacks")."""
    body: dict[str, Any] = {
        "success": task.status == "succeeded",
        "task_id": task.id,
        "trace_id": task.trace_id,
    }
    if task.status == "succeeded":
        body["data"] = task.result
    else:
        err = task.error or {}
        body["error"] = {
            "code": err.get("code", "api_error"),
            "message": err.get("message", "the task failed"),
        }
    return orjson.dumps(body)


class CallbackDeliverer:
    """Makes due callback attempts; `run(stop)` is the background loop."""

    def __init__(
        self,
        queue: DeliverySchedule,
        fetcher: CallbackPoster,
        get_secret: SecretLookup,
        config: CallbacksConfig,
        *,
        metrics: TaskMetrics | None = None,
        clock: Callable[[], float] = time.time,
        poll_s: float = 1.0,
        batch: int = 32,
        concurrency: int = 16,
    ) -> None:
        self.queue = queue
        self.fetcher = fetcher
        self.get_secret = get_secret
        self.config = config
        self.metrics = metrics or NullMetrics()
        self.clock = clock
        self.poll_s = poll_s
        self.batch = batch
        self._sem = asyncio.Semaphore(concurrency)
        self._kick = asyncio.Event()
        # a claimed attempt is someone else's again after this (a crash mid-POST -> retry)
        # Long enough for one POST (its timeout) to finish; short enough that a delivery
        # claimed by a process that died is retried soon.
        self.claim_lease_s = config.timeout_s * 2 + 5

    def kick(self) -> None:
        """Look for due deliveries now (a task in this process just finished)."""
        self._kick.set()

    async def attempt(self, task: Task) -> DeliveryOutcome | None:
        """One signed POST for `task` and its bookkeeping. None if nothing was recorded (the
        secret could not be looked up: the claim's lease brings the attempt back later)."""
        if not task.callback_url:  # scheduled by mistake: nothing to deliver, ever
            return await self.queue.record_delivery(
                task.id, error="no callback_url", delivered=False, next_due=None, now=self.clock()
            )
        try:
            secret = await self.get_secret(task.key_id)
        except Exception:
            log.warning("callback secret lookup failed", extra={"task_id": task.id})
            return None
        now = self.clock()
        if secret is None:  # the key was revoked: nobody to sign for, nobody to tell
            outcome = await self.queue.record_delivery(
                task.id, error="api key no longer exists", delivered=False, next_due=None, now=now
            )
            self._count(task, outcome)
            return outcome
        body = callback_body(task)
        headers = {
            "content-type": "application/json",
            "user-agent": "imagegate-callback/1",
            HEADER: sign(secret, body, int(now)),
            "x-imagegate-task-id": task.id,
            "x-request-id": task.trace_id,
        }
        status: int | None = None
        error: str | None = None
        try:
            status = await self.fetcher.post(
                task.callback_url, body=body, headers=headers, timeout_s=self.config.timeout_s
            )
        except Exception as exc:  # unreachable, refused, timed out, blocked by the URL guard
            error = f"{type(exc).__name__}: {exc}"[:300]
        ok = status is not None and 200 <= status < 300
        attempt_no = task.delivery_attempts + 1
        next_due = None
        if not ok and attempt_no < self.config.max_attempts:
            next_due = self.clock() + backoff_delay(attempt_no, self.config)
        outcome = await self.queue.record_delivery(
            task.id,
            status_code=status,
            error=error,
            delivered=ok,
            next_due=next_due,
            now=self.clock(),
        )
        self._count(task, outcome)
        return outcome

    def _count(self, task: Task, outcome: DeliveryOutcome | None) -> None:
        if outcome is None:
            return
        kind = (
            "delivered" if outcome.delivered else "undelivered" if outcome.undelivered else "retry"
        )
        self.metrics.delivery(kind)
        level = logging.WARNING if kind == "undelivered" else logging.INFO
        log.log(
            level,
            "callback %s",
            kind,
            extra={"task_id": task.id, "trace_id": task.trace_id, "attempts": outcome.attempts},
        )

    async def _guarded(self, task: Task) -> None:
        async with self._sem:
            try:
                await self.attempt(task)
            except Exception:  # the store failed mid-way; the claim lease retries it
                log.exception("callback attempt failed", extra={"task_id": task.id})

    async def run_once(self) -> int:
        """Claim what is due and attempt it all; returns how many were attempted."""
        tasks = await self.queue.claim_due_deliveries(
            self.clock(), self.batch, lease_s=self.claim_lease_s
        )
        await asyncio.gather(*(self._guarded(t) for t in tasks))
        return len(tasks)

    async def run(self, stop: asyncio.Event) -> None:
        """Poll for due deliveries until `stop` is set. Never raises on store errors."""
        while not stop.is_set():
            self._kick.clear()
            try:
                n = await self.run_once()
            except Exception:
                log.exception("claiming due callbacks failed")
                n = 0
            if n >= self.batch:
                continue  # more may be due right now
            waiters = [asyncio.ensure_future(stop.wait()), asyncio.ensure_future(self._kick.wait())]
            try:
                await asyncio.wait(
                    waiters, timeout=self.poll_s, return_when=asyncio.FIRST_COMPLETED
                )
            finally:
                for w in waiters:
                    w.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await asyncio.gather(*waiters, return_exceptions=True)
