"""`TaskQueue` on Redis: a stream with a consumer group for work, hashes for task records.

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

import hashlib
import time
from typing import Any

import orjson
import redis.asyncio as aioredis
from redis.exceptions import ResponseError

from app.tasks.base import FINAL_STATUSES, Claimed, DeliveryOutcome, IdemState, Task, delivery_note

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

# KEYS: deliveries. ARGV: now, limit, leased_until
_CLAIM_DUE = """
local ids = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, ARGV[2])
for _, id in ipairs(ids) do redis.call('ZADD', KEYS[1], ARGV[3], id) end
return ids
"""

# KEYS: task, deliveries. ARGV: task_id, delivered (0|1), next_due ('' = give up), last_json
_RECORD_DELIVERY = """
if redis.call('EXISTS', KEYS[1]) == 0 then
  redis.call('ZREM', KEYS[2], ARGV[1])
  return false
end
local n = redis.call('HINCRBY', KEYS[1], 'delivery_attempts', 1)
redis.call('HSET', KEYS[1], 'last_delivery', ARGV[4])
if ARGV[2] == '1' then
  redis.call('HSET', KEYS[1], 'delivered', '1')
  redis.call('ZREM', KEYS[2], ARGV[1])
  return {n, 1, 0}
end
if ARGV[3] ~= '' then
  redis.call('ZADD', KEYS[2], ARGV[3], ARGV[1])
  return {n, 0, 0}
end
redis.call('HSET', KEYS[1], 'undelivered', '1')
redis.call('ZREM', KEYS[2], ARGV[1])
return {n, 0, 1}
"""

# KEYS: idem. ARGV: fingerprint, task_id, now, ttl_ms, stale_after_s (-1: never)
_IDEM_BEGIN = """
local h = redis.call('HMGET', KEYS[1], 'fp', 'task_id', 'created', 'state', 'response')
if not h[1] then
  redis.call('HSET', KEYS[1], 'fp', ARGV[1], 'task_id', ARGV[2], 'created', ARGV[3],
             'state', 'pending')
  redis.call('PEXPIRE', KEYS[1], ARGV[4])
  return {'new', ARGV[2]}
end
if h[1] ~= ARGV[1] then return {'conflict', h[2]} end
if h[4] == 'done' then return {'done', h[2], h[5]} end
local stale = tonumber(ARGV[5])
if stale >= 0 and tonumber(ARGV[3]) - tonumber(h[3]) > stale then
  redis.call('HSET', KEYS[1], 'task_id', ARGV[2], 'created', ARGV[3])
  redis.call('PEXPIRE', KEYS[1], ARGV[4])
  return {'new', ARGV[2]}
end
return {'pending', h[2]}
"""

_IDEM_FINISH = """
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
redis.call('HSET', KEYS[1], 'state', 'done', 'response', ARGV[1])
return 1
"""

_IDEM_ABORT = """
local h = redis.call('HMGET', KEYS[1], 'state', 'task_id')
if h[1] == 'pending' and h[2] == ARGV[1] then redis.call('DEL', KEYS[1]) end
return 0
"""


def _s(v: bytes | str | None) -> str | None:
    return v.decode() if isinstance(v, bytes) else v


def _f(v: bytes | None) -> float | None:
    return float(v) if v not in (None, b"") else None


def _json(v: bytes | None) -> Any:
    return orjson.loads(v) if v else None


def task_from_hash(h: dict[bytes, bytes]) -> Task:
    """A Task from its Redis hash (bytes keys and values, as read without decoding)."""
    return Task(
        id=h[b"id"].decode(),
        key_id=h[b"key_id"].decode(),
        trace_id=h[b"trace_id"].decode(),
        model=h[b"model"].decode(),
        created=float(h[b"created"]),
        status=h[b"status"].decode(),  # type: ignore[arg-type]
        started=_f(h.get(b"started")),
        finished=_f(h.get(b"finished")),
        callback_url=_s(h.get(b"callback_url")) or None,
        result=_json(h.get(b"result")),
        error=_json(h.get(b"error")),
        delivered=h.get(b"delivered") == b"1",
        delivery_attempts=int(h.get(b"delivery_attempts", b"0")),
        undelivered=h.get(b"undelivered") == b"1",
        attempts=int(h.get(b"attempts", b"0")),
        last_delivery=_json(h.get(b"last_delivery")),
    )


def _pairs_to_dict(flat: list[bytes]) -> dict[bytes, bytes]:
    return dict(zip(flat[::2], flat[1::2], strict=True))


class RedisTaskQueue:
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
        self._claim_due = client.register_script(_CLAIM_DUE)
        self._record = client.register_script(_RECORD_DELIVERY)
        self._idem_begin = client.register_script(_IDEM_BEGIN)
        self._idem_finish = client.register_script(_IDEM_FINISH)
        self._idem_abort = client.register_script(_IDEM_ABORT)

    @classmethod
    def from_url(cls, url: str, **kwargs: Any) -> RedisTaskQueue:
        return cls(aioredis.Redis.from_url(url, decode_responses=False), **kwargs)

    # --- keys
    def task_key(self, task_id: str) -> str:
        return f"{self._q}task:{task_id}"

    def payload_key(self, task_id: str) -> str:
        return f"{self.prefix}payload:{{{task_id}}}"

    def idem_key(self, key_id: str, idem_key: str) -> str:
        digest = hashlib.sha256(idem_key.encode()).hexdigest()[:32]
        return f"{self._q}idem:{key_id}:{digest}"

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
                    return _s(entry_id) or "", _s(fields[b"task"]) or ""
            if _s(self._cursor) == "0-0":
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
                    return _s(entry_id) or "", _s(fields[b"task"]) or ""
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
            task = task_from_hash(_pairs_to_dict(flat))
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

    # --- callback deliveries
    async def schedule_delivery(self, task_id: str, due_at: float) -> None:
        await self.r.zadd(self.deliveries, {task_id: due_at})

    async def claim_due_deliveries(
        self, now: float, limit: int, *, lease_s: float = 60.0
    ) -> list[Task]:
        ids = await self._claim_due(
            keys=[self.deliveries], args=[repr(now), limit, repr(now + lease_s)]
        )
        if not ids:
            return []
        async with self.r.pipeline(transaction=False) as pipe:
            for task_id in ids:
                pipe.hgetall(self.task_key(task_id.decode()))
            hashes = await pipe.execute()
        tasks: list[Task] = []
        for task_id, h in zip(ids, hashes, strict=True):
            if not h:
                await self.r.zrem(self.deliveries, task_id)
                continue
            task = task_from_hash(h)
            if task.delivered or task.undelivered or task.status not in FINAL_STATUSES:
                await self.r.zrem(self.deliveries, task_id)
                continue
            tasks.append(task)
        return tasks

    async def record_delivery(
        self,
        task_id: str,
        *,
        status_code: int | None = None,
        error: str | None = None,
        delivered: bool,
        next_due: float | None,
        now: float,
    ) -> DeliveryOutcome | None:
        last = delivery_note(now, status_code, error)
        res = await self._record(
            keys=[self.task_key(task_id), self.deliveries],
            args=[
                task_id,
                "1" if delivered else "0",
                repr(next_due) if (next_due is not None and not delivered) else "",
                orjson.dumps(last),
            ],
        )
        if not res:
            return None
        n, ok, gave_up = (int(x) for x in res)
        return DeliveryOutcome(
            delivered=bool(ok),
            undelivered=bool(gave_up),
            attempts=n,
            next_due=next_due if not ok and not gave_up else None,
        )

    # --- Idempotency-Key
    async def idem_begin(
        self,
        key_id: str,
        idem_key: str,
        fingerprint: str,
        *,
        task_id: str,
        now: float,
        ttl_s: float,
        stale_after_s: float | None = None,
    ) -> IdemState:
        res = await self._idem_begin(
            keys=[self.idem_key(key_id, idem_key)],
            args=[
                fingerprint,
                task_id,
                repr(now),
                max(1, int(ttl_s * 1000)),
                repr(stale_after_s) if stale_after_s is not None else "-1",
            ],
        )
        kind = res[0].decode()
        owner = _s(res[1])
        response = res[2] if len(res) > 2 else None
        return IdemState(kind=kind, task_id=owner, response=response)

    async def idem_finish(self, key_id: str, idem_key: str, response: bytes) -> None:
        await self._idem_finish(keys=[self.idem_key(key_id, idem_key)], args=[response])

    async def idem_abort(self, key_id: str, idem_key: str, task_id: str) -> None:
        await self._idem_abort(keys=[self.idem_key(key_id, idem_key)], args=[task_id])
