"""Image generation (docs/API.md, "Generations"): the official SDK's `images.generate` through a
running gateway against the strict simulated upstream, for every model family on both paths.

Each test checks what reached the upstream as well as what the client got and what was
charged, so "works with the SDK", "sends what the real API expects" and "charges exactly" are
proven together. Generations share the edit flow; these tests cover what differs.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest
from openai import OpenAI

from app.core.config import CallbacksConfig
from app.tasks.signing import verify
from tests.e2e.conftest import Stack, running_stack
from tests.support import images
from tests.support.receiver import receiver

PATHS = ("/v1", "/v1/openai")


def sdk(stack: Stack, key: dict[str, Any], prefix: str = "/v1/openai") -> OpenAI:
    return OpenAI(base_url=stack.url + prefix, api_key=key["key"], max_retries=0, timeout=30)


def upstream_calls(stack: Stack) -> list[dict[str, Any]]:
    return [r for r in stack.sim_requests() if r["protocol"] in ("openai", "gemini")]


def ledger(stack: Stack, key: dict[str, Any]) -> list[dict[str, Any]]:
    with stack.admin() as admin:
        rows = admin.get("/admin/usage/records", params={"key_id": key["id"]}).json()["data"]
    return list(rows)


def post(stack: Stack, key: dict[str, Any], body: Any, **headers: str) -> httpx.Response:
    return httpx.post(
        stack.url + "/v1/images/generations",
        json=body,
        headers={"authorization": f"Bearer {key['key']}", **headers},
        timeout=60,
    )


@pytest.mark.parametrize("prefix", PATHS)
def test_gpt_image_generate(any_stack: Stack, any_key: dict[str, Any], prefix: str) -> None:
    """gpt-image → JSON `/images/generations` with only the fields it takes: no `n` (silently
    1), no `response_format` (OpenAI refuses it for GPT models); b64_json by default."""
    stack, key = any_stack, any_key  # both stores
    res = sdk(stack, key, prefix).images.generate(
        model="gpt-image-1.5",
        prompt="a lighthouse at dusk",
        n=2,
        size="1536x1024",
        quality="low",
        background="opaque",
        output_format="webp",
        output_compression=60,
        moderation="low",
        user="u-1",
    )
    assert len(res.data) == 1 and res.data[0].b64_json and res.data[0].url is None
    assert images.decode(base64.b64decode(res.data[0].b64_json)).size == (1536, 1024)
    assert res.usage is not None and res.usage.input_tokens_details.image_tokens == 0
    (sent,) = upstream_calls(stack)
    assert sent["path"] == "/v1/images/generations"
    assert sent["content_type"] == "application/json"
    assert sent["json"] == {
        "model": "gpt-image-1.5",
        "prompt": "a lighthouse at dusk",
        "size": "1536x1024",
        "quality": "low",
        "background": "opaque",
        "output_format": "webp",
        "moderation": "low",
        "user": "u-1",
        "output_compression": 60,
    }
    assert stack.balance(key["id"]) == pytest.approx(100 - 0.12)
    (row,) = ledger(stack, key)
    assert row["operation"] == "generate" and row["model"] == "gpt-image-1.5"
    assert row["images"] == 1 and row["credits"] == pytest.approx(0.12)


def test_gpt_image_2_size_tiers(stack: Stack, key: dict[str, Any]) -> None:
    """A 1K alias costs per_image; a custom size costs per_image x 1.5, as edits."""
    client = sdk(stack, key, "/v1")
    client.images.generate(model="gpt-image-2", prompt="x", size="1254x1254")
    client.images.generate(model="gpt-image-2", prompt="x", size="2048x1152")
    sent = [c["json"] for c in upstream_calls(stack)]
    assert [s["size"] for s in sent] == ["1254x1254", "2048x1152"]
    credits = sorted(row["credits"] for row in ledger(stack, key))
    assert credits == [pytest.approx(0.20), pytest.approx(0.30)]
    assert stack.balance(key["id"]) == pytest.approx(100 - 0.50)


@pytest.mark.parametrize("prefix", PATHS)
def test_dall_e_2_native_n_url_by_default(stack: Stack, key: dict[str, Any], prefix: str) -> None:
    res = sdk(stack, key, prefix).images.generate(
        model="dall-e-2", prompt="three cats", n=3, size="256x256"
    )
    assert len(res.data) == 3 and all(d.url and d.b64_json is None for d in res.data)
    got = httpx.get(res.data[0].url or "", timeout=10)
    assert images.decode(got.content).size == (256, 256)
    (sent,) = upstream_calls(stack)
    assert sent["path"] == "/v1/images/generations"
    assert sent["json"] == {
        "model": "dall-e-2",
        "prompt": "three cats",
        "n": 3,
        "size": "256x256",
        "response_format": "b64_json",  # the gateway keeps and serves the files itself
    }
    assert stack.balance(key["id"]) == pytest.approx(100 - 0.06)


def test_dall_e_2_settles_on_images_returned(stack: Stack, key: dict[str, Any]) -> None:
    stack.fault(protocol="openai", kind="short", count=2, times=1)
    res = sdk(stack, key).images.generate(
        model="dall-e-2", prompt="cats", n=4, response_format="b64_json"
    )
    assert len(res.data) == 2 and all(d.b64_json for d in res.data)
    (row,) = ledger(stack, key)
    assert row["images"] == 2 and row["credits"] == pytest.approx(0.04)
    assert stack.balance(key["id"]) == pytest.approx(100 - 0.04)


@pytest.mark.parametrize("prefix", PATHS)
def test_nano_banana_prompt_is_the_only_part(
    stack: Stack, key: dict[str, Any], prefix: str
) -> None:
    res = sdk(stack, key, prefix).images.generate(
        model="nano-banana-2", prompt="a red bicycle", size="1024x1536", quality="high"
    )
    assert len(res.data) == 1 and res.data[0].url and res.created == 0
    assert res.data[0].revised_prompt == "a red bicycle"
    images.decode(httpx.get(res.data[0].url, timeout=10).content)
    (sent,) = upstream_calls(stack)
    assert sent["path"] == "/v1beta/models/gemini-3.1-flash-image:generateContent"
    assert sent["json"]["contents"] == [{"role": "user", "parts": [{"text": "a red bicycle"}]}]
    assert sent["json"]["generationConfig"] == {"responseModalities": ["IMAGE"]}
    assert stack.balance(key["id"]) == pytest.approx(100 - 0.28)
    (row,) = ledger(stack, key)
    assert row["operation"] == "generate"


BAD = [
    ({"model": "gpt-image-1", "prompt": "x", "size": "1000x1000"}, "bad_request", "size"),
    ({"model": "gpt-image-2", "prompt": "x", "size": "640x640"}, "bad_request", "size"),
    ({"model": "gpt-image-2", "prompt": "x", "size": "1024X1024"}, "bad_request", "size"),
    ({"model": "dall-e-2", "prompt": "x", "size": "1536x1024"}, "bad_request", "size"),
    ({"model": "dall-e-2", "prompt": "x", "n": 11}, "bad_request", "n"),
    ({"model": "dall-e-2", "prompt": "x" * 1001}, "bad_request", "prompt"),
    ({"model": "dall-e-2", "prompt": "x", "background": "opaque"}, "bad_request", "background"),
    ({"model": "no-such-model", "prompt": "x"}, "api_not_implemented", "model"),
    ({"model": "gpt-image-1", "prompt": ""}, "bad_request", "prompt"),
    ({"model": "gpt-image-1", "prompt": "   "}, "bad_request", "prompt"),
    ({"model": "gpt-image-1"}, "bad_request", "prompt"),
    ({"model": "gpt-image-1", "prompt": "x", "image": "https://x/a.png"}, "bad_request", "image"),
    ({"model": "gpt-image-1", "prompt": "x", "input_fidelity": "high"}, "bad_request", None),
    ({"model": "gpt-image-1", "prompt": "x", "style": "vivid"}, "bad_request", "style"),
    ({"model": "gpt-image-1", "prompt": "x", "n": "2"}, "bad_request", "n"),
]


@pytest.mark.parametrize(("body", "code", "param"), BAD)
def test_bad_input_is_4xx_and_free(
    stack: Stack, key: dict[str, Any], body: dict[str, Any], code: str, param: str | None
) -> None:
    r = post(stack, key, body)
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert r.json()["success"] is False and err["code"] == code
    if param is not None:
        assert err["param"] == param
    assert upstream_calls(stack) == []
    assert stack.balance(key["id"]) == 100 and ledger(stack, key) == []


def test_generation_is_json_only(stack: Stack, key: dict[str, Any]) -> None:
    r = httpx.post(
        stack.url + "/v1/images/generations",
        data={"model": "gpt-image-1", "prompt": "x"},
        headers={"authorization": f"Bearer {key['key']}"},
    )
    assert r.status_code == 400 and "application/json" in r.json()["error"]["message"]
    assert stack.balance(key["id"]) == 100


def test_sdk_bad_size_raises_bad_request(stack: Stack, key: dict[str, Any]) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        sdk(stack, key).images.generate(model="gpt-image-1", prompt="x", size="512x512")
    assert "size" in str(info.value)
    assert stack.balance(key["id"]) == 100


def test_usage_grouped_by_operation(stack: Stack, key: dict[str, Any]) -> None:
    client = sdk(stack, key)
    client.images.generate(model="gpt-image-1", prompt="new")
    client.images.generate(model="gpt-image-1", prompt="new", size="1024x1024")
    client.images.edit(model="gpt-image-1", image=("a.png", images.png(), "image/png"), prompt="e")
    assert sorted(c["path"] for c in upstream_calls(stack)) == [
        "/v1/images/edits",
        "/v1/images/generations",
        "/v1/images/generations",
    ]
    with stack.admin() as admin:
        params = {"key_id": key["id"], "group_by": "operation"}
        groups = {g["group"]: g for g in admin.get("/admin/usage", params=params).json()["data"]}
        only = admin.get(
            "/admin/usage/records", params={"key_id": key["id"], "operation": "generate"}
        ).json()["data"]
    assert set(groups) == {"edit", "generate"}
    assert groups["generate"]["requests"] == 2 and groups["edit"]["requests"] == 1
    assert groups["generate"]["credits"] == pytest.approx(0.20)
    assert len(only) == 2 and {r["operation"] for r in only} == {"generate"}


def test_stream_partials_charged_once(stack: Stack) -> None:
    key = stack.create_key(credits=1, rpm=1000)
    stack.clear_sim()
    stream = sdk(stack, key, "/v1").images.generate(
        model="gpt-image-1", prompt="stream it", stream=True, partial_images=2
    )
    kinds = []
    for event in stream:
        kinds.append(event.type)
        if event.type == "image_generation.completed":
            images.decode(base64.b64decode(event.b64_json))
            assert event.usage.input_tokens > 0
    assert kinds == [
        "image_generation.partial_image",
        "image_generation.partial_image",
        "image_generation.completed",
    ]
    (sent,) = upstream_calls(stack)
    assert sent["json"]["stream"] is True and sent["json"]["partial_images"] == 2
    assert stack.balance(key["id"]) == pytest.approx(0.90)
    (row,) = ledger(stack, key)
    assert row["operation"] == "generate" and row["images"] == 1


def test_stream_failure_is_an_sdk_error_and_refunded(stack: Stack) -> None:
    key = stack.create_key(credits=1, rpm=1000)
    stack.fault(protocol="openai", kind="safety", where="output", times=1)
    stream = sdk(stack, key).images.generate(
        model="gpt-image-1", prompt="stream it", stream=True, partial_images=1
    )
    with pytest.raises(openai.APIError):
        for _ in stream:
            pass
    assert stack.balance(key["id"]) == 1


@pytest.fixture(scope="module")
def cb_stack() -> Iterator[Stack]:
    fast = CallbacksConfig(max_attempts=3, backoff_base_s=0.2, backoff_max_s=0.5, timeout_s=2)
    with running_stack(allow_private=True, callbacks=fast) as s:
        yield s


def test_callback_delivered_signed(cb_stack: Stack) -> None:
    stack = cb_stack
    key = stack.create_key(credits=1)
    with receiver() as rx:
        r = post(stack, key, {"model": "gpt-image-1", "prompt": "later", "callback_url": rx.url})
        assert r.status_code == 200, r.text
        first = r.json()
        assert set(first) == {"success", "task_id", "trace_id"}
        (delivery,) = rx.wait_for(1)
    assert verify(key["webhook_secret"], delivery.body, delivery.headers["x-imagegate-signature"])
    body = json.loads(delivery.body)
    assert body["success"] is True and body["task_id"] == first["task_id"]
    assert base64.b64decode(body["data"]["data"][0]["b64_json"])  # gpt-image: b64_json
    assert stack.balance(key["id"]) == pytest.approx(0.90)
    (row,) = ledger(stack, key)
    assert row["operation"] == "generate" and row["task_id"] == first["task_id"]


def test_idempotent_replay_calls_upstream_once(stack: Stack, key: dict[str, Any]) -> None:
    body = {"model": "nano-banana", "prompt": "once"}
    first = post(stack, key, body, **{"idempotency-key": "gen-1"})
    again = post(stack, key, body, **{"idempotency-key": "gen-1"})
    assert first.status_code == again.status_code == 200, first.text
    assert again.headers["idempotent-replayed"] == "true"
    assert again.content == first.content
    assert len(upstream_calls(stack)) == 1
    assert stack.balance(key["id"]) == pytest.approx(100 - 0.14)
    other = post(stack, key, {**body, "prompt": "twice"}, **{"idempotency-key": "gen-1"})
    assert other.status_code == 409
