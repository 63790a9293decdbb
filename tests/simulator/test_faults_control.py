"""Fault injection, latency, recording and the `/_sim` control API (in-process and over HTTP)."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from app.simulator import SimulatorState, create_simulator_app
from tests.simulator import GEMINI_AUTH, OPENAI_AUTH, b64, png
from tests.support.net import serve

EDITS = "/v1/images/edits"
GEMINI = "/v1beta/models/gemini-2.5-flash-image:generateContent"


@pytest.fixture
def state() -> SimulatorState:
    return SimulatorState()


@pytest.fixture
async def client(state: SimulatorState) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(create_simulator_app(state))
    async with httpx.AsyncClient(transport=transport, base_url="http://sim.test") as c:
        yield c


async def openai_edit(
    client: httpx.AsyncClient, model: str = "gpt-image-1.5", **fields: str
) -> httpx.Response:
    image = png(64, 64, "RGBA")
    return await client.post(
        EDITS,
        headers=OPENAI_AUTH,
        data={"model": model, "prompt": "a boat", **fields},
        files=[("image", ("in.png", image, "image/png"))],
    )


async def gemini(client: httpx.AsyncClient, prompt: str = "a boat") -> httpx.Response:
    parts = [{"text": prompt}, {"inlineData": {"mimeType": "image/png", "data": b64(png())}}]
    return await client.post(GEMINI, headers=GEMINI_AUTH, json={"contents": [{"parts": parts}]})


async def add_fault(client: httpx.AsyncClient, **spec: Any) -> dict[str, Any]:
    r = await client.post("/_sim/faults", json=spec)
    assert r.status_code == 201, r.text
    return r.json()


async def test_status_fault_is_consumed_per_match(client: httpx.AsyncClient) -> None:
    await add_fault(
        client, protocol="openai", model="gpt-image-1", kind="status", status=500, times=2
    )
    assert (await openai_edit(client)).status_code == 200  # other model: not matched
    for _ in range(2):
        r = await openai_edit(client, "gpt-image-1")
        assert r.status_code == 500
        assert r.json()["error"]["type"] == "server_error"
    assert (await openai_edit(client, "gpt-image-1")).status_code == 200
    assert (await client.get("/_sim/faults")).json() == []


async def test_429_with_retry_after_and_custom_body(client: httpx.AsyncClient) -> None:
    await add_fault(client, kind="status", status=429, retry_after=7)
    r = await openai_edit(client)
    assert r.status_code == 429 and r.headers["retry-after"] == "7"
    assert r.json()["error"]["code"] == "rate_limit_exceeded"
    await add_fault(client, protocol="gemini", kind="status", status=429, retry_after=3)
    r = await gemini(client)
    assert r.status_code == 429 and r.json()["error"]["status"] == "RESOURCE_EXHAUSTED"
    await add_fault(client, kind="status", status=400, body={"error": {"message": "custom"}})
    r = await openai_edit(client)
    assert r.status_code == 400 and r.json() == {"error": {"message": "custom"}}


async def test_timeout_and_latency(client: httpx.AsyncClient) -> None:
    await add_fault(client, kind="timeout", delay_s=0.2)
    started = time.monotonic()
    r = await openai_edit(client)
    assert r.status_code == 504 and time.monotonic() - started >= 0.2
    await add_fault(client, protocol="gemini", kind="timeout", delay_s=0.05)
    r = await gemini(client)
    assert r.status_code == 504 and r.json()["error"]["status"] == "DEADLINE_EXCEEDED"
    await add_fault(client, kind="latency", delay_s=0.2)
    started = time.monotonic()
    assert (await openai_edit(client)).status_code == 200
    assert time.monotonic() - started >= 0.2


async def test_global_latency(client: httpx.AsyncClient) -> None:
    r = await client.post("/_sim/config", json={"latency_s": 0.15})
    assert r.json()["latency_s"] == 0.15
    started = time.monotonic()
    assert (await gemini(client)).status_code == 200
    assert time.monotonic() - started >= 0.15
    assert (await client.post("/_sim/config", json={"latency_s": -1})).status_code == 400


async def test_safety(client: httpx.AsyncClient) -> None:
    await add_fault(client, protocol="openai", kind="safety")
    r = await openai_edit(client)
    assert r.status_code == 400
    error = r.json()["error"]
    assert (error["type"], error["code"]) == ("image_generation_user_error", "moderation_blocked")
    assert error["moderation_details"]["moderation_stage"] == "output"

    await add_fault(client, protocol="gemini", kind="safety")
    r = await gemini(client)
    assert r.status_code == 200
    candidate = r.json()["candidates"][0]
    assert candidate["finishReason"] == "IMAGE_SAFETY" and "content" not in candidate

    await add_fault(client, protocol="gemini", kind="safety", where="prompt")
    r = await gemini(client)
    assert r.json()["promptFeedback"]["blockReason"] == "SAFETY"
    assert "candidates" not in r.json()


async def test_text_only(client: httpx.AsyncClient) -> None:
    await add_fault(client, protocol="gemini", kind="text_only")
    candidate = (await gemini(client)).json()["candidates"][0]
    assert candidate["finishReason"] == "STOP"
    assert [list(p) for p in candidate["content"]["parts"]] == [["text"]]
    await add_fault(client, protocol="openai", kind="text_only")
    r = await openai_edit(client)
    assert r.status_code == 200 and r.json()["data"] == []


async def test_short(client: httpx.AsyncClient) -> None:
    await add_fault(client, kind="short", count=1)
    r = await openai_edit(client, "dall-e-2", n="4", size="256x256")
    assert r.status_code == 200 and len(r.json()["data"]) == 3
    await add_fault(client, protocol="gemini", kind="short")
    assert (await gemini(client)).json()["candidates"][0]["finishReason"] == "NO_IMAGE"


async def test_disconnect_in_process(client: httpx.AsyncClient, state: SimulatorState) -> None:
    await add_fault(client, kind="disconnect")
    with pytest.raises(httpx.RemoteProtocolError):
        await openai_edit(client)
    assert state.requests[-1]["fault"] == "disconnect"
    assert state.requests[-1]["status"] is None


async def test_prompt_directive(client: httpx.AsyncClient) -> None:
    r = await openai_edit(client, prompt="a boat [sim:fail=503]")
    assert r.status_code == 503
    assert (await gemini(client, "a boat [sim:safety=prompt]")).json()["promptFeedback"]


async def test_recording_and_control_api(client: httpx.AsyncClient, state: SimulatorState) -> None:
    await openai_edit(client, n="1", quality="low")
    records = (await client.get("/_sim/requests")).json()
    record = records[-1]
    assert record["protocol"] == "openai" and record["model"] == "gpt-image-1.5"
    assert record["path"] == EDITS and record["method"] == "POST" and record["status"] == 200
    assert record["headers"]["authorization"] == "Bearer sk-…abcd"
    assert record["content_type"].startswith("multipart/form-data; boundary=")
    assert record["fields"] == {
        "model": "gpt-image-1.5",
        "prompt": "a boat",
        "n": "1",
        "quality": "low",
    }
    file = record["files"][0]
    assert {
        k: file[k] for k in ("name", "filename", "content_type", "width", "height", "format")
    } == {
        "name": "image",
        "filename": "in.png",
        "content_type": "image/png",
        "width": 64,
        "height": 64,
        "format": "png",
    }
    assert file["size"] > 0 and len(file["sha256"]) == 64

    await gemini(client)
    assert [r["protocol"] for r in (await client.get("/_sim/requests?protocol=gemini")).json()] == [
        "gemini"
    ]
    assert (await client.delete("/_sim/requests")).json() == {"cleared": 2}
    assert state.requests == []

    assert (await client.post("/_sim/faults", json={"kind": "explode"})).status_code == 400
    assert (
        await client.post("/_sim/faults", json={"kind": "status", "colour": 1})
    ).status_code == 400
    created = (
        await client.post("/_sim/faults", json=[{"kind": "latency"}, {"kind": "short"}])
    ).json()
    assert [f["kind"] for f in created] == ["latency", "short"]
    assert (await client.delete("/_sim/faults")).json() == {"cleared": 2}
    state.add_fault(kind="status", status=502, times=None)  # until cleared
    for _ in range(3):
        assert (await openai_edit(client)).status_code == 502
    state.clear_faults()
    assert (await openai_edit(client)).status_code == 200


def test_over_real_http() -> None:
    """Real sockets: a normal edit, a dropped connection, a client-side timeout."""
    state = SimulatorState()
    with serve(create_simulator_app(state)) as server, httpx.Client(base_url=server.url) as http:
        r = http.post(
            EDITS,
            headers=OPENAI_AUTH,
            data={"model": "gpt-image-1", "prompt": "over http"},
            files=[("image[]", ("a.png", png(), "image/png"))],
        )
        assert r.status_code == 200 and r.json()["size"] == "1024x1024"
        assert http.get("/").json()["openai_base_url"] == f"{server.url}/v1"

        # a dall-e-2 url result, then fed back as a JSON image_url (fetched over HTTP)
        r = http.post(
            EDITS,
            headers=OPENAI_AUTH,
            data={"model": "dall-e-2", "prompt": "x", "size": "256x256"},
            files=[("image", ("a.png", png(64, 64, "RGBA"), "image/png"))],
        )
        url = r.json()["data"][0]["url"]
        assert url.startswith(f"{server.url}/v1/files/")
        r = http.post(
            EDITS, headers=OPENAI_AUTH, json={"prompt": "x", "images": [{"image_url": url}]}
        )
        assert r.status_code == 200, r.text
        assert state.requests[-1]["files"][0]["width"] == 256

        http.post("/_sim/faults", json={"kind": "disconnect"})
        with pytest.raises(httpx.RemoteProtocolError):
            http.post(
                EDITS,
                headers=OPENAI_AUTH,
                data={"prompt": "x"},
                files=[("image", ("a.png", png(), "image/png"))],
            )

        http.post("/_sim/faults", json={"kind": "timeout", "delay_s": 30})
        with pytest.raises(httpx.ReadTimeout):
            http.post(
                EDITS,
                headers=OPENAI_AUTH,
                data={"prompt": "x"},
                files=[("image", ("a.png", png(), "image/png"))],
                timeout=0.3,
            )
        # the simulator notices the client left and stops waiting (status 499)
        deadline = time.monotonic() + 5
        while state.requests[-1]["status"] is None and time.monotonic() < deadline:
            time.sleep(0.02)
        assert state.requests[-1]["status"] == 499
