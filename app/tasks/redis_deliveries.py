"""The callback delivery schedule on Redis: a zset task_id -> due time, leased by pushing the
due time out while a deliverer POSTs (`DeliverySchedule`)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import orjson

from app.tasks.base import FINAL_STATUSES, DeliveryOutcome, Task, delivery_note
from app.tasks.redis_task import task_from_hash

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


class RedisDeliveries:
    """Mixed into `RedisTaskQueue` (its client `r`, `task_key` and the per-shard delivery
    zsets: `deliveries_of(task_id)`, all of them in `deliveries_keys`)."""

    r: Any
    deliveries_keys: list[str]
    shards: int
    _rotation: Iterator[int]

    def task_key(self, task_id: str) -> str:
        raise NotImplementedError

    def deliveries_of(self, task_id: str) -> str:
        raise NotImplementedError

    def _init_deliveries(self, client: Any) -> None:
        self._claim_due = client.register_script(_CLAIM_DUE)
        self._record = client.register_script(_RECORD_DELIVERY)

    async def schedule_delivery(self, task_id: str, due_at: float) -> None:
        await self.r.zadd(self.deliveries_of(task_id), {task_id: due_at})

    async def claim_due_deliveries(
        self, now: float, limit: int, *, lease_s: float = 60.0
    ) -> list[Task]:
        ids: list[bytes] = []
        first = next(self._rotation) % self.shards
        for k in range(self.shards):
            if len(ids) >= limit:
                break
            got = await self._claim_due(
                keys=[self.deliveries_keys[(first + k) % self.shards]],
                args=[repr(now), limit - len(ids), repr(now + lease_s)],
            )
            ids.extend(got or [])
        if not ids:
            return []
        async with self.r.pipeline(transaction=False) as pipe:
            for task_id in ids:
                pipe.hgetall(self.task_key(task_id.decode()))
            hashes = await pipe.execute()
        tasks: list[Task] = []
        for task_id, h in zip(ids, hashes, strict=True):
            if not h:
                await self.r.zrem(self.deliveries_of(task_id.decode()), task_id)
                continue
            task = task_from_hash(h)
            if task.delivered or task.undelivered or task.status not in FINAL_STATUSES:
                await self.r.zrem(self.deliveries_of(task.id), task_id)
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
            keys=[self.task_key(task_id), self.deliveries_of(task_id)],
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
