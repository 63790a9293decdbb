"""The simulated Gemini generateContent endpoint: proto-JSON strictness and thinking output."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from app.simulator import SimulatorState, create_simulator_app
from tests.simulator import GEMINI_AUTH, b64, decode_b64_image, image_bytes, png


def url(model: str = "gemini-2.5-flash-image", method: str = "generateContent") -> str:
    return f"/v1beta/models/{model}:{method}"


def body(*images: bytes, prompt: str = "paint it red", **config: Any) -> dict[str, Any]:
    parts: list[dict[str, Any]] = [{"text": prompt}]
    parts += [{"inlineData": {"mimeType": "image/png", "data": b64(i)}} for i in images]
    return {
        "contents": [{"role": "user", "parts": parts}],
        "generationConfig": {"responseModalities": ["IMAGE"], **config},
    }


@pytest.fixture
def state() -> SimulatorState:
    return SimulatorState()


@pytest.fixture
async def client(state: SimulatorState) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(create_simulator_app(state))
    async with httpx.AsyncClient(
        transport=transport, base_url="http://sim.test", headers=GEMINI_AUTH
    ) as c:
        yield c


def google_error(response: httpx.Response) -> dict[str, Any]:
    error = response.json()["error"]
    assert {"code", "message", "status"} <= set(error)
    assert error["code"] == response.status_code
    return error


async def test_gemini_3_success_has_a_thought_image_first(client: httpx.AsyncClient) -> None:
    r = await client.post(url("gemini-3.1-flash-image"), json=body(png(400, 300)))
    assert r.status_code == 200, r.text
    result = r.json()
    assert set(result) == {"candidates", "usageMetadata", "modelVersion", "responseId"}
    candidate = result["candidates"][0]
    assert candidate["finishReason"] == "STOP"
    parts = candidate["content"]["parts"]
    assert parts[0]["thought"] is True and "inlineData" in parts[0]
    assert "text" in parts[1] and not parts[1].get("thought")
    final = parts[-1]
    assert not final.get("thought") and final["inlineData"]["mimeType"] == "image/png"
    # default aspect ratio follows the input (4:3 -> 1200x896 at 1K for Gemini 3)
    assert decode_b64_image(final["inlineData"]["data"]).size == (1200, 896)
    meta = result["usageMetadata"]
    assert meta["totalTokenCount"] >= meta["promptTokenCount"] + meta["candidatesTokenCount"]
    assert result["modelVersion"] == "gemini-3.1-flash-image"


async def test_image_config_sets_output_size(client: httpx.AsyncClient) -> None:
    config = {"imageConfig": {"aspectRatio": "16:9", "imageSize": "2K"}}
    r = await client.post(url("gemini-3-pro-image-preview"), json=body(png(), **config))
    final = r.json()["candidates"][0]["content"]["parts"][-1]
    assert decode_b64_image(final["inlineData"]["data"]).size == (2752, 1536)


async def test_gemini_25_snake_case_and_no_thoughts(
    client: httpx.AsyncClient, state: SimulatorState
) -> None:
    snake = {
        "contents": [
            {
                "parts": [
                    {"text": "add a hat"},
                    {
                        "inline_data": {
                            "mime_type": "image/jpeg",
                            "data": b64(image_bytes(fmt="JPEG")),
                        }
                    },
                ]
            }
        ],
        "generation_config": {
            "response_modalities": ["image"],
            "image_config": {"aspect_ratio": "1:1"},
        },
    }
    r = await client.post(url(), json=snake)
    assert r.status_code == 200, r.text
    parts = r.json()["candidates"][0]["content"]["parts"]
    assert [("inlineData" in p, p.get("thought", False)) for p in parts] == [(True, False)]
    assert decode_b64_image(parts[0]["inlineData"]["data"]).size == (1024, 1024)
    recorded = state.requests[-1]
    data = recorded["json"]["contents"][0]["parts"][1]["inline_data"]["data"]
    assert data["mime"] == "image/jpeg" and data["size"] > 0
    assert recorded["files"][0]["format"] == "jpeg"
    assert recorded["headers"]["x-goog-api-key"] == "AIz…wxyz"


async def test_unknown_fields_anywhere(client: httpx.AsyncClient) -> None:
    r = await client.post(url(), json={**body(png()), "size": "1K"})
    assert r.status_code == 400
    error = google_error(r)
    assert error["status"] == "INVALID_ARGUMENT"
    expected = 'Invalid JSON payload received. Unknown name "size": Cannot find field.'
    assert error["message"] == expected
    nested = body(png())
    nested["generationConfig"]["imageConfig"] = {"resolution": "4K"}
    error = google_error(await client.post(url(), json=nested))
    assert "Unknown name \"resolution\" at 'generation_config.image_config'" in error["message"]
    violation = error["details"][0]["fieldViolations"][0]
    assert violation["field"] == "generation_config.image_config"


@pytest.mark.parametrize(
    ("model", "config", "fragment"),
    [
        ("gemini-2.5-flash-image", {"candidateCount": 2}, "Multiple candidates is not enabled"),
        ("gemini-3-pro-image", {"imageConfig": {"imageSize": "1k"}}, "Unsupported image size"),
        ("gemini-2.5-flash-image", {"imageConfig": {"imageSize": "2K"}}, "not supported"),
        ("gemini-2.5-flash-image", {"imageConfig": {"aspectRatio": "1:8"}}, "aspect ratio"),
        ("gemini-2.5-flash-image", {"responseModalities": ["PICTURE"]}, "Invalid value at"),
        ("gemini-2.5-flash-image", {"temperature": "hot"}, "(TYPE_FLOAT)"),
    ],
)
async def test_generation_config_rules(
    client: httpx.AsyncClient, model: str, config: dict[str, Any], fragment: str
) -> None:
    request = body(png())
    request["generationConfig"].update(config)
    r = await client.post(url(model), json=request)
    assert r.status_code == 400
    assert fragment in google_error(r)["message"]


async def test_bad_parts(client: httpx.AsyncClient) -> None:
    request = body()
    request["contents"][0]["parts"].append({"inlineData": {"mimeType": "image/png", "data": "@@@"}})
    assert (
        "Base64 decoding failed" in google_error(await client.post(url(), json=request))["message"]
    )
    request = body()
    request["contents"][0]["parts"].append(
        {"inlineData": {"mimeType": "image/png", "data": b64(b"hello")}}
    )
    assert (
        "Unable to process input image"
        in google_error(await client.post(url(), json=request))["message"]
    )
    request = body()
    request["contents"][0]["parts"][0]["inlineData"] = {"mimeType": "image/png", "data": b64(png())}
    assert "Oneof field 'data'" in google_error(await client.post(url(), json=request))["message"]
    r = await client.post(url(), json={"contents": []})
    assert "contents is not specified" in google_error(r)["message"]


async def test_text_to_image_without_inputs(client: httpx.AsyncClient) -> None:
    r = await client.post(url(), json=body(prompt="a lighthouse"))
    final = r.json()["candidates"][0]["content"]["parts"][-1]
    assert decode_b64_image(final["inlineData"]["data"]).size == (1024, 1024)


async def test_auth_and_model_errors(client: httpx.AsyncClient) -> None:
    r = await client.post(url(), json=body(png()), headers={"x-goog-api-key": "sim-invalid"})
    assert r.status_code == 403 and google_error(r)["status"] == "PERMISSION_DENIED"
    transport = httpx.ASGITransport(create_simulator_app())
    async with httpx.AsyncClient(transport=transport, base_url="http://sim.test") as bare:
        r = await bare.post(url(), json=body(png()))
        assert r.status_code == 403
        r = await bare.post(url() + "?key=AIza-query-key", json=body(png()))
        assert r.status_code == 200
    r = await client.post(url("gemini-9-ultra-image"), json=body(png()))
    assert r.status_code == 404 and google_error(r)["status"] == "NOT_FOUND"


async def test_stream_generate_content_sse(client: httpx.AsyncClient) -> None:
    r = await client.post(
        url("gemini-3-pro-image", "streamGenerateContent") + "?alt=sse", json=body(png())
    )
    assert r.status_code == 200
    chunks = [line for line in r.text.splitlines() if line.startswith("data: ")]
    assert len(chunks) == 3  # thought image, text, final image (+ finishReason, usage)
    assert '"finishReason":"STOP"' in chunks[-1] and '"usageMetadata"' in chunks[-1]
