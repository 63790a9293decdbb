"""POST /admin/tasks/{id}/redeliver with a real callback receiver: a callback still retrying is
sent now, one given up is sent again, a delivered one or a task without callback is a 409."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from app.core.config import CallbacksConfig, TasksConfig
from app.tasks.signing import verify
from tests.e2e.conftest import Stack, start_stack
from tests.e2e.test_admin import assert_error
from tests.e2e.test_async import submit, wait_task
from tests.support.receiver import receiver

# one retry, a minute away: a failed first attempt leaves the callback pending for the test
SLOW_RETRY = CallbacksConfig(max_attempts=2, backoff_base_s=60, backoff_max_s=60, timeout_s=2)


@pytest.fixture(scope="module")
def rstack() -> Iterator[Stack]:
    s = start_stack(
        allow_private=True, callbacks=SLOW_RETRY, tasks=TasksConfig(workers=2, lease_s=30)
    )
    try:
        yield s
    finally:
        s.gateway.stop()
        s.sim.stop()


def _callback(stack: Stack, key: dict[str, Any], task_id: str) -> dict[str, Any]:
    return dict(
        httpx.get(
            f"{stack.url}/v1/tasks/{task_id}", headers={"authorization": f"Bearer {key['key']}"}
        ).json()["callback"]
    )


def redeliver(stack: Stack, task_id: str, auth: str | None = None) -> httpx.Response:
    headers = {"authorization": auth} if auth else None
    with stack.admin() as admin:
        return admin.post(f"/admin/tasks/{task_id}/redeliver", headers=headers)


def test_redeliver_pending_then_given_up(rstack: Stack) -> None:
    key = rstack.create_key(credits=10)
    with receiver(answers=[500, 500]) as rx:
        # still retrying: the first POST failed, the next is a minute away
        task_id = submit(rstack, key, rx.url).json()["task_id"]
        rx.wait_for(1)
        wait_task(rstack, key, task_id, lambda b: b["callback"]["attempts"] == 1)
        assert _callback(rstack, key, task_id)["state"] == "pending"

        r = redeliver(rstack, task_id)  # the receiver still fails: the last attempt, given up
        assert r.status_code == 200, r.text
        body = r.json()
        assert (body["delivered"], body["state"], body["attempts"]) == (False, "undelivered", 2)
        assert body["last_delivery"]["status_code"] == 500
        assert len(rx.deliveries) == 2

        r = redeliver(rstack, task_id)  # given up: sent again, and now it lands
        assert r.status_code == 200, r.text
        assert (r.json()["delivered"], r.json()["state"], r.json()["attempts"]) == (
            True, "delivered", 3
        )  # fmt: skip
        assert len(rx.deliveries) == 3
        last = rx.deliveries[-1]
        assert json.loads(last.body)["task_id"] == task_id
        assert verify(key["webhook_secret"], last.body, last.headers["x-imagegate-signature"])
        assert _callback(rstack, key, task_id) == {
            "delivered": True, "attempts": 3, "state": "delivered"
        }  # fmt: skip

        assert_error(redeliver(rstack, task_id), 409, "conflict", "task_id")  # delivered
        assert len(rx.deliveries) == 3

    with rstack.admin() as admin:
        audit = admin.get("/admin/audit", params={"target": task_id}).json()["data"]
    assert [(e["action"], e["details"]["delivered"]) for e in audit] == [
        ("task.redeliver", True),
        ("task.redeliver", False),
    ]
    assert audit[0]["source"] == "api" and audit[0]["client"] == "127.0.0.1"


def test_redeliver_refusals(rstack: Stack) -> None:
    key = rstack.create_key(credits=10)
    sync = submit(rstack, key, None)  # a synchronous request: answered, never queued
    assert sync.status_code == 200
    # its record lives with the key's metering data, not in the queue: nothing to redeliver
    assert_error(redeliver(rstack, sync.json()["task_id"]), 404, "not_found", "task_id")
    assert_error(redeliver(rstack, "no-such-task"), 404, "not_found", "task_id")
    r = redeliver(rstack, sync.json()["task_id"], auth=f"Bearer {key['key']}")
    assert_error(r, 401, "invalid_token")
