"""Signed callback deliveries to a real HTTP receiver on 127.0.0.1, with retries."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import orjson
import pytest

from app.core.config import CallbacksConfig
from app.media.fetch import GuardedFetcher
from app.tasks.base import CounterMetrics, Task, TaskQueue
from app.tasks.delivery import CallbackDeliverer, backoff_delay, callback_body, min_schedule_s
from app.tasks.signing import verify
from app.tasks.worker import TaskWorker
from tests.support.net import free_port
from tests.tasks.conftest import Receiver, eventually, new_task

SECRET = "whsec_test_secret"
RESULT = {"created": 1721626477, "data": [{"b64_json": "aGVsbG8="}]}
FAST = CallbacksConfig(max_attempts=3, backoff_base_s=0.05, backoff_max_s=0.2, timeout_s=2)


async def _secret(key_id: str) -> str | None:
    return SECRET if key_id == "key_test" else None


async def _succeed(task: Task, payload: bytes) -> tuple[dict | None, dict | None]:
    return RESULT, None


@pytest.fixture
async def running(
    queue: TaskQueue, fetcher: GuardedFetcher
) -> AsyncIterator[tuple[CallbackDeliverer, CounterMetrics]]:
    """A worker and a deliverer running in the background against `queue`."""
    metrics = CounterMetrics()
    deliverer = CallbackDeliverer(queue, fetcher, _secret, FAST, metrics=metrics, poll_s=0.02)
    worker = TaskWorker(
        queue, _succeed, deliverer, worker_id="w1", lease_s=5, block_s=0.05, metrics=metrics
    )
    stop = asyncio.Event()
    loops = [asyncio.create_task(worker.run(stop)), asyncio.create_task(deliverer.run(stop))]
    yield deliverer, metrics
    stop.set()
    await asyncio.wait_for(asyncio.gather(*loops), timeout=10)


async def _final(queue: TaskQueue, task_id: str) -> Task:
    async def settled() -> bool:
        t = await queue.get(task_id)
        return t is not None and (t.delivered or t.undelivered)

    await eventually(settled)
    got = await queue.get(task_id)
    assert got is not None
    return got


def test_default_policy_meets_the_documented_promise() -> None:
    default = CallbacksConfig()
    assert default.max_attempts >= 6
    assert min_schedule_s(default) >= 600
    delays = [backoff_delay(n, default, rand=0.0) for n in range(1, default.max_attempts)]
    assert delays == [10, 20, 40, 80, 160, 320, 600]
    assert all(0.9 * d <= backoff_delay(n, default) <= d for n, d in enumerate(delays, start=1))


async def test_delivered_on_the_third_attempt(
    queue: TaskQueue, receiver: Receiver, running: tuple[CallbackDeliverer, CounterMetrics]
) -> None:
    receiver.statuses = [500, 500, 200]
    task = new_task(receiver.url)
    await queue.enqueue(task, b"p")
    got = await _final(queue, task.id)
    assert got.delivered and not got.undelivered and got.delivery_attempts == 3
    assert got.to_public()["callback"] == {"delivered": True, "attempts": 3, "state": "delivered"}
    assert got.last_delivery is not None and got.last_delivery["status_code"] == 200
    assert len(receiver.received) == 3
    assert running[1].deliveries == {"retry": 2, "delivered": 1}
    assert running[1].tasks == {"succeeded": 1}

    headers, body = receiver.received[-1]
    assert headers["content-type"] == "application/json"
    assert verify(SECRET, body, headers["x-imagegate-signature"])
    assert orjson.loads(body) == {
        "success": True,
        "task_id": task.id,
        "trace_id": task.trace_id,
        "data": RESULT,
    }
    # each attempt is signed afresh over the same body
    assert all(b == body for _, b in receiver.received)
    assert all(verify(SECRET, b, h["x-imagegate-signature"]) for h, b in receiver.received)


async def test_unreachable_receiver_ends_undelivered(
    queue: TaskQueue, running: tuple[CallbackDeliverer, CounterMetrics]
) -> None:
    task = new_task(f"http://127.0.0.1:{free_port()}/hook")  # nothing listens there
    await queue.enqueue(task, b"p")
    got = await _final(queue, task.id)
    assert got.undelivered and not got.delivered and got.delivery_attempts == FAST.max_attempts
    assert got.status == "succeeded" and got.result == RESULT  # still gettable
    assert got.last_delivery is not None and "error" in got.last_delivery
    assert got.to_public()["callback"]["state"] == "undelivered"
    assert running[1].deliveries == {"retry": 2, "undelivered": 1}


async def test_failure_body_and_revoked_key(
    queue: TaskQueue, fetcher: GuardedFetcher, receiver: Receiver
) -> None:
    deliverer = CallbackDeliverer(queue, fetcher, _secret, FAST)
    task = new_task(receiver.url)
    gone = new_task(receiver.url, key_id="key_revoked")
    for t in (task, gone):
        await queue.enqueue(t, b"p")
        await queue.claim("w1", lease_s=30, now=time.time())
        error = {"code": "moderation_blocked", "message": "blocked", "type": "x", "param": None}
        await queue.finish(t.id, error=error, now=time.time())
    assert await deliverer.run_once() == 2
    assert len(receiver.received) == 1  # nothing is sent unsigned
    headers, body = receiver.received[0]
    assert verify(SECRET, body, headers["x-imagegate-signature"])
    assert orjson.loads(body) == {
        "success": False,
        "task_id": task.id,
        "trace_id": task.trace_id,
        "error": {"code": "moderation_blocked", "message": "blocked"},
    }
    revoked = await queue.get(gone.id)
    assert revoked is not None and revoked.undelivered and revoked.delivery_attempts == 1


def test_callback_body_is_compact_json() -> None:
    task = new_task("http://x")
    task.status, task.result = "succeeded", RESULT
    assert callback_body(task).startswith(b'{"success":true,"task_id":')
