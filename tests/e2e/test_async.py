"""Asynchronous edits (docs/API.md): callback_url, signed deliveries, polling, idempotency,
and tasks that survive a gateway killed with SIGKILL."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis

from app.core.config import CallbacksConfig, TasksConfig
from app.simulator import create_simulator_app
from app.tasks.signing import verify
from tests.e2e.conftest import ADMIN_KEY, Stack, start_stack
from tests.support import images
from tests.support.net import ThreadedServer
from tests.support.procs import GatewayProcess, write_config
from tests.support.receiver import receiver
from tests.support.redis_server import RedisServer

EDITS = "/v1/openai/images/edits"
PNG = images.png(64, 64)
FAST_CALLBACKS = CallbacksConfig(max_attempts=3, backoff_base_s=0.2, backoff_max_s=0.5, timeout_s=2)


@pytest.fixture(scope="module", params=["sqlite", "redis"])
def astack(request: pytest.FixtureRequest) -> Iterator[Stack]:
    """Callbacks, polling and idempotency on both stores."""
    s = start_stack(
        allow_private=True,
        callbacks=FAST_CALLBACKS,
        tasks=TasksConfig(workers=4, lease_s=30),
        store=request.param,
    )
    try:
        yield s
    finally:
        s.stop()


def submit(
    stack: Stack,
    key: dict[str, Any],
    callback_url: str | None,
    *,
    model: str = "gpt-image-1",
    headers: dict[str, str] | None = None,
    prompt: str = "make it blue",
) -> httpx.Response:
    data = {"model": model, "prompt": prompt}
    if callback_url:
        data["callback_url"] = callback_url
    return httpx.post(
        stack.url + EDITS,
        data=data,
        headers={"authorization": f"Bearer {key['key']}", **(headers or {})},
        files={"image": ("a.png", PNG, "image/png")},
        timeout=60,
    )


def get_task(stack: Stack, key: dict[str, Any], task_id: str) -> httpx.Response:
    return httpx.get(
        f"{stack.url}/v1/tasks/{task_id}",
        headers={"authorization": f"Bearer {key['key']}"},
        timeout=10,
    )


def wait_task(
    stack: Stack, key: dict[str, Any], task_id: str, pred: Any, timeout: float = 30
) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        body = get_task(stack, key, task_id).json()
        if pred(body):
            return dict(body)
        time.sleep(0.1)
    raise TimeoutError(f"task {task_id} never matched: {body}")


def test_seed_callback_flow(astack: Stack) -> None:
    key = astack.create_key(credits=1)
    with receiver() as rx:
        r = submit(astack, key, rx.url)
        assert r.status_code == 200, r.text
        first = r.json()
        assert first["success"] is True and set(first) == {"success", "task_id", "trace_id"}
        (delivery,) = rx.wait_for(1)
    body = json.loads(delivery.body)
    assert body["success"] is True
    assert body["task_id"] == first["task_id"] and body["trace_id"] == first["trace_id"]
    assert body["data"]["data"][0]["b64_json"]  # multipart → b64_json, as the seed shows
    assert isinstance(body["data"]["created"], int)
    header = delivery.headers["x-imagegate-signature"]
    assert verify(key["webhook_secret"], delivery.body, header)
    assert not verify("whsec_wrong", delivery.body, header)
    task = wait_task(astack, key, first["task_id"], lambda t: t["callback"]["delivered"])
    assert task["status"] == "succeeded"
    assert task["result"]["data"] == body["data"]["data"]
    assert task["callback"]["attempts"] == 1
    assert astack.balance(key["id"]) == pytest.approx(0.90)


def test_callback_retried_until_delivered(astack: Stack) -> None:
    key = astack.create_key(credits=1)
    with receiver(answers=[500, 500]) as rx:
        task_id = submit(astack, key, rx.url).json()["task_id"]
        deliveries = rx.wait_for(3)
        assert [json.loads(d.body)["task_id"] for d in deliveries] == [task_id] * 3
        task = wait_task(astack, key, task_id, lambda t: t["callback"]["delivered"])
    assert task["callback"]["attempts"] == 3


def test_receiver_down_marks_undelivered(astack: Stack) -> None:
    key = astack.create_key(credits=1)
    with receiver() as rx:
        dead_url = rx.url
    task_id = submit(astack, key, dead_url).json()["task_id"]
    task = wait_task(astack, key, task_id, lambda t: t["callback"].get("state") == "undelivered")
    assert task["status"] == "succeeded" and task["result"]["data"]
    assert task["callback"]["delivered"] is False
    assert task["callback"]["attempts"] == FAST_CALLBACKS.max_attempts


def test_upstream_failure_callback_and_refund(astack: Stack) -> None:
    key = astack.create_key(credits=1)
    astack.fault(protocol="openai", kind="status", status=400, times=1, message="bad image")
    with receiver() as rx:
        task_id = submit(astack, key, rx.url).json()["task_id"]
        (delivery,) = rx.wait_for(1)
    body = json.loads(delivery.body)
    assert body == {
        "success": False,
        "task_id": task_id,
        "trace_id": body["trace_id"],
        "error": {"code": "bad_request", "message": body["error"]["message"]},
    }
    assert astack.balance(key["id"]) == 1
    task = get_task(astack, key, task_id).json()
    assert task["status"] == "failed" and task["error"]["code"] == "bad_request"


def test_task_of_another_key_is_404(astack: Stack) -> None:
    owner, other = astack.create_key(credits=1), astack.create_key(credits=1)
    task_id = submit(astack, owner, None).json()["task_id"]
    wait_task(astack, owner, task_id, lambda t: t.get("status") == "succeeded")
    assert get_task(astack, other, task_id).status_code == 404
    assert get_task(astack, owner, "nope").status_code == 404


@pytest.mark.parametrize("url", ["http://127.0.0.1:9/hook", "http://169.254.169.254/latest"])
def test_private_callback_refused_at_submit(stack: Stack, url: str) -> None:
    key = stack.create_key(credits=1)
    r = submit(stack, key, url)
    assert r.status_code == 400, r.text
    assert r.json()["error"]["param"] == "callback_url"
    assert stack.balance(key["id"]) == 1


def test_idempotency_five_concurrent(astack: Stack) -> None:
    key = astack.create_key(credits=1)
    astack.clear_sim()
    astack.fault(protocol="openai", kind="latency", delay_s=0.5, times=1)
    headers = {"authorization": f"Bearer {key['key']}", "idempotency-key": "order-42"}

    async def fire() -> list[httpx.Response]:
        async with httpx.AsyncClient(timeout=60) as c:
            return list(
                await asyncio.gather(
                    *(
                        c.post(
                            astack.url + EDITS,
                            headers=headers,
                            data={"model": "gpt-image-1", "prompt": "same"},
                            files={"image": ("a.png", PNG, "image/png")},
                        )
                        for _ in range(5)
                    )
                )
            )

    responses = asyncio.run(fire())
    assert [r.status_code for r in responses] == [200] * 5, [r.text for r in responses]
    assert len({r.content for r in responses}) == 1
    assert len([q for q in astack.sim_requests() if q["protocol"] == "openai"]) == 1
    assert astack.balance(key["id"]) == pytest.approx(0.90)
    # same key, different body → 409
    r = httpx.post(
        astack.url + EDITS,
        headers=headers,
        timeout=30,
        data={"model": "gpt-image-1", "prompt": "different"},
        files={"image": ("a.png", PNG, "image/png")},
    )
    assert r.status_code == 409 and r.json()["error"]["code"] == "conflict"


def test_sync_request_is_pollable_at_once(astack: Stack) -> None:
    """Read-your-writes: the task record is written by the settle that charged the request."""
    key = astack.create_key(credits=1)
    auth = {"authorization": f"Bearer {key['key']}"}
    with httpx.Client(base_url=astack.url, headers=auth, timeout=30) as c:  # one connection
        for _ in range(3):
            r = c.post(EDITS, data={"model": "gpt-image-1", "prompt": "x"}, files={"image": PNG})
            assert r.status_code == 200, r.text
            body = r.json()
            got = c.get(f"/v1/tasks/{body['task_id']}")  # right away: no waiting, no polling
            assert got.status_code == 200, got.text
    task = got.json()
    assert task["status"] == "succeeded" and task["trace_id"] == body["trace_id"]
    assert task["result"]["data"] == body["data"]
    assert task["callback"]["delivered"] is False
    other = astack.create_key(credits=1)
    assert get_task(astack, other, body["task_id"]).status_code == 404


def test_sync_edit_is_one_store_call_before_the_upstream_and_one_after(astack: Stack) -> None:
    """Keeping the task record costs no extra round trip: it rides in the settle script."""
    if astack.redis is None:
        pytest.skip("counts the commands a Redis server sees (MONITOR)")
    key = astack.create_key(credits=1)
    auth = {"authorization": f"Bearer {key['key']}"}
    seen: list[str] = []
    done = threading.Event()
    ready = threading.Event()

    def watch() -> None:
        r = redis.Redis.from_url(astack.redis.url)  # type: ignore[union-attr]
        with r.monitor() as m:
            ready.set()
            for cmd in m.listen():
                if done.is_set():
                    return
                if key["id"] in cmd["command"] and cmd.get("client_type") != "lua":
                    seen.append(cmd["command"].split(" ", 1)[0])

    with httpx.Client(base_url=astack.url, headers=auth, timeout=30) as c:
        edit = {"data": {"model": "gpt-image-1", "prompt": "x"}, "files": {"image": PNG}}
        assert c.post(EDITS, **edit).status_code == 200  # warm the key cache
        watcher = threading.Thread(target=watch, daemon=True)
        watcher.start()
        ready.wait(5)
        time.sleep(0.1)
        assert c.post(EDITS, **edit).status_code == 200
        time.sleep(0.2)
        done.set()
        redis.Redis.from_url(astack.redis.url).ping()  # type: ignore[union-attr]
        watcher.join(5)
    assert seen == ["EVALSHA", "EVALSHA"], seen  # admit; settle + ledger + task record


def test_replays_answer_with_the_first_trace_id(astack: Stack) -> None:
    """x-request-id always equals the body's trace_id; a replay is the first answer, marked."""
    key = astack.create_key(credits=1)
    with receiver() as rx:
        for callback in (None, rx.url):  # a synchronous edit, then a callback submission
            headers = {"idempotency-key": f"replay-{callback is None}"}
            first = submit(astack, key, callback, headers=headers)
            again = submit(astack, key, callback, headers=headers)
            assert first.status_code == again.status_code == 200, (first.text, again.text)
            assert "idempotent-replayed" not in first.headers
            assert again.headers["idempotent-replayed"] == "true"
            assert first.json()["trace_id"] == first.headers["x-request-id"]
            assert again.content == first.content
            assert again.headers["x-request-id"] == first.json()["trace_id"]
        rx.wait_for(1, timeout=30)
    assert astack.balance(key["id"]) == pytest.approx(0.80)  # two requests, each charged once


# --- durability: kill -9 with 20 tasks in flight, on both stores ---------------------------
LEASE_S = 3


@pytest.mark.parametrize("store", ["redis", "sqlite"])
def test_kill9_with_tasks_in_flight(tmp_path: Path, redis_server: RedisServer, store: str) -> None:
    """A restarted gateway finishes a SIGKILLed one's tasks within the lease plus a few
    seconds, each charged once."""
    redis_server.flushall()
    sim = ThreadedServer(create_simulator_app()).start()
    # the upstream holds every call until the kill, however slowly the submits go
    httpx.post(sim.url + "/_sim/config", json={"latency_s": 60.0}, timeout=5)
    config = write_config(
        sim.url,
        tmp_path / "gateway.yaml",
        tasks={"workers": 20, "lease_s": LEASE_S},
        callbacks={"max_attempts": 5, "backoff_base_s": 0.2, "backoff_max_s": 1, "timeout_s": 5},
    )
    env = {"IMAGEGATE_ADMIN_KEY": ADMIN_KEY, "IMAGEGATE_ALLOW_PRIVATE_URLS": "true"}
    if store == "redis":
        env["IMAGEGATE_REDIS_URL"] = redis_server.url
    gw = GatewayProcess(config, env=env).start()
    try:
        with receiver() as rx:
            r = httpx.post(
                gw.url + "/admin/keys",
                json={"name": "k", "credits": 10, "max_concurrency": 50},
                headers={"authorization": f"Bearer {ADMIN_KEY}"},
                timeout=10,
            )
            key = r.json()
            stack_like = type("S", (), {"url": gw.url})()
            ids = [submit(stack_like, key, rx.url).json()["task_id"] for _ in range(20)]  # type: ignore[arg-type]
            # wait until the workers have claimed all 20 and are waiting on the upstream
            deadline = time.monotonic() + 30
            while len(httpx.get(sim.url + "/_sim/requests", timeout=5).json()) < 20:
                assert time.monotonic() < deadline, "the workers did not call the upstream"
                time.sleep(0.05)
            gw.kill()
            killed_at = time.monotonic()
            assert rx.deliveries == []  # every upstream call was still held
            httpx.post(sim.url + "/_sim/config", json={"latency_s": 0.0}, timeout=5)
            gw = GatewayProcess(config, env=env, data_dir=gw.data_dir).start()
            try:
                rx.wait_for(20, timeout=60)
                # lease + start-up and delivery slack (the upstream answers at once now)
                assert time.monotonic() - killed_at < LEASE_S + 4 + 15
            except TimeoutError:
                seen = {json.loads(d.body)["task_id"] for d in rx.deliveries}
                now_at = type("S", (), {"url": gw.url})()
                states = {i: get_task(now_at, key, i).json() for i in ids if i not in seen}  # type: ignore[arg-type]
                raise AssertionError(f"undelivered: {states}") from None
            got = {json.loads(d.body)["task_id"] for d in rx.deliveries}
            assert got == set(ids)
            assert all(json.loads(d.body)["success"] for d in rx.deliveries)
        admin = {"authorization": f"Bearer {ADMIN_KEY}"}
        state = httpx.get(f"{gw.url}/admin/keys/{key['id']}", headers=admin, timeout=10).json()
        assert state["balance"] == pytest.approx(10 - 20 * 0.10)
        rows = httpx.get(
            gw.url + "/admin/usage/records",
            headers=admin,
            timeout=10,
            params={"key_id": key["id"], "limit": 100},
        ).json()["data"]
        assert sorted(r["task_id"] for r in rows if r["status"] == "succeeded") == sorted(ids)
    finally:
        gw.stop()
        sim.stop()
