"""Two gateway processes on a real 3-master Redis Cluster: the queue spreads over the masters,
and a master that dies fails closed for its own keys while the others keep going, exactly.

(The overspend proof and the rpm window across two replicas run on the cluster too: see
test_metering.py, whose `pair` is parametrized over a single Redis and the cluster.)
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections import Counter
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from app.store.base import hash_secret
from app.tasks.redis_queue import shard_tags
from tests.e2e.test_metering import ADMIN, Pair, _fire, queue_edit
from tests.support.receiver import receiver
from tests.support.redis_cluster import RedisCluster


@pytest.fixture(scope="module")
def cpair(redis_cluster: RedisCluster) -> Iterator[Pair]:
    redis_cluster.flushall()
    p = Pair(redis_cluster, env={"IMAGEGATE_ALLOW_PRIVATE_URLS": "1"})
    try:
        yield p
    finally:
        p.close()


def _node_of_key(cluster: RedisCluster, key: dict[str, Any]) -> tuple[int, int]:
    """(node of the key's own data, node of its bearer index)."""
    return (
        cluster.node_of(f"ig:{{{key['id']}}}:key"),
        cluster.node_of(f"ig:hash:{hash_secret(key['key'])}"),
    )


def test_queue_streams_and_records_spread_over_masters(
    cpair: Pair, redis_cluster: RedisCluster
) -> None:
    nodes = {redis_cluster.node_of(f"ig:{{{tag}}}:stream") for tag in shard_tags(8)}
    assert nodes == {0, 1, 2}  # 8 shards over 3 masters
    key = cpair.create_key(credits=100, rpm=10_000, max_concurrency=100)
    with receiver() as rx:
        ids = []
        for i in range(12):
            ids.append(queue_edit(cpair.gateways[i % 2].url, key["key"], rx.url))
        got = {json.loads(d.body)["task_id"] for d in rx.wait_for(12, timeout=60)}
    assert got == set(ids)
    with_streams = [i for i in range(3) if redis_cluster.keys_on(i, "ig:{q*}:stream")]
    with_tasks = [i for i in range(3) if redis_cluster.keys_on(i, "ig:{q*}:task:*")]
    assert len(with_streams) == 3 and len(with_tasks) >= 2, (with_streams, with_tasks)
    assert cpair.key_state(key["id"])["balance"] == pytest.approx(100 - 12 * 0.14)


def test_master_killed_mid_run_fails_closed_and_loses_nothing(
    cpair: Pair, redis_cluster: RedisCluster
) -> None:
    victim = 2
    doomed = survivor = None
    while doomed is None or survivor is None:
        key = cpair.create_key(credits=10, rpm=100_000, max_concurrency=100)
        data_node, index_node = _node_of_key(redis_cluster, key)
        if data_node == victim and index_node != victim:
            doomed = doomed or key
        elif victim not in (data_node, index_node):
            survivor = survivor or key
    urls = [g.url for g in cpair.gateways]
    before = asyncio.run(_fire(urls, doomed["key"], 10)) + asyncio.run(
        _fire(urls, survivor["key"], 10)
    )
    assert all(r.status_code == 200 for r in before)

    # The survivor's traffic runs while the doomed key's master is killed under it.
    during: list[httpx.Response] = []

    def background() -> None:
        for _ in range(6):
            during.extend(asyncio.run(_fire(urls, survivor["key"], 10)))

    thread = threading.Thread(target=background)
    thread.start()
    redis_cluster.kill(victim)
    down = asyncio.run(_fire(urls, doomed["key"], 10))
    thread.join(timeout=120)
    try:
        assert Counter(r.status_code for r in down) == {503: 10}, [r.text for r in down]
        assert all(r.json()["success"] is False for r in down)
        assert Counter(r.status_code for r in during) == {200: 60}
        survivor_state = httpx.get(
            f"{urls[1]}/admin/keys/{survivor['id']}", headers=ADMIN, timeout=10
        ).json()
        assert survivor_state["balance"] == pytest.approx(10 - 70 * 0.14)
    finally:
        redis_cluster.restart(victim)
    # The dead master comes back with its data (AOF): nothing charged that was not served.
    deadline = time.monotonic() + 20
    while True:
        r = httpx.get(f"{urls[0]}/admin/keys/{doomed['id']}", headers=ADMIN, timeout=10)
        if r.status_code == 200 or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert r.status_code == 200, r.text
    assert r.json()["balance"] == pytest.approx(10 - 10 * 0.14)
    after = asyncio.run(_fire(urls, doomed["key"], 2))
    assert [x.status_code for x in after] == [200, 200]
