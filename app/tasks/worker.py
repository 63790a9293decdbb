"""The task worker: claim, run the handler under a renewed lease, finish, hand off delivery.

The worker knows nothing about edits. The handler (the edit service's) turns a task and its
payload into `(result, error)` and does the metering itself -- settle keyed by the task id, so
a task that runs twice (its first worker died after the upstream call) is still charged once.

Crash behaviour, by design:
- the handler raises -> the task fails with `api_error` (a `GatewayError` keeps its code and
  message); the worker goes on;
- the worker process dies -> its leases stop being renewed and the tasks go to the next
  `claim` after `lease_s`;
- `stop` is set -> no new claims; running tasks get `shutdown_grace_s` to finish, the rest are
  released at once for another worker (not left to their lease);
- `run()` itself is cancelled -> treated like a crash (nothing is released).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from app.core.errors import GatewayError
from app.tasks.base import Claimed, NullMetrics, Task, TaskMetrics
from app.tasks.delivery import CallbackDeliverer
from app.tasks.queue import WorkQueue

log = logging.getLogger("imagegate.tasks.worker")

Result = tuple[dict[str, Any] | None, dict[str, Any] | None]
Handler = Callable[[Task, bytes], Awaitable[Result]]
LeaseHook = Callable[[Task, float], Awaitable[object]]
FinishHook = Callable[[Task], Awaitable[object]]

INTERNAL_ERROR = {"code": "api_error", "message": "the task failed unexpectedly"}


class TaskWorker:
    """Runs `concurrency` claim loops against one queue until stopped."""

    def __init__(
        self,
        queue: WorkQueue,
        handler: Handler,
        deliverer: CallbackDeliverer | None = None,
        *,
        worker_id: str,
        lease_s: float,
        concurrency: int = 1,
        block_s: float = 1.0,
        heartbeat_s: float | None = None,
        on_lease: LeaseHook | None = None,
        on_finish: FinishHook | None = None,
        metrics: TaskMetrics | None = None,
        clock: Callable[[], float] = time.time,
        shutdown_grace_s: float = 10.0,
        purge_every_s: float = 600.0,
    ) -> None:
        """`worker_id` names this process to the queue (its Redis consumer name), e.g.
        f"{hostname}-{pid}-{random}"; the `concurrency` loops share it. Every worker of a
        deployment must use the same `lease_s` (`tasks.lease_s`); heartbeats run every
        `heartbeat_s` (default lease/3). `on_lease(task, lease_until)` runs after each claim
        and each renewal -- the place to push the task's credit reservation out
        (`store.extend`) while it runs; its failures are logged, never fatal."""
        self.queue = queue
        self.handler = handler
        self.deliverer = deliverer
        self.worker_id = worker_id
        self.lease_s = lease_s
        self.concurrency = max(1, concurrency)
        self.block_s = block_s
        self.heartbeat_s = heartbeat_s if heartbeat_s is not None else lease_s / 3
        self.on_lease = on_lease
        self.on_finish = on_finish
        self.metrics = metrics or NullMetrics()
        self.clock = clock
        self.shutdown_grace_s = shutdown_grace_s
        self.purge_every_s = purge_every_s

    # --- one task
    async def _renew(self, task: Task, done: asyncio.Event) -> None:
        while True:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(done.wait(), timeout=self.heartbeat_s)
            if done.is_set():
                return
            now = self.clock()
            try:
                held = await self.queue.heartbeat(task.id, self.worker_id, now=now)
            except Exception:
                log.warning("lease renewal failed", extra={"task_id": task.id}, exc_info=True)
                continue
            if not held:
                # Another worker took it (we stalled past the lease). Let the handler finish:
                # finish() is first-wins and settle is once per task, so this is only waste.
                log.warning("lease lost", extra={"task_id": task.id, "trace_id": task.trace_id})
                return
            if done.is_set():
                return
            await self._lease_hook(task, now + self.lease_s)

    async def _lease_hook(self, task: Task, lease_until: float) -> None:
        if self.on_lease is None:
            return
        try:
            await self.on_lease(task, lease_until)
        except Exception:
            log.warning("on_lease hook failed", extra={"task_id": task.id}, exc_info=True)

    async def _call_handler(self, claimed: Claimed) -> Result:
        task = claimed.task
        try:
            result, error = await self.handler(task, claimed.payload)
        except GatewayError as exc:
            return None, {"code": exc.code, "message": exc.message}
        except Exception:
            log.exception(
                "task handler crashed", extra={"task_id": task.id, "trace_id": task.trace_id}
            )
            return None, dict(INTERNAL_ERROR)
        if result is None and error is None:
            return None, dict(INTERNAL_ERROR)
        return result, error

    async def process(self, claimed: Claimed) -> bool:
        """Run one claimed task to its end. True if this run's outcome was the one recorded."""
        task = claimed.task
        await self._lease_hook(task, self.clock() + self.lease_s)
        done = asyncio.Event()
        renew = asyncio.create_task(self._renew(task, done))
        try:
            result, error = await self._call_handler(claimed)
        finally:
            # Stop renewing by event, not only by cancel: on Python 3.11 a cancel that lands
            # inside a client library's timeout block can be swallowed, and an unbounded
            # `await renew` then hung the task forever (seen after a kill -9 recovery).
            done.set()
            renew.cancel()
            await asyncio.wait({renew}, timeout=1)
        first = await self.queue.finish(task.id, result=result, error=error, now=self.clock())
        if self.on_finish is not None:
            try:
                await self.on_finish(task)
            except Exception:
                log.warning("on_finish hook failed", extra={"task_id": task.id}, exc_info=True)
        if first:
            self.metrics.task_finished("failed" if error is not None else "succeeded")
            if task.callback_url and self.deliverer is not None:
                self.deliverer.kick()
        return first

    async def run_one(self, *, block_s: float = 0.0) -> bool:
        """Claim and process at most one task (tests, and `imagegate worker --once`)."""
        claimed = await self.queue.claim(
            self.worker_id, lease_s=self.lease_s, now=self.clock(), block_s=block_s
        )
        if claimed is None:
            return False
        await self.process(claimed)
        return True

    # --- loops
    async def _loop(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            try:
                claimed = await self.queue.claim(
                    self.worker_id, lease_s=self.lease_s, now=self.clock(), block_s=self.block_s
                )
            except Exception:
                log.exception("claiming a task failed")
                await _sleep_or_stop(stop, 1.0)
                continue
            if claimed is None:
                continue
            try:
                await self.process(claimed)
            except asyncio.CancelledError:
                if stop.is_set():  # the grace period ran out: hand it over now
                    with contextlib.suppress(Exception):
                        await self.queue.release(claimed.task.id, self.worker_id)
                raise
            except Exception:  # finish() failed (store down): the lease brings the task back
                log.exception("finishing a task failed", extra={"task_id": claimed.task.id})
                await _sleep_or_stop(stop, 1.0)

    async def _maintenance(self, stop: asyncio.Event) -> None:
        while not await _sleep_or_stop(stop, self.purge_every_s):
            try:
                await self.queue.purge(self.clock())
            except Exception:
                log.warning("purging old tasks failed", exc_info=True)

    async def run(self, stop: asyncio.Event) -> None:
        """Work until `stop` is set, then drain for `shutdown_grace_s` and release the rest."""
        loops = [asyncio.create_task(self._loop(stop)) for _ in range(self.concurrency)]
        maintenance = asyncio.create_task(self._maintenance(stop))
        try:
            await stop.wait()
            _, pending = await asyncio.wait(loops, timeout=self.shutdown_grace_s + self.block_s)
            for t in pending:
                t.cancel()
            await asyncio.gather(*pending, maintenance, return_exceptions=True)
        except asyncio.CancelledError:
            for t in [*loops, maintenance]:
                t.cancel()
            await asyncio.gather(*loops, maintenance, return_exceptions=True)
            raise


async def _sleep_or_stop(stop: asyncio.Event, seconds: float) -> bool:
    """Sleep up to `seconds`; True if `stop` was set meanwhile."""
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), timeout=seconds)
    return stop.is_set()
