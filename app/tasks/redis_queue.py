"""`TaskQueue` on Redis: a stream with a consumer group for work, hashes for task records.

The work queue is here; the delivery schedule is `redis_deliveries.py`, the idempotency
records `redis_idempotency.py` (mixed in: one client, one key prefix).

Key layout (prefix `ig:`; everything a Lua script touches shares the hash tag `{q}` so the
scripts stay single-slot on Redis Cluster, while the large payloads get their own slot each):

    ig:{q}:task:<task_id>        hash    the Task fields (result/error/last_delivery as JSON),
                                         plus stream_id, worker, heartbeat_at; EXPIREs
                                         `task_ttl_s` after finishing
    ig:{q}:stream                stream  one entry {task: <task_id>} per queued task; consumer
                                         group `workers`; XACK + XDEL when the task finishes
    ig:{q}:deliveries            zset    task_id -> unix time the next callback POST is due
    ig:{q}:idem:<key_id>:<sha>   hash    fp, task_id, created, state (pending|done), response;
                                         PEXPIREs after the idempotency TTL
    ig:payload:{<task_id>}       string  the encoded request (deleted on finish; TTL as safety)

Leases are the consumer group's own bookkeeping: a claimed entry sits in the group's pending
list under the worker's consumer name, `heartbeat` resets its idle time (XCLAIM JUSTID by the
owner), and `claim` first runs XAUTOCLAIM with min-idle = the lease, so a task whose worker
was SIGKILLed is handed to the next worker once the lease has lapsed (by the Redis clock).
"""

from __future__ import annotations

import time
from typing import Any

import orjson
import redis.asyncio as aioredis
from redis.exceptions import ResponseError

from app.tasks.base import Claimed, Task
from app.tasks.redis_deliveries import RedisDeliveries
from app.tasks.redis_idempotency import RedisIdempotency
from app.tasks.redis_task import pairs_to_dict, task_from_hash, text

GROUP = "workers"
_AUTOCLAIM_ROUNDS = 4  # XAUTOCLAIM scans <= 10 pending entries a round; the cursor persists
_RELEASED_IDLE_MS = 10**10  # idle time given to a released entry: past any lease

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
    """Durable tasks on Redis. The client must be created with `decode_responses=False`
    (payloads are binary); `from_url` does that."""

    def __init__(
        self,
        client: aioredis.Redis,
        *,
        prefix: str = "ig:",
        task_ttl_s: int = 7 * 86400,
    ) -> None:
        self.r = client
        self.prefix = prefix
        self.task_ttl_s = task_ttl_s
        self._q = f"{prefix}{{q}}:"
        self.stream = f"{self._q}stream"
        self.deliveries = f"{self._q}deliveries"
        self._group_ready = False
        self._cursor: bytes | str = "0-0"
        self._enqueue = client.register_script(_ENQUEUE)
        self._start = client.register_script(_START)
        self._heartbeat = client.register_script(_HEARTBEAT)
        self._finish = client.register_script(_FINISH)
        self._init_deliveries(client)
        self._init_idempotency(client)

    @classmethod
    def from_url(cls, url: str, **kwargs: Any) -> RedisTaskQueue:
        return cls(aioredis.Redis.from_url(url, decode_responses=False), **kwargs)

    # --- keys
    def task_key(self, task_id: str) -> str:
        return f"{self._q}task:{task_id}"

    def payload_key(self, task_id: str) -> str:
        return f"{self.prefix}payload:{{{task_id}}}"

    # --- lifecycle
    async def close(self) -> None:
        await self.r.aclose()

    async def ping(self) -> bool:
        return bool(await self.r.ping())

    async def _ensure_group(self, force: bool = False) -> None:
        if self._group_ready and not force:
            return
        try:
            await self.r.xgroup_create(self.stream, GROUP, id="0", mkstream=True)
        except ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise
        self._group_ready = True

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
        await self._ensure_group()
        # The payload first: a stream entry must never point at a task without one.
        await self.r.set(self.payload_key(task.id), payload, ex=self.task_ttl_s)
        flat = [x for kv in fields.items() for x in kv]
        await self._enqueue(keys=[self.task_key(task.id), self.stream], args=[task.id, *flat])

    async def _autoclaim(self, worker_id: str, lease_ms: int) -> tuple[str, str] | None:
        for _ in range(_AUTOCLAIM_ROUNDS):
            res = await self.r.xautoclaim(
                self.stream, GROUP, worker_id, lease_ms, start_id=self._cursor, count=1
            )
            self._cursor = res[0]
            for entry_id, fields in res[1]:
                if fields:
                    return text(entry_id) or "", text(fields[b"task"]) or ""
            if text(self._cursor) == "0-0":
                return None
        return None

    async def _read_new(self, worker_id: str, block_ms: int | None) -> tuple[str, str] | None:
        resp: Any = await self.r.xreadgroup(
            GROUP, worker_id, {self.stream: ">"}, count=1, block=block_ms
        )
        streams = list(resp.values()) if isinstance(resp, dict) else [s[1] for s in resp or []]
        for entries in streams:
            for entry in entries:
                entry_id, fields = entry[0], entry[1]
                if fields:
                    return text(entry_id) or "", text(fields[b"task"]) or ""
        return None

    async def claim(
        self, worker_id: str, *, lease_s: float, now: float, block_s: float = 0.0
    ) -> Claimed | None:
        await self._ensure_group()
        lease_ms = max(1, int(lease_s * 1000))
        start = time.monotonic()
        deadline = start + block_s
        while True:
            try:
                found = await self._autoclaim(worker_id, lease_ms)
                if found is None:
                    remaining_ms = int((deadline - time.monotonic()) * 1000)
                    found = await self._read_new(
                        worker_id, remaining_ms if remaining_ms > 0 else None
                    )
            except ResponseError as exc:
                if "NOGROUP" not in str(exc):
                    raise
                await self._ensure_group(force=True)  # the stream was flushed under us
                continue
            if found is None:
                return None
            entry_id, task_id = found
            now_i = now + (time.monotonic() - start)  # `now` as of the claim, after any wait
            flat = await self._start(
                keys=[self.task_key(task_id), self.stream],
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
            keys=[self.task_key(task_id), self.stream],
            args=[worker_id, GROUP, repr(now)],
        )
        return bool(ok)

    async def release(self, task_id: str, worker_id: str) -> bool:
        ok = await self._heartbeat(
            keys=[self.task_key(task_id), self.stream],
            args=[worker_id, GROUP, "", _RELEASED_IDLE_MS],
        )
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
            keys=[self.task_key(task_id), self.stream, self.deliveries],
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
        h: dict[bytes, bytes] = await self.r.hgetall(self.task_key(task_id))  # type: ignore[assignment]
        return task_from_hash(h) if h else None

    async def queue_depth(self) -> int:
        return int(await self.r.xlen(self.stream))

    async def purge(self, now: float) -> int:
        return 0  # finished tasks and idempotency records carry TTLs
