"""The worker: handler failures, a worker killed mid-task, a clean stop."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from pathlib import Path

from app.core.config import Settings, load_config
from app.core.errors import GatewayError
from app.domain.metering import Meter
from app.domain.pricing import quote
from app.store.base import ApiKey, UsageQuery, hash_secret
from app.store.redis_store import RedisStore
from app.store.sqlite_store import SQLiteStore
from app.tasks.base import CounterMetrics, Task, TaskQueue
from app.tasks.redis_queue import RedisTaskQueue
from app.tasks.worker import TaskWorker
from tests.support.redis_server import RedisServer
from tests.tasks.conftest import QueueFactory, eventually, new_task

Result = tuple[dict | None, dict | None]


async def _done(queue: TaskQueue, task_id: str) -> Task:
    async def finished() -> bool:
        t = await queue.get(task_id)
        return t is not None and t.done

    await eventually(finished)
    got = await queue.get(task_id)
    assert got is not None
    return got


async def test_handler_failures_fail_the_task_not_the_worker(queue: TaskQueue) -> None:
    async def handler(task: Task, payload: bytes) -> Result:
        if payload == b"crash":
            raise RuntimeError("boom: secret internals")
        if payload == b"gateway":
            raise GatewayError("upstream_timeout", "the upstream timed out")
        if payload == b"nothing":
            return None, None
        return {"echo": payload.decode()}, None

    metrics = CounterMetrics()
    worker = TaskWorker(queue, handler, worker_id="w1", lease_s=5, metrics=metrics)
    tasks = {p: new_task() for p in ("crash", "gateway", "nothing", "ok")}
    for payload, task in tasks.items():
        await queue.enqueue(task, payload.encode())
    while await worker.run_one():
        pass
    got = {p: await queue.get(t.id) for p, t in tasks.items()}
    assert got["crash"] is not None and got["crash"].error == {
        "code": "api_error",
        "message": "the task failed unexpectedly",
    }
    assert got["gateway"] is not None and got["gateway"].error == {
        "code": "upstream_timeout",
        "message": "the upstream timed out",
    }
    assert got["nothing"] is not None and got["nothing"].status == "failed"
    assert got["ok"] is not None and got["ok"].result == {"echo": "ok"}
    assert metrics.tasks == {"failed": 3, "succeeded": 1}
    assert await queue.queue_depth() == 0


async def test_killed_worker_task_is_rerun_and_charged_once(
    make_queue: QueueFactory, redis_server: RedisServer, tmp_path: Path
) -> None:
    """Worker A settles the charge, then dies before finishing; B reruns it after the lease.
    The charge is read back from the real metering store of the same backend."""
    queue_a, queue_b = make_queue(), make_queue()  # two "processes"
    redis = isinstance(queue_a, RedisTaskQueue)
    if redis:  # (the queue may be on the cluster; the store here is the single server)
        redis_server.flushall()
    store = RedisStore(redis_server.url) if redis else SQLiteStore(tmp_path / "store.db")
    config = load_config(Settings())
    meter = Meter(store, config)
    key = ApiKey("key_w", "w", hash_secret("ig-w"), "ig-w", 1_000_000, "whsec", time.time())
    await store.create_key(key)
    price = quote(config.models["gpt-image-1"], None, 1)
    seen: Counter[str] = Counter()
    hang = asyncio.Event()

    async def handler(task: Task, payload: bytes) -> Result:
        seen[task.id] += 1
        hold = meter.hold(
            reservation_id=task.id, key_id=key.id, model="gpt-image-1", quote=price,
            trace_id=task.trace_id,
        )  # fmt: skip
        async with hold:
            await hold.settle(1)
        if seen[task.id] == 1:
            await hang.wait()  # worker A stalls here and is then killed
        return {"data": [{"url": f"http://files/{task.id}_0.png"}]}, None

    lease = 0.4
    a = TaskWorker(queue_a, handler, worker_id="A", lease_s=lease, block_s=0.05)
    stop_a, stop_b = asyncio.Event(), asyncio.Event()
    task = new_task(key_id=key.id)
    await meter.admit(
        key, model="gpt-image-1", quote=price, reservation_id=task.id, trace_id=task.trace_id
    )  # what the submit did
    run_a = asyncio.create_task(a.run(stop_a))
    await queue_a.enqueue(task, b"p")

    async def a_started() -> bool:
        return seen[task.id] == 1

    await eventually(a_started)
    run_a.cancel()  # SIGKILL stand-in: no finish, no release, no more heartbeats
    await asyncio.gather(run_a, return_exceptions=True)

    b = TaskWorker(queue_b, handler, worker_id="B", lease_s=lease, block_s=0.05)
    started = time.monotonic()
    run_b = asyncio.create_task(b.run(stop_b))
    got = await _done(queue_b, task.id)
    assert time.monotonic() - started >= lease * 0.5  # B waited for A's lease to lapse
    stop_b.set()
    await asyncio.wait_for(run_b, timeout=10)

    assert got.status == "succeeded" and got.attempts == 2
    assert seen[task.id] == 2
    after = await store.get_key(key.id)
    assert after is not None and after.balance == 1_000_000 - price.charge(1)
    rows = await store.usage_records(UsageQuery(key_id=key.id))
    assert [(r.status, r.credits) for r in rows] == [("succeeded", price.charge(1))]
    await store.close()


async def test_heartbeats_keep_a_slow_task_from_being_stolen(make_queue: QueueFactory) -> None:
    queue_a, queue_b = make_queue(), make_queue()
    runs: Counter[str] = Counter()
    leases: list[float] = []

    async def slow(task: Task, payload: bytes) -> Result:
        runs[task.id] += 1
        await asyncio.sleep(1.0)  # longer than the lease; heartbeats renew it
        return {"ok": True}, None

    async def on_lease(task: Task, lease_until: float) -> None:
        leases.append(lease_until)

    a = TaskWorker(queue_a, slow, worker_id="A", lease_s=0.3, block_s=0.05, on_lease=on_lease)
    task = new_task()
    await queue_a.enqueue(task, b"p")
    run_a = asyncio.create_task(a.run_one(block_s=1))
    await asyncio.sleep(0.5)
    assert await queue_b.claim("B", lease_s=0.3, now=time.time()) is None
    await run_a
    got = await queue_a.get(task.id)
    assert got is not None and got.status == "succeeded" and runs[task.id] == 1
    assert len(leases) >= 3 and leases == sorted(leases)  # claim, then each renewal


async def test_stop_drains_then_releases(queue: TaskQueue) -> None:
    gate = asyncio.Event()

    async def handler(task: Task, payload: bytes) -> Result:
        if payload == b"stuck":
            await asyncio.sleep(60)
        await gate.wait()
        return {"ok": True}, None

    worker = TaskWorker(
        queue,
        handler,
        worker_id="w1",
        lease_s=30,
        concurrency=2,
        block_s=0.05,
        shutdown_grace_s=0.3,
    )
    quick, stuck = new_task(), new_task()
    await queue.enqueue(quick, b"quick")
    await queue.enqueue(stuck, b"stuck")
    stop = asyncio.Event()
    run = asyncio.create_task(worker.run(stop))

    async def both_running() -> bool:
        ts = [await queue.get(t.id) for t in (quick, stuck)]
        return all(t is not None and t.status == "running" for t in ts)

    await eventually(both_running)
    stop.set()
    gate.set()  # the quick one finishes within the grace period
    await asyncio.wait_for(run, timeout=5)
    done = await queue.get(quick.id)
    back = await queue.get(stuck.id)
    assert done is not None and done.status == "succeeded"
    assert back is not None and back.status == "queued"  # released, not left to its lease
    again = await queue.claim("w2", lease_s=30, now=time.time())
    assert again is not None and again.task.id == stuck.id
