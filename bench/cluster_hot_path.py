"""The two hot store calls (admit + settle) on a Redis Cluster: the lean pipelined client
(`RespCluster`, what the gateway uses) against redis-py's `RedisCluster` running the same
scripts, with one plain Redis through the lean client as the reference.

    python -m bench.cluster_hot_path [pairs] [concurrency]

Starts its own 3-master cluster and one redis-server on free ports (tests/support), runs the
variants interleaved in rounds (so a busy shared machine hurts them alike) and prints a
Markdown table: pairs per second and client CPU per pair.
"""

from __future__ import annotations

import asyncio
import statistics
import sys
import time
import uuid
from collections import Counter
from typing import Any

from app.store.base import ApiKey, UsageRecord, hash_secret
from app.store.redis_store import RedisStore
from tests.support.redis_cluster import RedisCluster
from tests.support.redis_server import RedisServer


async def _pairs(
    store: RedisStore, *, lean: bool, pairs: int, concurrency: int
) -> tuple[float, list[str]]:
    keys = [f"bench{i}" for i in range(concurrency)]
    for k in keys:
        if await store.get_key(k) is None:
            await store.create_key(ApiKey(id=k, name=k, key_hash=hash_secret(k + uuid.uuid4().hex),
                                          prefix="b", balance=10**15, webhook_secret="w",
                                          created_at=0.0))  # fmt: skip
    if not lean:  # route the hot calls through redis-py's client instead of the lean one

        async def via_redis_py(script: Any, *, keys: list[str], args: list[Any]) -> Any:
            return await script(keys=keys, args=args)

        store._hot = via_redis_py  # type: ignore[method-assign]
    per_worker = pairs // concurrency
    errors: list[str] = []

    async def worker(k: str) -> None:
        for _ in range(per_worker):
            try:
                await one(k)
            except Exception as exc:  # counted: redis-py's cluster client fails under load
                errors.append(type(exc).__name__)

    async def one(k: str) -> None:
        rid = uuid.uuid4().hex
        now = time.time()
        await store.admit(k, reservation_id=rid, cost=1, rpm=10**9, max_concurrency=10**6,
                              now=now, hold_s=60)  # fmt: skip
        rec = UsageRecord(reservation_id=rid, key_id=k, model="m", size_tier="request",
                              images=1, credits=1, reserved=1, task_id=rid, trace_id=rid,
                              status="succeeded", latency_ms=1, created_at=now)  # fmt: skip
        await store.settle(rid, k, 1, rec)

    cpu0 = time.process_time()
    await asyncio.gather(*(worker(k) for k in keys))
    return (time.process_time() - cpu0) / (per_worker * concurrency), errors


async def main(pairs: int, concurrency: int) -> None:
    cluster = RedisCluster().start()
    single = RedisServer(appendonly=False).start()
    variants = {
        "cluster, lean RESP client (gateway)": (cluster.url, True),
        "cluster, redis-py RedisCluster": (cluster.url, False),
        "single Redis, lean RESP client": (single.url, True),
    }
    rates: dict[str, list[float]] = {v: [] for v in variants}
    cpus: dict[str, list[float]] = {v: [] for v in variants}
    errors: dict[str, list[str]] = {v: [] for v in variants}
    try:
        for _ in range(3):
            for name, (url, lean) in variants.items():
                store = RedisStore(url)
                t0 = time.perf_counter()
                cpu, errs = await _pairs(store, lean=lean, pairs=pairs, concurrency=concurrency)
                errors[name].extend(errs)
                rates[name].append(pairs / (time.perf_counter() - t0))
                cpus[name].append(cpu)
                await store.close()
    finally:
        cluster.cleanup()
        single.cleanup()
    print(f"admit+settle pairs: {pairs} per round, {concurrency} concurrent, 3 rounds "
          "interleaved; median of rounds\n")  # fmt: skip
    print("| variant | pairs/s | client CPU per pair | failed pairs (3 rounds) |")
    print("|---|---:|---:|---|")
    for name in variants:
        rate = statistics.median(rates[name])
        cpu = statistics.median(cpus[name]) * 1e6
        failed = ", ".join(f"{n} {e}" for e, n in Counter(errors[name]).items()) or "0"
        print(f"| {name} | {rate:,.0f} | {cpu:.0f} us | {failed} |")


if __name__ == "__main__":
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 4000
    c = int(sys.argv[2]) if len(sys.argv) > 2 else 50
    asyncio.run(main(n, c))
