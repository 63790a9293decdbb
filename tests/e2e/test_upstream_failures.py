"""Upstream failures through the simulator: retried when worth it, mapped, and refunded."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.e2e.conftest import Stack, start_stack
from tests.support import images

EDITS = "/v1/images/edits"


@pytest.fixture(scope="module")
def fstack() -> Iterator[Stack]:
    s = start_stack(openai_timeout_s=1.0, gemini_timeout_s=1.0)
    try:
        yield s
    finally:
        s.gateway.stop()
        s.sim.stop()


@pytest.fixture
def fkey(fstack: Stack) -> dict[str, Any]:
    fstack.clear_sim()
    return fstack.create_key(credits=2, rpm=10_000, max_concurrency=50)


def edit(stack: Stack, key: dict[str, Any], model: str = "gpt-image-1") -> httpx.Response:
    return httpx.post(
        stack.url + EDITS,
        headers={"authorization": f"Bearer {key['key']}"},
        data={"model": model, "prompt": "make it blue"},
        files={"image": ("a.png", images.png(), "image/png")},
        timeout=60,
    )


def ledger(stack: Stack, key_id: str) -> list[dict[str, Any]]:
    with stack.admin() as c:
        return list(c.get("/admin/usage/records", params={"key_id": key_id}).json()["data"])


def test_500_then_success_is_retried(fstack: Stack, fkey: dict[str, Any]) -> None:
    fstack.fault(protocol="openai", kind="status", status=500, times=1)
    r = edit(fstack, fkey)
    assert r.status_code == 200, r.text
    assert [q["status"] for q in fstack.sim_requests()] == [500, 200]
    assert fstack.balance(fkey["id"]) == pytest.approx(2 - 0.10)


def test_400_is_not_retried(fstack: Stack, fkey: dict[str, Any]) -> None:
    fstack.fault(protocol="openai", kind="status", status=400, times=1,
                 message="Invalid value for 'quality'")  # fmt: skip
    r = edit(fstack, fkey)
    assert r.status_code == 400
    assert r.json()["error"]["code"] == "bad_request"
    assert len(fstack.sim_requests()) == 1
    assert fstack.balance(fkey["id"]) == 2


def test_timeout_is_504_and_refunded(fstack: Stack, fkey: dict[str, Any]) -> None:
    fstack.fault(protocol="openai", kind="timeout", delay_s=3, times=5)
    r = edit(fstack, fkey)
    assert r.status_code == 504, r.text
    assert r.json()["error"]["code"] == "upstream_timeout"
    assert fstack.balance(fkey["id"]) == 2
    rows = ledger(fstack, fkey["id"])
    assert rows[0]["status"] == "failed" and rows[0]["credits"] == 0
    assert rows[0]["error_code"] == "upstream_timeout"


def test_openai_safety_block(fstack: Stack, fkey: dict[str, Any]) -> None:
    fstack.fault(protocol="openai", kind="safety", times=1)
    r = edit(fstack, fkey)
    assert r.status_code == 400
    assert r.json()["error"]["code"] == "moderation_blocked"
    assert fstack.balance(fkey["id"]) == 2


@pytest.mark.parametrize("where", ["output", "prompt"])
def test_gemini_safety_block(fstack: Stack, fkey: dict[str, Any], where: str) -> None:
    fstack.fault(protocol="gemini", kind="safety", where=where, times=1)
    r = edit(fstack, fkey, model="nano-banana")
    assert r.status_code == 400, r.text
    assert r.json()["error"]["code"] == "moderation_blocked"
    assert fstack.balance(fkey["id"]) == 2


def test_gemini_text_only(fstack: Stack, fkey: dict[str, Any]) -> None:
    fstack.fault(protocol="gemini", kind="text_only", times=1)
    r = edit(fstack, fkey, model="nano-banana")
    assert r.status_code == 502, r.text
    assert r.json()["error"]["code"] == "api_error"
    assert fstack.balance(fkey["id"]) == 2
    assert ledger(fstack, fkey["id"])[0]["status"] == "failed"


def test_upstream_auth_failure_does_not_leak(fstack: Stack, fkey: dict[str, Any]) -> None:
    fstack.fault(protocol="openai", kind="status", status=401, times=1,
                 message="Incorrect API key provided: sk-test")  # fmt: skip
    r = edit(fstack, fkey)
    assert r.status_code == 502
    assert "sk-test" not in r.text
    assert fstack.balance(fkey["id"]) == 2
    # our credential was refused: the key is out of use until an admin puts it back
    with fstack.admin() as c:
        openai = next(
            ch for ch in c.get("/admin/channels").json()["data"] if ch["name"] == "openai"
        )
        (k,) = openai["keys"]
        assert k["state"] == "disabled" and "sk-test" not in str(openai)
        assert edit(fstack, fkey).status_code == 503  # no usable channel: refused, not charged
        r = c.post(f"/admin/channels/openai/keys/{k['prefix']}/enable")
        assert r.status_code == 200, r.text
    assert edit(fstack, fkey).status_code == 200


def test_persistent_5xx_is_502(fstack: Stack, fkey: dict[str, Any]) -> None:
    fstack.fault(protocol="openai", kind="status", status=503, times=10)
    r = edit(fstack, fkey)
    assert r.status_code == 502
    assert len(fstack.sim_requests()) == 3  # 1 + retries=2
    assert fstack.balance(fkey["id"]) == 2
