"""The TaskQueue contract, run against Redis and SQLite alike."""

from __future__ import annotations

import asyncio
import time

import pytest
from redis.asyncio import RedisCluster

from app.tasks.base import Task, TaskQueue
from app.tasks.redis_queue import RedisTaskQueue
from tests.support.redis_server import RedisServer
from tests.tasks.conftest import QueueFactory, new_task

RESULT = {"created": 1721626477, "data": [{"url": "http://files/x_0.png"}]}


async def test_enqueue_claim_finish_get(queue: TaskQueue) -> None:
    task = new_task("http://127.0.0.1:9/hook")
    await queue.enqueue(task, b"payload-bytes")
    got = await queue.get(task.id)
    assert got is not None and got.status == "queued" and got.attempts == 0
    assert got.to_public()["status"] == "queued"
    assert await queue.queue_depth() == 1

    claimed = await queue.claim("w1", lease_s=30, now=time.time())
    assert claimed is not None
    assert claimed.task.id == task.id and claimed.payload == b"payload-bytes"
    assert claimed.task.status == "running" and claimed.task.attempts == 1
    assert claimed.task.started is not None
    assert await queue.claim("w2", lease_s=30, now=time.time()) is None

    now = time.time()
    assert await queue.finish(task.id, result=RESULT, now=now) is True
    assert await queue.finish(task.id, error={"code": "x", "message": "y"}, now=now) is False
    done = await queue.get(task.id)
    assert done is not None and done.status == "succeeded" and done.result == RESULT
    assert done.error is None and done.finished == now
    assert await queue.queue_depth() == 0
    assert await queue.claim("w1", lease_s=30, now=time.time()) is None

    public = done.to_public()
    assert public["task_id"] == task.id and public["status"] == "succeeded"
    assert public["result"] == RESULT and "error" not in public
    assert public["created"] == int(task.created) and public["finished"] == int(now)
    assert public["callback"] == {"delivered": False, "attempts": 0, "state": "pending"}


async def test_failed_task_and_unknown_ids(queue: TaskQueue) -> None:
    task = new_task()
    await queue.enqueue(task, b"p")
    assert await queue.claim("w1", lease_s=30, now=time.time()) is not None
    error = {"code": "upstream_timeout", "message": "upstream timed out"}
    assert await queue.finish(task.id, error=error, now=time.time())
    got = await queue.get(task.id)
    assert got is not None
    public = got.to_public()
    assert public["status"] == "failed" and public["error"] == error and "result" not in public
    assert public["callback"]["state"] == "none"
    assert await queue.get("nope") is None
    assert await queue.finish("nope", result={}, now=time.time()) is False
    assert await queue.heartbeat("nope", "w1", now=time.time()) is False


async def test_claims_oldest_first(queue: TaskQueue) -> None:
    # Redis keeps order per shard (one stream each); with one shard the queue is strict FIFO.
    if isinstance(queue, RedisTaskQueue):
        queue = RedisTaskQueue(queue.r, shards=1)
    tasks = [new_task() for _ in range(3)]
    for i, t in enumerate(tasks):
        t.created += i
        await queue.enqueue(t, str(i).encode())
    seen = []
    for _ in tasks:
        claimed = await queue.claim("w1", lease_s=30, now=time.time())
        assert claimed is not None
        seen.append(claimed.payload)
    assert seen == [b"0", b"1", b"2"]


async def test_expired_lease_is_reclaimed_and_finished_once(queue: TaskQueue) -> None:
    task = new_task()
    await queue.enqueue(task, b"p")
    first = await queue.claim("w1", lease_s=0.3, now=time.time())
    assert first is not None
    assert await queue.claim("w2", lease_s=0.3, now=time.time()) is None
    await asyncio.sleep(0.45)
    second = await queue.claim("w2", lease_s=0.3, now=time.time())
    assert second is not None and second.task.id == task.id and second.payload == b"p"
    assert second.task.attempts == 2
    # the first worker has lost the lease, and its late finish does not overwrite
    assert await queue.heartbeat(task.id, "w1", now=time.time()) is False
    assert await queue.heartbeat(task.id, "w2", now=time.time()) is True
    assert await queue.finish(task.id, result={"by": "w2"}, now=time.time()) is True
    assert await queue.finish(task.id, result={"by": "w1"}, now=time.time()) is False
    got = await queue.get(task.id)
    assert got is not None and got.result == {"by": "w2"} and got.attempts == 2
    assert await queue.claim("w3", lease_s=30, now=time.time()) is None


async def test_heartbeat_keeps_the_lease(queue: TaskQueue) -> None:
    task = new_task()
    await queue.enqueue(task, b"p")
    assert await queue.claim("w1", lease_s=0.3, now=time.time()) is not None
    for _ in range(4):
        await asyncio.sleep(0.15)
        assert await queue.heartbeat(task.id, "w1", now=time.time())
        assert await queue.claim("w2", lease_s=0.3, now=time.time()) is None


async def test_release_hands_the_task_over_at_once(queue: TaskQueue) -> None:
    task = new_task()
    await queue.enqueue(task, b"p")
    assert await queue.claim("w1", lease_s=60, now=time.time()) is not None
    assert await queue.release(task.id, "w2") is False
    assert await queue.release(task.id, "w1") is True
    got = await queue.get(task.id)
    assert got is not None and got.status == "queued"
    again = await queue.claim("w2", lease_s=60, now=time.time())
    assert again is not None and again.task.id == task.id and again.task.attempts == 2


async def test_blocking_claim_wakes_up_for_new_work(queue: TaskQueue) -> None:
    task = new_task()

    async def later() -> None:
        await asyncio.sleep(0.1)
        await queue.enqueue(task, b"p")

    started = time.monotonic()
    enqueuer = asyncio.create_task(later())
    claimed = await queue.claim("w1", lease_s=30, now=time.time(), block_s=3)
    await enqueuer
    assert claimed is not None and claimed.task.id == task.id
    assert time.monotonic() - started < 1.5
    started = time.monotonic()
    assert await queue.claim("w1", lease_s=30, now=time.time(), block_s=0.2) is None
    assert 0.15 < time.monotonic() - started < 1.5


async def test_tasks_survive_a_restart(make_queue: QueueFactory) -> None:
    first = make_queue()
    queued, running = new_task(), new_task()
    await first.enqueue(queued, b"q")
    await first.enqueue(running, b"r")
    assert await first.claim("w1", lease_s=1.0, now=time.time()) is not None  # then "dies"
    await first.close()

    second = make_queue()
    await asyncio.sleep(1.05)
    got = {}
    # (a 1 s lease: two claims in a row stay inside it even on a loaded machine, so the task
    # just claimed is not taken over again by the next claim)
    for _ in range(2):
        claimed = await second.claim("w2", lease_s=1.0, now=time.time())
        assert claimed is not None
        got[claimed.task.id] = claimed.payload
    assert got == {queued.id: b"q", running.id: b"r"}


async def test_redis_task_survives_redis_sigkill() -> None:
    # A private server: SIGKILLing the session one would disturb other suites' clients.
    server = RedisServer(appendonly=True).start()
    try:
        q = RedisTaskQueue.from_url(server.url)
        task = new_task()
        await q.enqueue(task, b"durable")
        await q.close()
        server.kill()
        server.start()
        q = RedisTaskQueue.from_url(server.url)
        claimed = await q.claim("w1", lease_s=30, now=time.time())
        await q.close()
        assert claimed is not None and claimed.payload == b"durable"
    finally:
        server.cleanup()


async def test_delivery_scheduling(queue: TaskQueue) -> None:
    task = new_task("http://127.0.0.1:9/hook")
    plain = new_task()
    for t in (task, plain):
        await queue.enqueue(t, b"p")
        assert await queue.claim("w1", lease_s=30, now=time.time()) is not None
    now = time.time()
    await queue.finish(plain.id, result=RESULT, now=now)  # no callback_url: never due
    await queue.finish(task.id, result=RESULT, now=now)  # due at once

    due = await queue.claim_due_deliveries(now, 10, lease_s=5)
    assert [t.id for t in due] == [task.id]
    assert due[0].result == RESULT and due[0].callback_url == task.callback_url
    assert await queue.claim_due_deliveries(now + 1, 10) == []  # leased to that deliverer

    out = await queue.record_delivery(
        task.id, status_code=500, delivered=False, next_due=now + 10, now=now
    )
    assert out is not None and out.attempts == 1 and not out.delivered and not out.undelivered
    assert await queue.claim_due_deliveries(now + 9, 10) == []
    due = await queue.claim_due_deliveries(now + 10, 10)
    assert [t.delivery_attempts for t in due] == [1]

    out = await queue.record_delivery(
        task.id, error="ConnectError", delivered=False, next_due=None, now=now + 10
    )
    assert out is not None and out.undelivered and out.attempts == 2
    assert await queue.claim_due_deliveries(now + 1000, 10) == []
    got = await queue.get(task.id)
    assert got is not None and got.undelivered and not got.delivered
    assert got.last_delivery == {"at": now + 10, "error": "ConnectError"}
    assert got.to_public()["callback"] == {
        "delivered": False,
        "attempts": 2,
        "state": "undelivered",
    }
    assert await queue.record_delivery("nope", delivered=True, next_due=None, now=now) is None


async def test_delivered_is_final(queue: TaskQueue) -> None:
    task = new_task("http://127.0.0.1:9/hook")
    await queue.enqueue(task, b"p")
    await queue.claim("w1", lease_s=30, now=time.time())
    now = time.time()
    await queue.finish(task.id, result=RESULT, now=now)
    out = await queue.record_delivery(
        task.id, status_code=204, delivered=True, next_due=now + 5, now=now
    )
    assert out is not None and out.delivered and out.attempts == 1 and out.next_due is None
    await queue.schedule_delivery(task.id, now)  # a stray schedule is dropped, not re-sent
    assert await queue.claim_due_deliveries(now + 100, 10) == []
    got = await queue.get(task.id)
    assert got is not None and got.to_public()["callback"]["state"] == "delivered"


async def test_idempotency_states(queue: TaskQueue) -> None:
    now = time.time()
    begin = queue.idem_begin
    st = await begin("k1", "idem-1", "fp-a", task_id="t1", now=now, ttl_s=60)
    assert (st.kind, st.task_id) == ("new", "t1")
    st = await begin("k1", "idem-1", "fp-a", task_id="t2", now=now, ttl_s=60)
    assert (st.kind, st.task_id) == ("pending", "t1")
    # the same call sent again (a client retrying after a lost reply) gets the same answer
    st = await begin("k1", "idem-1", "fp-a", task_id="t1", now=now, ttl_s=60)
    assert (st.kind, st.task_id) == ("new", "t1")
    st = await begin("k1", "idem-1", "fp-b", task_id="t3", now=now, ttl_s=60)
    assert (st.kind, st.task_id) == ("conflict", "t1")
    # another API key has its own namespace
    st = await begin("k2", "idem-1", "fp-b", task_id="t4", now=now, ttl_s=60)
    assert st.kind == "new"

    await queue.idem_finish("k1", "idem-1", b'{"success":true,"task_id":"t1"}')
    st = await begin("k1", "idem-1", "fp-a", task_id="t5", now=now, ttl_s=60)
    assert (st.kind, st.task_id) == ("done", "t1")
    assert st.response == b'{"success":true,"task_id":"t1"}'
    st = await begin("k1", "idem-1", "fp-b", task_id="t6", now=now, ttl_s=60)
    assert st.kind == "conflict"


async def test_idempotency_abort_stale_and_expiry(queue: TaskQueue) -> None:
    now = time.time()
    begin = queue.idem_begin
    assert (await begin("k", "a", "fp", task_id="t1", now=now, ttl_s=60)).kind == "new"
    await queue.idem_abort("k", "a", "someone-else")  # not the owner: kept
    assert (await begin("k", "a", "fp", task_id="t2", now=now, ttl_s=60)).kind == "pending"
    await queue.idem_abort("k", "a", "t1")
    assert (await begin("k", "a", "fp", task_id="t3", now=now, ttl_s=60)).task_id == "t3"

    # a pending record whose request died is taken over after stale_after_s
    st = await begin("k", "a", "fp", task_id="t4", now=now + 5, ttl_s=60, stale_after_s=10)
    assert st.kind == "pending"
    st = await begin("k", "a", "fp", task_id="t4", now=now + 11, ttl_s=60, stale_after_s=10)
    assert (st.kind, st.task_id) == ("new", "t4")

    # records expire after their TTL (real time: Redis expires keys itself)
    assert (await begin("k", "b", "fp", task_id="t5", now=now, ttl_s=0.2)).kind == "new"
    await asyncio.sleep(0.3)
    st = await begin("k", "b", "other", task_id="t6", now=time.time(), ttl_s=60)
    assert (st.kind, st.task_id) == ("new", "t6")


async def test_concurrent_idem_begin_has_one_winner(queue: TaskQueue) -> None:
    now = time.time()
    states = await asyncio.gather(
        *(queue.idem_begin("k", "race", "fp", task_id=f"t{i}", now=now, ttl_s=60) for i in range(5))
    )
    winners = [s for s in states if s.kind == "new"]
    assert len(winners) == 1
    assert all(
        s.kind == "pending" and s.task_id == winners[0].task_id for s in states if s.kind != "new"
    )


async def test_purge_drops_old_records(make_queue: QueueFactory) -> None:
    queue = make_queue()
    old, fresh = new_task(), new_task()
    old.created -= 30 * 86400
    for t in (old, fresh):
        await queue.enqueue(t, b"p")
    while claimed := await queue.claim("w1", lease_s=30, now=time.time()):
        await queue.finish(claimed.task.id, result={}, now=claimed.task.created)
    removed = await queue.purge(time.time())
    if isinstance(queue, RedisTaskQueue):
        assert removed == 0  # Redis expires them by TTL instead
        assert await queue.r.ttl(queue.task_key(old.id)) > 0
    else:
        assert removed == 1
        assert await queue.get(old.id) is None
    assert await queue.get(fresh.id) is not None


async def test_shards_spread_and_are_all_consumed(queue: TaskQueue) -> None:
    if not isinstance(queue, RedisTaskQueue):
        pytest.skip("shards are a Redis layout")
    tasks: list[Task] = []
    while len({queue.shard_of(t.id) for t in tasks}) < queue.shards:  # one in every shard
        tasks.append(new_task())
    for t in tasks:
        await queue.enqueue(t, t.id.encode())
    assert queue.shards == 8
    assert await queue.queue_depth() == len(tasks)
    got = set()
    for _ in tasks:
        claimed = await queue.claim("w1", lease_s=30, now=time.time())
        assert claimed is not None
        got.add(claimed.payload.decode())
    assert got == {t.id for t in tasks}
    assert await queue.claim("w1", lease_s=30, now=time.time()) is None


async def test_enqueue_wakes_a_waiting_claim(queue: TaskQueue) -> None:
    waiting = asyncio.create_task(queue.claim("w1", lease_s=30, now=time.time(), block_s=20))
    await asyncio.sleep(0.1)
    task = new_task()
    started = time.monotonic()
    await queue.enqueue(task, b"x")
    claimed = await asyncio.wait_for(waiting, 5)
    assert claimed is not None and claimed.task.id == task.id
    assert time.monotonic() - started < 2


async def test_idle_workers_of_a_process_look_one_at_a_time(queue: TaskQueue) -> None:
    """Four idle workers on one queue object cost Redis what one does: one look over the shards
    every half second (XREADGROUP per shard), never two at once."""
    if not isinstance(queue, RedisTaskQueue) or isinstance(queue.r, RedisCluster):
        pytest.skip("counts one Redis server's commands")
    await queue.claim("warm", lease_s=30, now=time.time())  # groups exist; the first look done

    async def xreadgroups() -> int:
        stats = await queue.r.info("commandstats")
        return int(stats.get("cmdstat_xreadgroup", {}).get("calls", 0))

    before = await xreadgroups()
    started = time.monotonic()
    claims = [queue.claim(f"w{i}", lease_s=30, now=time.time(), block_s=2.0) for i in range(4)]
    assert await asyncio.gather(*claims) == [None] * 4
    looks = (await xreadgroups() - before) / queue.shards
    elapsed = time.monotonic() - started
    # one look when they start waiting, then one per half second: about 5 in 2 s
    assert looks <= elapsed / 0.5 + 2, looks


async def test_cluster_reads_go_straight_to_the_streams_node(queue: TaskQueue) -> None:
    """On a Cluster, a claim's XREADGROUP goes to its stream's node: no COMMAND GETKEYS first
    (the client asks one for every command with movable keys: two per read, measured)."""
    if not isinstance(queue, RedisTaskQueue) or not isinstance(queue.r, RedisCluster):
        pytest.skip("a Cluster's commands")

    async def getkeys() -> int:
        stats = await queue.r.info("commandstats", target_nodes=RedisCluster.ALL_NODES)
        per_node = stats.values() if isinstance(next(iter(stats.values())), dict) else [stats]
        return sum(int(s.get("cmdstat_command|getkeys", {}).get("calls", 0)) for s in per_node)

    before = await getkeys()
    for _ in range(3):
        assert await queue.claim("w1", lease_s=30, now=time.time()) is None
    task = new_task()
    await queue.enqueue(task, b"p")
    claimed = await queue.claim("w1", lease_s=30, now=time.time())
    assert claimed is not None and claimed.task.id == task.id
    assert await getkeys() == before
