"""Credits and limits, provably right under concurrency, through real gateways.

Two gateway processes share one real Redis -- a single server, then a 3-master Redis Cluster
(the multi-replica deployments); the embedded SQLite store is exercised through the in-process
gateway of `conftest.start_stack`.
"""

from __future__ import annotations

import asyncio
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from app.simulator import create_simulator_app
from tests.e2e.conftest import ADMIN_KEY, Stack
from tests.support import images
from tests.support.net import ThreadedServer
from tests.support.procs import GatewayProcess, write_config
from tests.support.redis_cluster import RedisCluster
from tests.support.redis_server import RedisServer

PNG = images.png(64, 64)
ADMIN = {"authorization": f"Bearer {ADMIN_KEY}"}


class Pair:
    """A simulator, one Redis and two gateway processes sharing it."""

    def __init__(
        self, redis: RedisServer | RedisCluster, env: dict[str, str] | None = None
    ) -> None:
        self.redis = redis
        self.sim = ThreadedServer(create_simulator_app()).start()
        workdir = Path(tempfile.mkdtemp(prefix="imagegate-pair-"))
        config = write_config(self.sim.url, workdir / "gateway.yaml")
        env = {"IMAGEGATE_REDIS_URL": redis.url, "IMAGEGATE_ADMIN_KEY": ADMIN_KEY, **(env or {})}
        self.gateways = [GatewayProcess(config, env=env).start() for _ in range(2)]

    def create_key(self, **body: Any) -> dict[str, Any]:
        r = httpx.post(
            self.gateways[0].url + "/admin/keys",
            headers=ADMIN,
            json={"name": "t", **body},
            timeout=10,
        )
        assert r.status_code == 201, r.text
        return dict(r.json())

    def key_state(self, key_id: str, via: int = 1) -> dict[str, Any]:
        r = httpx.get(f"{self.gateways[via].url}/admin/keys/{key_id}", headers=ADMIN, timeout=10)
        return dict(r.json())

    def records(self, key_id: str) -> list[dict[str, Any]]:
        r = httpx.get(
            self.gateways[0].url + "/admin/usage/records",
            headers=ADMIN,
            params={"key_id": key_id, "limit": 1000},
            timeout=10,
        )
        return list(r.json()["data"])

    def close(self) -> None:
        for g in self.gateways:
            g.stop()
        self.sim.stop()


@pytest.fixture(scope="module", params=["redis", "cluster"])
def pair(request: pytest.FixtureRequest) -> Iterator[Pair]:
    p = Pair(
        request.getfixturevalue("redis_server" if request.param == "redis" else "redis_cluster")
    )
    try:
        yield p
    finally:
        p.close()


def queue_edit(url: str, key: str, callback_url: str) -> str:
    """One nano-banana edit with a callback through the gateway at `url`: its task id."""
    r = httpx.post(
        url + "/v1/images/edits",
        headers={"authorization": f"Bearer {key}"},
        data={"model": "nano-banana", "prompt": "a leaf", "callback_url": callback_url},
        files={"image": ("a.png", PNG, "image/png")},
        timeout=30,
    )
    assert r.status_code == 200, r.text
    return str(r.json()["task_id"])


async def _fire(
    urls: list[str], key: str, n: int, model: str = "nano-banana", **data: str
) -> list[httpx.Response]:
    limits = httpx.Limits(max_connections=400, max_keepalive_connections=400)
    async with httpx.AsyncClient(timeout=60, limits=limits) as client:

        async def one(i: int) -> httpx.Response:
            return await client.post(
                urls[i % len(urls)] + "/v1/images/edits",
                headers={"authorization": f"Bearer {key}"},
                data={"model": model, "prompt": "add a leaf", **data},
                files={"image": ("a.png", PNG, "image/png")},
            )

        return list(await asyncio.gather(*(one(i) for i in range(n))))


def test_overspend_two_processes_shared_redis(pair: Pair) -> None:
    key = pair.create_key(credits=1.00, rpm=100_000, max_concurrency=1000)
    urls = [g.url for g in pair.gateways]
    responses = asyncio.run(_fire(urls, key["key"], 200))
    statuses = Counter(r.status_code for r in responses)
    assert statuses == {200: 7, 402: 193}, statuses
    for r in responses:
        if r.status_code == 402:
            assert r.json()["error"]["code"] == "insufficient_credits"
    assert pair.key_state(key["id"])["balance"] == 0.02
    rows = pair.records(key["id"])
    assert len(rows) == 7 and all(r["status"] == "succeeded" for r in rows)
    assert sum(round(r["credits"] * 100) for r in rows) == 98


def test_overspend_embedded_store(stack: Stack) -> None:
    key = stack.create_key(credits=1.00, rpm=100_000, max_concurrency=1000)
    responses = asyncio.run(_fire([stack.url], key["key"], 200))
    statuses = Counter(r.status_code for r in responses)
    assert statuses == {200: 7, 402: 193}, statuses
    assert stack.balance(key["id"]) == 0.02
    with stack.admin() as c:
        rows = c.get("/admin/usage/records", params={"key_id": key["id"]}).json()["data"]
    assert len(rows) == 7


def test_rpm_across_two_processes(pair: Pair) -> None:
    key = pair.create_key(credits=100, rpm=30, max_concurrency=100)
    urls = [g.url for g in pair.gateways]
    first = asyncio.run(_fire(urls, key["key"], 30))
    assert all(r.status_code == 200 for r in first), [r.text for r in first if r.status_code != 200]
    over = asyncio.run(_fire(urls[1:], key["key"], 1))[0]
    assert over.status_code == 429, over.text
    assert over.json()["error"]["code"] == "too_many_requests"
    retry_after = int(over.headers["retry-after"])
    assert 40 <= retry_after <= 60, retry_after
    assert over.headers["x-ratelimit-limit-requests"] == "30"
    assert over.headers["x-ratelimit-remaining-requests"] == "0"
    assert pair.key_state(key["id"])["balance"] == pytest.approx(100 - 30 * 0.14)
    metrics = httpx.get(pair.gateways[1].url + "/metrics", timeout=10).text
    assert 'imagegate_rate_limit_rejections_total{reason="rpm"} 1' in metrics
    assert 'imagegate_requests_total{model="nano-banana",status="too_many_requests"} 1' in metrics


def test_concurrency_limit_with_slow_upstream(pair: Pair) -> None:
    key = pair.create_key(credits=100, rpm=1000, max_concurrency=2)
    httpx.post(
        pair.sim.url + "/_sim/faults",
        json={"protocol": "gemini", "kind": "latency", "delay_s": 2.0, "times": 2},
        timeout=5,
    )

    async def run() -> list[httpx.Response]:
        urls = [g.url for g in pair.gateways]
        slow = asyncio.create_task(_fire(urls, key["key"], 2))
        await asyncio.sleep(0.7)
        third = await _fire(urls[:1], key["key"], 1)
        return [*await slow, *third]

    a, b, c = asyncio.run(run())
    assert (a.status_code, b.status_code) == (200, 200)
    assert c.status_code == 429 and "concurrency" in c.json()["error"]["message"]
    assert int(c.headers["retry-after"]) >= 1


def test_revoked_key_stops_on_every_replica(pair: Pair) -> None:
    key = pair.create_key(credits=10, rpm=1000)
    ok = asyncio.run(_fire([pair.gateways[1].url], key["key"], 1))[0]
    assert ok.status_code == 200
    r = httpx.delete(f"{pair.gateways[0].url}/admin/keys/{key['id']}", headers=ADMIN, timeout=10)
    assert r.status_code == 200
    time.sleep(1.1)
    gone = asyncio.run(_fire([pair.gateways[1].url], key["key"], 1))[0]
    assert gone.status_code == 401


# --- prices -----------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("size", "cost"),
    [
        ("auto", 0.20),
        ("1024x1024", 0.20),
        ("1254x1254", 0.20),
        ("1792x1024", 0.20),
        (None, 0.20),
        ("2048x2048", 0.30),
        ("3840x2160", 0.30),
        ("1536x864", 0.30),
    ],
)
def test_gpt_image_2_tiers(stack: Stack, size: str | None, cost: float) -> None:
    key = stack.create_key(credits=1, rpm=1000)
    data = {"model": "gpt-image-2", "prompt": "x"} | ({"size": size} if size else {})
    r = httpx.post(
        stack.url + "/v1/images/edits",
        headers={"authorization": f"Bearer {key['key']}"},
        data=data,
        files={"image": ("a.png", PNG, "image/png")},
        timeout=60,
    )
    assert r.status_code == 200, r.text
    assert stack.balance(key["id"]) == pytest.approx(1 - cost, abs=1e-9)


def test_dall_e_2_charged_on_images_returned(stack: Stack) -> None:
    key = stack.create_key(credits=1, rpm=1000)
    stack.clear_sim()
    stack.fault(protocol="openai", kind="short", count=1, times=1)
    r = httpx.post(
        stack.url + "/v1/images/edits",
        headers={"authorization": f"Bearer {key['key']}"},
        data={"model": "dall-e-2", "prompt": "x", "n": "4", "size": "256x256"},
        files={"image": ("a.png", images.png(256, 256, alpha=True), "image/png")},
        timeout=60,
    )
    assert r.status_code == 200, r.text
    assert len(r.json()["data"]) == 3
    assert stack.balance(key["id"]) == pytest.approx(1 - 3 * 0.02, abs=1e-9)


def test_me_endpoint(stack: Stack) -> None:
    key = stack.create_key(credits=3.5, rpm=42)
    r = httpx.get(
        stack.url + "/v1/me", headers={"authorization": f"Bearer {key['key']}"}, timeout=10
    )
    assert r.status_code == 200
    body = r.json()
    assert body["balance"] == 3.5 and body["rpm"] == 42 and "key_hash" not in body
    assert "webhook_secret" not in body


# --- Redis down and back ----------------------------------------------------------------
def test_redis_killed_and_restarted(tmp_path: Path) -> None:
    redis = RedisServer(appendonly=True).start()
    sim = ThreadedServer(create_simulator_app()).start()
    config = write_config(sim.url, tmp_path / "gateway.yaml")
    gw = GatewayProcess(
        config, env={"IMAGEGATE_REDIS_URL": redis.url, "IMAGEGATE_ADMIN_KEY": ADMIN_KEY}
    ).start()
    try:
        r = httpx.post(
            gw.url + "/admin/keys", headers=ADMIN, json={"name": "r", "credits": 2}, timeout=10
        )
        key = r.json()
        assert asyncio.run(_fire([gw.url], key["key"], 3))[0].status_code == 200
        redis.kill()
        down = asyncio.run(_fire([gw.url], key["key"], 3))
        assert all(x.status_code == 503 for x in down), [x.text for x in down]
        assert down[0].json()["success"] is False
        assert httpx.get(gw.url + "/readyz", timeout=10).status_code == 503
        redis.start()
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            back = asyncio.run(_fire([gw.url], key["key"], 1))[0]
            if back.status_code == 200:
                break
            time.sleep(0.3)
        assert back.status_code == 200, back.text
        state = httpx.get(f"{gw.url}/admin/keys/{key['id']}", headers=ADMIN, timeout=10).json()
        assert state["balance"] == pytest.approx(2 - 4 * 0.14)
    finally:
        gw.stop()
        sim.stop()
        redis.cleanup()
