"""The simulated OpenAI images/generations endpoint: JSON only, the real API's per-model rules
(unknown fields, sizes, `response_format` refused for GPT models), real images and SSE events."""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator
from typing import Any

import httpx
import orjson
import pytest

from app.simulator import SimulatorState, create_simulator_app
from tests.simulator import OPENAI_AUTH, decode_b64_image

GENERATIONS = "/v1/images/generations"


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(create_simulator_app(SimulatorState()))
    async with httpx.AsyncClient(transport=transport, base_url="http://sim.test") as c:
        yield c


async def generate(client: httpx.AsyncClient, **body: Any) -> httpx.Response:
    return await client.post(GENERATIONS, headers=OPENAI_AUTH, json={"prompt": "a cat", **body})


async def test_gpt_image_answers_b64_with_usage(client: httpx.AsyncClient) -> None:
    r = await generate(client, model="gpt-image-1", size="1024x1536", quality="low")
    assert r.status_code == 200, r.text
    body = r.json()
    assert decode_b64_image(body["data"][0]["b64_json"]).size == (1024, 1536)
    assert body["size"] == "1024x1536" and body["quality"] == "low"
    assert body["usage"]["input_tokens_details"]["image_tokens"] == 0


async def test_dall_e_2_is_the_default_model_and_answers_urls(client: httpx.AsyncClient) -> None:
    r = await generate(client, n=2, size="256x256")
    assert r.status_code == 200, r.text
    data = r.json()["data"]
    assert len(data) == 2 and all("url" in d for d in data) and "usage" not in r.json()


@pytest.mark.parametrize(
    ("body", "status", "code", "param"),
    [
        ({"model": "gpt-image-1", "response_format": "url"}, 400, "unknown_parameter",
         "response_format"),
        ({"model": "gpt-image-1", "input_fidelity": "high"}, 400, "unknown_parameter",
         "input_fidelity"),
        ({"model": "gpt-image-1", "image": "https://x/a.png"}, 400, "unknown_parameter", "image"),
        ({"model": "gpt-image-1", "size": "512x512"}, 400, "invalid_value", "size"),
        ({"model": "gpt-image-2", "size": "1000x1000"}, 400, None, "size"),
        ({"model": "dall-e-2", "size": "1024x1536"}, 400, "invalid_value", "size"),
        ({"model": "dall-e-2", "output_format": "png"}, 400, "unsupported_parameter",
         "output_format"),
        ({"model": "dall-e-2", "stream": True}, 400, "invalid_value", "stream"),
        ({"model": "gpt-image-1", "style": "vivid"}, 400, "unsupported_parameter", "style"),
        ({"model": "gpt-image-1", "n": 11}, 400, "integer_above_max_value", "n"),
        ({"model": "gpt-image-1", "prompt": ""}, 400, "empty_string", "prompt"),
        ({"model": "no-such-model"}, 404, "model_not_found", None),
    ],
)  # fmt: skip
async def test_strict_refusals(
    client: httpx.AsyncClient, body: dict[str, Any], status: int, code: str | None, param: str
) -> None:
    r = await generate(client, **body)
    assert r.status_code == status, r.text
    err = r.json()["error"]
    if code is not None:
        assert err["code"] == code
    assert err["param"] == param


async def test_json_only(client: httpx.AsyncClient) -> None:
    r = await client.post(GENERATIONS, headers=OPENAI_AUTH, data={"prompt": "x"})
    assert r.status_code == 400 and "application/json" in r.json()["error"]["message"]


async def test_stream_events_are_image_generation(client: httpx.AsyncClient) -> None:
    r = await generate(client, model="gpt-image-1", stream=True, partial_images=1)
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
    events = [orjson.loads(line[6:]) for line in r.text.splitlines() if line.startswith("data: ")]
    assert [e["type"] for e in events] == [
        "image_generation.partial_image",
        "image_generation.completed",
    ]
    assert base64.b64decode(events[-1]["b64_json"]) and "usage" in events[-1]


async def test_faults_apply(client: httpx.AsyncClient) -> None:
    await client.post("/_sim/faults", json={"protocol": "openai", "kind": "status", "status": 503})
    r = await generate(client, model="gpt-image-1")
    assert r.status_code == 503
    assert (await generate(client, model="gpt-image-1")).status_code == 200
