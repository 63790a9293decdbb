"""Replacing a replica: SIGTERM drains it (requests in flight answered, task leases handed
back, exit 0); SIGHUP and POST /admin/reload change its config without a restart."""

from __future__ import annotations

import asyncio
import json
import signal
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
import yaml

from app.simulator import create_simulator_app
from app.tasks.redis_queue import RedisTaskQueue
from tests.e2e.test_metering import ADMIN, ADMIN_KEY, _fire, queue_edit
from tests.support.net import ThreadedServer
from tests.support.procs import GatewayProcess, write_config
from tests.support.receiver import receiver
from tests.support.redis_server import RedisServer


def _wait_sim(sim: ThreadedServer, count: int, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if len(httpx.get(sim.url + "/_sim/requests", timeout=5).json()) >= count:
            return
        time.sleep(0.05)
    raise TimeoutError(f"the simulator never saw {count} requests")


def _key(url: str, **body: Any) -> dict[str, Any]:
    r = httpx.post(url + "/admin/keys", headers=ADMIN, json={"name": "s", **body}, timeout=10)
    assert r.status_code == 201, r.text
    return dict(r.json())


def _balance(url: str, key_id: str) -> float:
    r = httpx.get(f"{url}/admin/keys/{key_id}", headers=ADMIN, timeout=10)
    return float(r.json()["balance"])


@pytest.mark.parametrize("workers", [1, 2])
def test_sigterm_answers_requests_in_flight_and_exits_0(
    tmp_path: Path, redis_server: RedisServer, workers: int
) -> None:
    redis_server.flushall()
    sim = ThreadedServer(create_simulator_app()).start()
    httpx.post(sim.url + "/_sim/config", json={"latency_s": 2.0}, timeout=5)
    config = write_config(sim.url, tmp_path / "gateway.yaml", server={"shutdown_grace_s": 20})
    env = {"IMAGEGATE_REDIS_URL": redis_server.url, "IMAGEGATE_ADMIN_KEY": ADMIN_KEY}
    gw = GatewayProcess(config, env=env, args=["--workers", str(workers)]).start()
    try:
        key = _key(gw.url, credits=10, rpm=1000, max_concurrency=100)
        answers: list[httpx.Response] = []
        firing = threading.Thread(
            target=lambda: answers.extend(asyncio.run(_fire([gw.url], key["key"], 8)))
        )
        firing.start()
        _wait_sim(sim, 8)  # all 8 are now waiting on the slow upstream
        assert gw.proc is not None
        started = time.monotonic()
        gw.proc.send_signal(signal.SIGTERM)
        time.sleep(0.5)
        with pytest.raises(httpx.TransportError):  # no longer accepting
            httpx.get(gw.url + "/healthz", timeout=2)
        firing.join(timeout=30)
        assert [r.status_code for r in answers] == [200] * 8, [r.text for r in answers]
        assert gw.proc.wait(timeout=30) == 0
        assert time.monotonic() - started < 15
    finally:
        gw.stop()
        sim.stop()
    # charged for exactly the 8 answered edits
    client = redis.Redis.from_url(redis_server.url, decode_responses=True)
    balance = int(client.hget(f"ig:{{{key['id']}}}:key", "balance") or 0)
    client.close()
    assert balance == 10_000_000 - 8 * 140_000


def test_sigterm_hands_task_leases_back(tmp_path: Path, redis_server: RedisServer) -> None:
    """A draining replica whose tasks outlast the grace period releases them: another
    replica runs them at once, not after the (here 10-minute) lease."""
    redis_server.flushall()
    sim = ThreadedServer(create_simulator_app()).start()
    httpx.post(sim.url + "/_sim/config", json={"latency_s": 3.0}, timeout=5)
    config = write_config(
        sim.url,
        tmp_path / "gateway.yaml",
        server={"shutdown_grace_s": 0.5},
        tasks={"workers": 2, "lease_s": 600},
        callbacks={"backoff_base_s": 0.2, "backoff_max_s": 1},
    )
    env = {
        "IMAGEGATE_REDIS_URL": redis_server.url,
        "IMAGEGATE_ADMIN_KEY": ADMIN_KEY,
        "IMAGEGATE_ALLOW_PRIVATE_URLS": "true",
    }
    first = GatewayProcess(config, env=env).start()
    second = None
    try:
        with receiver() as rx:
            key = _key(first.url, credits=10, max_concurrency=10)
            ids = [queue_edit(first.url, key["key"], rx.url) for _ in range(2)]
            _wait_sim(sim, 2)  # both tasks are running on the first replica
            assert first.proc is not None
            first.proc.send_signal(signal.SIGTERM)
            assert first.proc.wait(timeout=20) == 0
            queue = RedisTaskQueue(redis.asyncio.Redis.from_url(redis_server.url))
            client = redis.Redis.from_url(redis_server.url, decode_responses=True)
            states = [client.hget(queue.task_key(i), "status") for i in ids]
            client.close()
            assert states == ["queued", "queued"]  # handed back, not left running
            second = GatewayProcess(config, env=env).start()
            started = time.monotonic()
            delivered = rx.wait_for(2, timeout=30)
            assert time.monotonic() - started < 20
        assert {json.loads(d.body)["task_id"] for d in delivered} == set(ids)
        assert all(json.loads(d.body)["success"] for d in delivered)
        assert _balance(second.url, key["id"]) == pytest.approx(10 - 2 * 0.14)
    finally:
        first.stop()
        if second is not None:
            second.stop()
        sim.stop()


def test_reload_by_sighup_and_admin_endpoint(tmp_path: Path) -> None:
    sim = ThreadedServer(create_simulator_app()).start()
    path = write_config(sim.url, tmp_path / "gateway.yaml")
    gw = GatewayProcess(path, env={"IMAGEGATE_ADMIN_KEY": ADMIN_KEY}).start()
    raw = yaml.safe_load(path.read_text())
    try:
        key = _key(gw.url, credits=10, rpm=1000)

        def charge() -> float:
            before = _balance(gw.url, key["id"])
            (r,) = asyncio.run(_fire([gw.url], key["key"], 1))
            assert r.status_code == 200, r.text
            return round(before - _balance(gw.url, key["id"]), 6)

        assert charge() == 0.14
        # SIGHUP with a new price
        raw["models"]["nano-banana"]["price"] = {"per_request": 0.5}
        path.write_text(yaml.safe_dump(raw))
        assert gw.proc is not None
        gw.proc.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 10
        while (cost := charge()) != 0.5 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert cost == 0.5
        # a bad file: refused with the start-up message, the running config stays
        good = path.read_text()
        raw["models"]["nano-banana"]["price"] = {"per_request": -1}
        path.write_text(yaml.safe_dump(raw))
        r = httpx.post(gw.url + "/admin/reload", headers=ADMIN, timeout=10)
        assert r.status_code == 400, r.text
        message = r.json()["error"]["message"]
        assert str(path) in message and "models.nano-banana.price.per_request" in message
        gw.proc.send_signal(signal.SIGHUP)
        time.sleep(0.3)
        assert gw.proc.poll() is None
        assert charge() == 0.5
        # the admin endpoint with a good file
        path.write_text(good.replace("0.5", "0.25"))
        r = httpx.post(gw.url + "/admin/reload", headers=ADMIN, timeout=10)
        assert r.status_code == 200, r.text
        assert "nano-banana" in r.json()["models"]
        assert charge() == 0.25
        assert httpx.post(gw.url + "/admin/reload", timeout=10).status_code == 401
    finally:
        gw.stop()
        sim.stop()
    assert "config.reload.refused" in gw.log.read_text()
