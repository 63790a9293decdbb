"""A queued task is charged exactly once if and only if its result is delivered -- whatever
happened to earlier runs of it. Real stores (Redis and SQLite), real simulator, the real
service and worker; only the process deaths are played by cancelling and not finishing.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from app.core.config import Settings, TasksConfig
from app.domain.audit import Actor
from app.domain.edit import EditRequest, ImageRef
from app.gateway import Gateway
from app.service import EditContext
from app.simulator import create_simulator_app
from app.store.base import ApiKey, UsageQuery
from app.tasks.base import Task
from app.tasks.worker import TaskWorker
from tests.e2e.conftest import gateway_config
from tests.support import images
from tests.support.net import ThreadedServer
from tests.support.redis_server import RedisServer

CREDITS = 1_000_000
ACTOR = Actor("test", "cli")
PRICE = 100_000  # gpt-image-1, one image, in micro-credits


class Rig:
    def __init__(self, gw: Gateway, sim: ThreadedServer) -> None:
        self.gw, self.sim = gw, sim

    async def key(self, credits: int = CREDITS) -> ApiKey:
        return (await self.gw.keys.create(by=ACTOR, name="k", credits=credits)).key

    async def submit(self, key: ApiKey) -> str:
        req = EditRequest(
            model="gpt-image-1",
            prompt="make it blue",
            image_refs=[ImageRef("image", data=images.png(32, 32))],
            body_kind="multipart",
            callback_url="http://127.0.0.1:9/hook",
        )
        reply = await self.gw.service.edit(key, req, EditContext("trace-1", "http://gw"))
        assert reply.body is not None
        return str(reply.body["task_id"])

    async def balance(self, key: ApiKey) -> int:
        got = await self.gw.store.get_key(key.id)
        assert got is not None
        return got.balance

    async def rows(self, key: ApiKey) -> list[tuple[str, int]]:
        rows = await self.gw.store.usage_records(UsageQuery(key_id=key.id))
        return sorted((r.status, r.credits) for r in rows)

    def worker(self, name: str) -> TaskWorker:
        return TaskWorker(self.gw.tasks, self.gw.service.run_task, worker_id=name, lease_s=30)

    async def task(self, task_id: str) -> Task:
        task = await self.gw.tasks.get(task_id)
        assert task is not None
        return task

    def slow_upstream(self) -> None:
        fault = {"protocol": "openai", "kind": "latency", "delay_s": 5, "times": 1}
        httpx.post(self.sim.url + "/_sim/faults", json=fault, timeout=5)

    def upstream_calls(self) -> int:
        reqs = httpx.get(self.sim.url + "/_sim/requests", timeout=5).json()
        return len([r for r in reqs if r["protocol"] == "openai"])


@pytest.fixture(params=["redis", "sqlite"])
async def rig(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Rig]:
    redis = RedisServer(appendonly=False).start() if request.param == "redis" else None
    sim = ThreadedServer(create_simulator_app()).start()
    settings = Settings(
        data_dir=tmp_path,
        admin_key="admin",
        allow_private_urls=True,
        redis_url=redis.url if redis else None,
    )
    config = gateway_config(settings, sim.url, tasks=TasksConfig(workers=0, lease_s=30))
    gw = Gateway(settings, config)
    try:
        yield Rig(gw, sim)
    finally:
        await gw.aclose()
        sim.stop()
        if redis:
            redis.cleanup()


async def test_refunded_then_rerun_is_charged_on_delivery(rig: Rig) -> None:
    """Run A is given up mid-upstream (a shutdown past its grace) and refunds; run B delivers
    and must pay -- before this was fixed it delivered for free."""
    key = await rig.key()
    task_id = await rig.submit(key)
    assert await rig.balance(key) == CREDITS - PRICE  # reserved at submit
    rig.slow_upstream()
    claimed = await rig.gw.tasks.claim("A", lease_s=30, now=time.time())
    assert claimed is not None
    run_a = asyncio.create_task(rig.gw.service.run_task(claimed.task, claimed.payload))
    while rig.upstream_calls() == 0:
        await asyncio.sleep(0.02)
    run_a.cancel()
    await asyncio.gather(run_a, return_exceptions=True)
    assert await rig.balance(key) == CREDITS  # A refunded
    assert await rig.gw.tasks.release(task_id, "A")

    assert await rig.worker("B").run_one()
    task = await rig.task(task_id)
    assert task.status == "succeeded" and task.attempts == 2
    assert await rig.balance(key) == CREDITS - PRICE  # charged once, on delivery
    assert await rig.rows(key) == [("failed", 0), ("succeeded", PRICE)]


async def test_settled_then_rerun_succeeds_without_a_second_charge(rig: Rig) -> None:
    """Run A settles and dies before recording the outcome; run B finds the reservation
    already charged: the task succeeds (it used to show failed) and is not charged again."""
    key = await rig.key()
    task_id = await rig.submit(key)
    claimed = await rig.gw.tasks.claim("A", lease_s=30, now=time.time())
    assert claimed is not None
    result, error = await rig.gw.service.run_task(claimed.task, claimed.payload)
    assert error is None and result is not None  # ... and A dies before `finish`
    assert await rig.balance(key) == CREDITS - PRICE
    assert await rig.gw.tasks.release(task_id, "A")

    assert await rig.worker("B").run_one()
    task = await rig.task(task_id)
    assert task.status == "succeeded" and task.attempts == 2
    assert await rig.balance(key) == CREDITS - PRICE
    assert await rig.rows(key) == [("succeeded", PRICE)]


async def test_reservation_gone_and_balance_short_fails_visibly(rig: Rig) -> None:
    """The reservation expired while queued and the key spent its credits meanwhile: the
    task fails with 402's code, nothing is delivered, nothing is charged."""
    key = await rig.key(credits=PRICE)
    task_id = await rig.submit(key)
    assert await rig.gw.store.sweep(time.time() + 10**6) == 1  # expired and refunded
    await rig.gw.store.adjust_balance(key.id, -PRICE // 2, "spent elsewhere", time.time())
    calls = rig.upstream_calls()

    assert await rig.worker("B").run_one()
    task = await rig.task(task_id)
    assert task.status == "failed" and task.error is not None
    assert task.error["code"] == "insufficient_credits"
    assert rig.upstream_calls() == calls  # never sent upstream unfunded
    assert await rig.balance(key) == PRICE // 2
