"""`Idempotency-Key` records on Redis: one hash per (key, idempotency key), with a TTL
(`IdempotencyRecords`)."""

from __future__ import annotations

import hashlib
from typing import Any

from app.tasks.idempotency import IdemState
from app.tasks.redis_task import text

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
-- Our own record (task ids are unique per request): a client that re-sent this script after
-- a lost reply must see the answer its first run gave, not 'pending' on itself.
if h[4] == 'pending' and h[2] == ARGV[2] then return {'new', ARGV[2]} end
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


class RedisIdempotency:
    """Mixed into `RedisTaskQueue` (its client `r` and key prefix `prefix`). Each record is
    its own hash tag, so records spread over a Redis Cluster's masters."""

    r: Any
    prefix: str

    def _init_idempotency(self, client: Any) -> None:
        self._idem_begin = client.register_script(_IDEM_BEGIN)
        self._idem_finish = client.register_script(_IDEM_FINISH)
        self._idem_abort = client.register_script(_IDEM_ABORT)

    def idem_key(self, key_id: str, idem_key: str) -> str:
        digest = hashlib.sha256(idem_key.encode()).hexdigest()[:32]
        return f"{self.prefix}idem:{{{key_id}:{digest}}}"

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
        owner = text(res[1])
        response = res[2] if len(res) > 2 else None
        return IdemState(kind=kind, task_id=owner, response=response)

    async def idem_finish(self, key_id: str, idem_key: str, response: bytes) -> None:
        await self._idem_finish(keys=[self.idem_key(key_id, idem_key)], args=[response])

    async def idem_abort(self, key_id: str, idem_key: str, task_id: str) -> None:
        await self._idem_abort(keys=[self.idem_key(key_id, idem_key)], args=[task_id])
