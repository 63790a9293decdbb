"""`TaskQueue` on Redis: streams with a consumer group for work, hashes for task records.

The work queue is here; the delivery schedule is `redis_deliveries.py`, the idempotency
records `redis_idempotency.py` (mixed in: one client, one key prefix).

The queue is split into `shards` (config `tasks.shards`, default 8). A task belongs to shard
`crc32(task_id) % shards`; each shard has its own hash tag `{q<i>-<n>}`, chosen so that the
shards' slots are evenly spaced over the 16384 hash slots -- on a Redis Cluster whose masters
own even slot ranges, the shards (and their load) spread over the masters. Everything one Lua
script touches carries its shard's tag (one slot per script); workers read every shard.
Changing `shards` moves tasks to other shards: drain the queue first.

Key layout (prefix `ig:`, T = the shard's tag):

    ig:{T}:task:<task_id>        hash    the Task fields (result/error/last_delivery as JSON),
                                         plus stream_id, worker, heartbeat_at; EXPIREs
                                         `task_ttl_s` after finishing
    ig:{T}:stream                stream  one entry {task: <task_id>} per queued task; consumer
                                         group `workers`; XACK + XDEL when the task finishes
    ig:{T}:deliveries            zset    task_id -> unix time the next callback POST is due
    ig:idem:{<key_id>:<sha>}     hash    fp, task_id, created, state (pending|done), response;
                                         PEXPIREs after the idempotency TTL
    ig:payload:{<task_id>}       string  the encoded request (deleted on finish; TTL as safety)

A worker that finds every shard empty waits up to `block_s` before looking again, or less: an
`enqueue` through the same queue object wakes one of that process's waiting workers at once
(workers of other processes notice within half a second: the idle workers of a process take
turns, one look over the shards at a time and one every half second, so many idle workers cost
as much as one). Lapsed leases are looked for at most
every quarter lease (and at most every second) per shard, so idle workers stay cheap.

Leases are the consumer group's own bookkeeping: a claimed entry sits in the group's pending
list under the worker's consumer name, `heartbeat` resets its idle time (XCLAIM JUSTID by the
owner), and `claim` first runs XAUTOCLAIM with min-idle = the lease, so a task whose worker
was SIGKILLed is handed to the next worker once the lease has lapsed (by the Redis clock).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import itertools
import time
import zlib
from typing import Any

import orjson
from redis.asyncio import RedisCluster
from redis.crc import key_slot
from redis.exceptions import RedisError, ResponseError

from app.tasks.base import Claimed, Task
from app.tasks.redis_deliveries import RedisDeliveries
from app.tasks.redis_idempotency import RedisIdempotency
from app.tasks.redis_task import pairs_to_dict, task_from_hash, text

GROUP = "workers"
_AUTOCLAIM_ROUNDS = 4  # XAUTOCLAIM scans <= 10 pending entries a round; the cursor persists
_RELEASED_IDLE_MS = 10**10  # idle time given to a released entry: past any lease
_SLOTS = 16384
DEFAULT_SHARDS = 8
# Idle workers of one process share their looks: a look over all shards that found nothing
# stands for this long, so N idle loops cost about as much as one.
_IDLE_SCAN_S = 0.5


def shard_tags(shards: int) -> list[str]:
    """One hash tag per shard, shard i's slot in the i-th of `shards` equal slot ranges (the
    ranges `redis-cli --cluster create` gives to masters), so shards spread over the masters."""
    tags: list[str] = []
    for i in range(shards):
        lo, hi = i * _SLOTS // shards, (i + 1) * _SLOTS // shards
        for n in itertools.count():
            tag = f"q{i}-{n}"
            if lo <= key_slot(tag.encode()) < hi:
                tags.append(tag)
                break
    return tags


_ENQUEUE = """
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
redis.call('HSET', KEYS[1], unpack(ARGV, 2))
local sid = redis.call('XADD', KEYS[2], '*', 'task', ARGV[1])
redis.call('HSET', KEYS[1], 'stream_id', sid)
return 1
"""

# KEYS: task, stream. ARGV: stream_id, worker, now, group
_START = """
local h = redis.call('HMGET', KEYS[1], 'status', 'stream_id')
if (not h[1]) or h[1] == 'succeeded' or h[1] == 'failed' or h[2] ~= ARGV[1] then
  redis.call('XACK', KEYS[2], ARGV[4], ARGV[1])
  redis.call('XDEL', KEYS[2], ARGV[1])
  return false
end
redis.call('HSET', KEYS[1], 'status', 'running', 'worker', ARGV[2], 'heartbeat_at', ARGV[3])
redis.call('HSETNX', KEYS[1], 'started', ARGV[3])
redis.call('HINCRBY', KEYS[1], 'attempts', 1)
return redis.call('HGETALL', KEYS[1])
"""

# KEYS: task, stream. ARGV: worker, group, now ('' = release), released idle ms
_HEARTBEAT = """
local h = redis.call('HMGET', KEYS[1], 'status', 'stream_id')
if h[1] ~= 'running' or not h[2] then return 0 end
local p = redis.call('XPENDING', KEYS[2], ARGV[2], h[2], h[2], 1)
if #p == 0 or p[1][2] ~= ARGV[1] then return 0 end
if ARGV[3] == '' then
  redis.call('XCLAIM', KEYS[2], ARGV[2], ARGV[1], 0, h[2], 'IDLE', ARGV[4], 'JUSTID')
  redis.call('HSET', KEYS[1], 'status', 'queued')
  redis.call('HDEL', KEYS[1], 'worker', 'heartbeat_at')
else
  redis.call('XCLAIM', KEYS[2], ARGV[2], ARGV[1], 0, h[2], 'JUSTID')
  redis.call('HSET', KEYS[1], 'heartbeat_at', ARGV[3])
end
return 1
"""

# KEYS: task, stream, deliveries. ARGV: task_id, status, result, error, now, group, ttl_s
_FINISH = """
local h = redis.call('HMGET', KEYS[1], 'status', 'stream_id', 'callback_url')
if not h[1] then return -1 end
if h[1] == 'succeeded' or h[1] == 'failed' then return 0 end
redis.call('HSET', KEYS[1], 'status', ARGV[2], 'finished', ARGV[5])
if ARGV[3] ~= '' then redis.call('HSET', KEYS[1], 'result', ARGV[3]) end
if ARGV[4] ~= '' then redis.call('HSET', KEYS[1], 'error', ARGV[4]) end
redis.call('HDEL', KEYS[1], 'worker', 'heartbeat_at')
if h[2] then
  redis.call('XACK', KEYS[2], ARGV[6], h[2])
  redis.call('XDEL', KEYS[2], h[2])
end
if h[3] and h[3] ~= '' then redis.call('ZADD', KEYS[3], ARGV[5], ARGV[1]) end
redis.call('EXPIRE', KEYS[1], ARGV[7])
return 1
"""


class RedisTaskQueue(RedisDeliveries, RedisIdempotency):
    """Durable tasks on Redis. The client (`redis.asyncio.Redis` or `RedisCluster`) must be
    created with `decode_responses=False` (payloads are binary); `from_url` does that."""

    def __init__(
        self,
        client: Any,
        *,
        prefix: str = "ig:",
        task_ttl_s: int = 7 * 86400,
        shards: int = DEFAULT_SHARDS,
    ) -> None:
        if shards < 1:
            raise ValueError("shards must be >= 1")
        self.r = client
        self._cluster = isinstance(client, RedisCluster)
        self.prefix = prefix
        self.task_ttl_s = task_ttl_s
        self.shards = shards
        self._tags = [f"{prefix}{{{tag}}}:" for tag in shard_tags(shards)]
        self.streams = [f"{t}stream" for t in self._tags]
        self.deliveries_keys = [f"{t}deliveries" for t in self._tags]
        self._group_ready = [False] * shards
        self._cursors: list[bytes | str] = ["0-0"] * shards
        self._rotation = itertools.count()
        # idle claimers of this process, each woken by one enqueue (not all by every one)
        self._idle: collections.deque[asyncio.Future[None]] = collections.deque()
        # when each shard's pending list is next scanned for lapsed leases (monotonic)
        self._autoclaim_at = [0.0] * shards
        self._enqueued = 0
        self._empty_at = 0.0  # when a look over all shards last found nothing (monotonic)
        self._looking = 0  # idle looks in progress: an idle worker never starts a second one
        self._enqueue = client.register_script(_ENQUEUE)
        self._start = client.register_script(_START)
        self._heartbeat = client.register_script(_HEARTBEAT)
        self._finish = client.register_script(_FINISH)
        self._init_deliveries(client)
        self._init_idempotency(client)

    @classmethod
    def from_url(cls, url: str, **kwargs: Any) -> RedisTaskQueue:
        """Any imagegate Redis URL, `redis+cluster://` included (see app/store/redis_url.py)."""
        from app.store.redis_url import parse_redis_url, redis_client

        client = redis_client(
            parse_redis_url(url), decode_responses=False, socket_timeout=5,
            socket_connect_timeout=2, health_check_interval=10,
        )  # fmt: skip
        return cls(client, **kwargs)

    # --- keys
    def shard_of(self, task_id: str) -> int:
        return zlib.crc32(task_id.encode()) % self.shards

    def task_key(self, task_id: str) -> str:
        return f"{self._tags[self.shard_of(task_id)]}task:{task_id}"

    def stream_of(self, task_id: str) -> str:
        return self.streams[self.shard_of(task_id)]

    def deliveries_of(self, task_id: str) -> str:
        return self.deliveries_keys[self.shard_of(task_id)]

    def payload_key(self, task_id: str) -> str:
        return f"{self.prefix}payload:{{{task_id}}}"

    # --- lifecycle
    async def close(self) -> None:
        await self.r.aclose()

    async def ping(self) -> bool:
        return bool(await self.r.ping())

    async def _ensure_group(self, shard: int, force: bool = False) -> None:
        if self._group_ready[shard] and not force:
            return
        try:
            await self.r.xgroup_create(self.streams[shard], GROUP, id="0", mkstream=True)
        except ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise
        self._group_ready[shard] = True

    # --- work queue
    async def enqueue(self, task: Task, payload: bytes) -> None:
        fields: dict[str, Any] = {
            "id": task.id,
            "key_id": task.key_id,
            "trace_id": task.trace_id,
            "model": task.model,
            "created": repr(task.created),
            "status": "queued",
            "attempts": "0",
            "delivery_attempts": "0",
        }
        if task.callback_url:
            fields["callback_url"] = task.callback_url
        await self._ensure_group(self.shard_of(task.id))
        # The payload first: a stream entry must never point at a task without one.
        await self.r.set(self.payload_key(task.id), payload, ex=self.task_ttl_s)
        flat = [x for kv in fields.items() for x in kv]
        await self._enqueue(
            keys=[self.task_key(task.id), self.stream_of(task.id)], args=[task.id, *flat]
        )
        self._enqueued += 1
        while self._idle:
            waiter = self._idle.popleft()
            if not waiter.done():
                waiter.set_result(None)
                break

    async def _autoclaim(self, shard: int, worker_id: str, lease_ms: int) -> tuple[str, str] | None:
        for _ in range(_AUTOCLAIM_ROUNDS):
            res = await self.r.xautoclaim(
                self.streams[shard], GROUP, worker_id, lease_ms,
                start_id=self._cursors[shard], count=1,
            )  # fmt: skip
            self._cursors[shard] = res[0]
            for entry_id, fields in res[1]:
                if fields:
                    return text(entry_id) or "", text(fields[b"task"]) or ""
            if text(self._cursors[shard]) == "0-0":
                return None
        return None

    async def _read_new(
        self, shard: int, worker_id: str, block_ms: int | None
    ) -> tuple[str, str] | None:
        stream = self.streams[shard]
        if self._cluster:
            # Sent straight to the stream's node: XREADGROUP's keys are "movable", and for such
            # a command the cluster client would first ask a node COMMAND GETKEYS (measured:
            # two extra round trips per read) and fail when that answer is an error.
            block = ["BLOCK", block_ms] if block_ms is not None else []
            resp: Any = await self.r.execute_command(
                "XREADGROUP", "GROUP", GROUP, worker_id, "COUNT", 1, *block,
                "STREAMS", stream, ">",
                target_nodes=self.r.get_node_from_key(stream),
            )  # fmt: skip
        else:
            resp = await self.r.xreadgroup(GROUP, worker_id, {stream: ">"}, count=1, block=block_ms)
        streams = list(resp.values()) if isinstance(resp, dict) else [s[1] for s in resp or []]
        for entries in streams:
            for entry in entries:
                entry_id, fields = entry[0], entry[1]
                if fields:
                    return text(entry_id) or "", text(fields[b"task"]) or ""
        return None

    async def _find(self, worker_id: str, lease_ms: int) -> tuple[int, str, str] | None:
        """One pass over the shards (from a rotating start, so no shard starves): a task whose
        lease lapsed, else a new one. (shard, entry id, task id) or None."""
        first = next(self._rotation) % self.shards
        failed: Exception | None = None
        for k in range(self.shards):
            shard = (first + k) % self.shards
            try:
                await self._ensure_group(shard)
                found = None
                if time.monotonic() >= self._autoclaim_at[shard]:
                    found = await self._autoclaim(shard, worker_id, lease_ms)
                    if found is None:  # nothing lapsed: look again in a fraction of a lease
                        self._autoclaim_at[shard] = time.monotonic() + min(1.0, lease_ms / 4000)
                if found is None:
                    found = await self._read_new(shard, worker_id, None)
            except ResponseError as exc:
                if "NOGROUP" not in str(exc):
                    raise
                self._group_ready[shard] = False  # the stream was flushed under us
                continue
            except (RedisError, OSError) as exc:
                # one cluster node down must not stop the shards on the others
                failed = exc
                continue
            if found is not None:
                return (shard, *found)
        if failed is not None:
            raise failed
        return None

    async def claim(
        self, worker_id: str, *, lease_s: float, now: float, block_s: float = 0.0
    ) -> Claimed | None:
        lease_ms = max(1, int(lease_s * 1000))
        start = time.monotonic()
        deadline = start + block_s
        woken = block_s <= 0  # a non-waiting claim always looks
        while True:
            seen = self._enqueued
            found = None
            due = not self._looking and time.monotonic() - self._empty_at >= _IDLE_SCAN_S
            if woken or due:
                self._looking += 1
                try:
                    found = await self._find(worker_id, lease_ms)
                finally:
                    self._looking -= 1
                if found is None:
                    self._empty_at = time.monotonic()
            woken = False
            if found is None:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return None
                if self._enqueued != seen:  # enqueued here while we looked: look again
                    woken = True
                    continue
                # until an enqueue here wakes us, or it is time for another look
                waiter = asyncio.get_running_loop().create_future()
                self._idle.append(waiter)
                try:
                    # until the next look is due (whoever of this process's workers takes it)
                    next_look = self._empty_at + _IDLE_SCAN_S - time.monotonic()
                    await asyncio.wait_for(waiter, min(remaining, max(next_look, 0.05)))
                    woken = True
                except TimeoutError:
                    with contextlib.suppress(ValueError):
                        self._idle.remove(waiter)
                continue
            shard, entry_id, task_id = found
            now_i = now + (time.monotonic() - start)  # `now` as of the claim, after any wait
            flat = await self._start(
                keys=[self.task_key(task_id), self.streams[shard]],
                args=[entry_id, worker_id, repr(now_i), GROUP],
            )
            if not flat:
                continue  # finished or vanished task: the script acked the stale entry
            task = task_from_hash(pairs_to_dict(flat))
            payload: Any = await self.r.get(self.payload_key(task_id))
            if payload is None:
                error = {"code": "api_error", "message": "the task's request data was lost"}
                await self.finish(task_id, error=error, now=now_i)
                continue
            return Claimed(task, payload)

    async def heartbeat(self, task_id: str, worker_id: str, *, now: float) -> bool:
        ok = await self._heartbeat(
            keys=[self.task_key(task_id), self.stream_of(task_id)],
            args=[worker_id, GROUP, repr(now)],
        )
        return bool(ok)

    async def release(self, task_id: str, worker_id: str) -> bool:
        ok = await self._heartbeat(
            keys=[self.task_key(task_id), self.stream_of(task_id)],
            args=[worker_id, GROUP, "", _RELEASED_IDLE_MS],
        )
        self._autoclaim_at[self.shard_of(task_id)] = 0.0  # this process sees it at once
        return bool(ok)

    async def finish(
        self,
        task_id: str,
        *,
        result: dict[str, Any] | None = None,
        error: dict[str, Any] | None = None,
        now: float,
    ) -> bool:
        status = "failed" if error is not None else "succeeded"
        res = await self._finish(
            keys=[self.task_key(task_id), self.stream_of(task_id), self.deliveries_of(task_id)],
            args=[
                task_id,
                status,
                orjson.dumps(result) if result is not None else "",
                orjson.dumps(error) if error is not None else "",
                repr(now),
                GROUP,
                self.task_ttl_s,
            ],
        )
        if res == 1:
            await self.r.delete(self.payload_key(task_id))
        return res == 1

    async def get(self, task_id: str) -> Task | None:
        h: dict[bytes, bytes] = await self.r.hgetall(self.task_key(task_id))
        return task_from_hash(h) if h else None

    async def queue_depth(self) -> int:
        lengths = await asyncio.gather(*(self.r.xlen(s) for s in self.streams))
        return sum(int(n) for n in lengths)

    async def purge(self, now: float) -> int:
        return 0  # finished tasks and idempotency records carry TTLs
