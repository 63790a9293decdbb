"""The official OpenAI Python SDK against a running gateway and simulated upstream.

Each test also checks what reached the upstream (the simulator records every request), so
"works with the SDK" and "sends upstream what the real API expects" are proven together.
"""

from __future__ import annotations

import base64
import io
from typing import Any

import httpx
import pytest
from openai import OpenAI

from tests.e2e.conftest import Stack
from tests.support import images
from tests.support.net import serve


def sdk(stack: Stack, key: dict[str, Any], prefix: str = "/v1/openai") -> OpenAI:
    return OpenAI(base_url=stack.url + prefix, api_key=key["key"], max_retries=0, timeout=30)


def last_openai(stack: Stack) -> dict[str, Any]:
    reqs = [r for r in stack.sim_requests() if r["protocol"] == "openai"]
    assert reqs, "nothing reached the OpenAI upstream"
    return reqs[-1]


def test_one_file_b64(any_stack: Stack, any_key: dict[str, Any]) -> None:
    stack, key = any_stack, any_key  # both stores
    client = sdk(stack, key)
    res = client.images.edit(
        model="gpt-image-1",
        image=("photo.png", images.png(96, 96), "image/png"),
        prompt="make it blue",
    )
    assert res.data and res.data[0].b64_json
    out = images.decode(base64.b64decode(res.data[0].b64_json))
    assert out.size[0] > 0
    sent = last_openai(stack)
    assert [f["name"] for f in sent["files"]] == ["image"]
    assert sent["files"][0]["content_type"] == "image/png"
    assert sent["fields"]["model"] == "gpt-image-1"
    assert "n" not in sent["fields"]
    assert "response_format" not in sent["fields"]


def test_several_files_and_mask(any_stack: Stack, any_key: dict[str, Any]) -> None:
    stack, key = any_stack, any_key  # both stores
    client = sdk(stack, key, prefix="/v1")
    res = client.images.edit(
        model="gpt-image-1.5",
        image=[
            ("a.png", images.png(64, 64), "image/png"),
            ("b.jpg", images.jpeg(64, 64), "image/jpeg"),
            ("c.webp", images.webp(64, 64), "image/webp"),
        ],
        mask=("mask.png", images.mask_png(64, 64), "image/png"),
        prompt="put them in a basket",
        quality="low",
    )
    assert res.data[0].b64_json
    sent = last_openai(stack)
    names = [f["name"] for f in sent["files"]]
    assert names.count("image[]") == 3 and "mask" in names
    types = [f["content_type"] for f in sent["files"] if f["name"] == "image[]"]
    assert types == ["image/png", "image/jpeg", "image/webp"]
    assert sent["fields"]["quality"] == "low"


def test_file_with_wrong_declared_type_is_sniffed(stack: Stack, key: dict[str, Any]) -> None:
    """An SDK user passing raw bytes sends application/octet-stream; we sniff and fix it."""
    client = sdk(stack, key)
    res = client.images.edit(model="gpt-image-1", image=images.jpeg(), prompt="x")
    assert res.data[0].b64_json
    sent = last_openai(stack)
    assert sent["files"][0]["content_type"] == "image/jpeg"
    assert sent["files"][0]["filename"].endswith((".jpeg", ".jpg"))


def test_dall_e_2_n3_urls(stack: Stack, key: dict[str, Any]) -> None:
    client = sdk(stack, key)
    res = client.images.edit(
        model="dall-e-2",
        image=("sq.png", images.png(256, 256, alpha=True), "image/png"),
        prompt="a cat",
        n=3,
        size="256x256",
    )
    assert len(res.data) == 3
    for item in res.data:
        assert item.url and item.url.startswith(stack.url + "/v1/files/")
        img = images.decode(httpx.get(item.url, timeout=10).content)
        assert img.size == (256, 256)
    sent = last_openai(stack)
    assert sent["fields"]["n"] == "3"
    assert sent["fields"]["response_format"] == "b64_json"


def test_gpt_image_2_2048(stack: Stack, key: dict[str, Any]) -> None:
    client = sdk(stack, key)
    res = client.images.edit(
        model="gpt-image-2",
        image=("in.png", images.png(128, 128), "image/png"),
        prompt="upscale",
        size="2048x2048",
        input_fidelity="high",
        n=4,
    )
    assert len(res.data) == 1  # n silently 1
    img = images.decode(base64.b64decode(res.data[0].b64_json or ""))
    assert img.size == (2048, 2048)
    sent = last_openai(stack)
    assert sent["fields"]["size"] == "2048x2048"
    assert "input_fidelity" not in sent["fields"]  # never sent for gpt-image-2
    assert "n" not in sent["fields"]


@pytest.mark.parametrize("model", ["nano-banana", "nano-banana-pro"])
def test_nano_banana(stack: Stack, key: dict[str, Any], model: str) -> None:
    client = sdk(stack, key)
    prompt = "add a green leaf on top of the apple"
    res = client.images.edit(
        model=model,
        image=("apple.png", images.png(80, 80), "image/png"),
        prompt=prompt,
        size="1024x1024",  # ignored for nano-banana (docs/API.md, "Models")
        n=2,
        response_format="b64_json",  # ignored: nano-banana always answers url
    )
    assert res.created == 0
    assert len(res.data) == 1
    assert res.data[0].revised_prompt == prompt
    assert res.data[0].url and res.data[0].b64_json is None
    images.decode(httpx.get(res.data[0].url, timeout=10).content)
    sent = [r for r in stack.sim_requests() if r["protocol"] == "gemini"][-1]
    upstream = stack.config.models[model].upstream_model
    assert upstream in sent["path"] and sent["path"].endswith(":generateContent")
    body = sent["json"]
    parts = body["contents"][0]["parts"]
    assert parts[0] == {"text": prompt}
    assert parts[1]["inlineData"]["mimeType"] == "image/png"
    assert body["generationConfig"] == {"responseModalities": ["IMAGE"]}
    assert set(body) == {"contents", "generationConfig"}
    assert sent["headers"].get("x-goog-api-key")


def test_response_headers(stack: Stack, key: dict[str, Any]) -> None:
    client = sdk(stack, key)
    raw = client.images.with_raw_response.edit(
        model="gpt-image-1", image=("a.png", images.png(), "image/png"), prompt="x"
    )
    body = raw.parse()
    assert raw.headers["x-request-id"]
    assert raw.headers["x-ratelimit-limit-requests"] == "10000"
    assert "x-ratelimit-remaining-requests" in raw.headers
    assert "x-ratelimit-reset-requests" in raw.headers
    payload = raw.http_response.json()
    assert payload["success"] is True
    assert payload["trace_id"] == raw.headers["x-request-id"]
    assert payload["task_id"] and isinstance(payload["elapsed"], float)
    assert body.usage is not None


# --- the seed's three request styles ------------------------------------------------------
@pytest.fixture(scope="module")
def image_host() -> Any:
    """A local HTTP server holding source images (a stand-in for the seed's CDN)."""
    from starlette.applications import Starlette
    from starlette.responses import Response
    from starlette.routing import Route

    blobs = {"/a.png": images.png(100, 100), "/b.jpg": images.jpeg(90, 90)}

    async def get(request: Any) -> Response:
        data = blobs.get(request.url.path)
        if data is None:
            return Response(status_code=404)
        return Response(data, media_type="application/octet-stream")

    app = Starlette(routes=[Route("/{name}", get)])
    with serve(app) as srv:
        yield srv


def test_seed_json_url(open_stack: Stack, image_host: Any) -> None:
    key = open_stack.create_key(credits=10)
    r = httpx.post(
        open_stack.url + "/v1/openai/images/edits",
        headers={"authorization": f"Bearer {key['key']}"},
        json={
            "model": "gpt-image-2",
            "image": image_host.url + "/a.png",
            "prompt": "Convert this infographic to dark mode",
            "size": "1024x1536",
        },
        timeout=30,
    )
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["success"] is True and body["data"][0]["url"]
    assert body["data"][0]["revised_prompt"]
    assert images.decode(httpx.get(body["data"][0]["url"], timeout=10).content).size == (1024, 1536)


def test_seed_json_url_array_and_images_form(open_stack: Stack, image_host: Any) -> None:
    key = open_stack.create_key(credits=10)
    headers = {"authorization": f"Bearer {key['key']}"}
    for payload in (
        {"image": [image_host.url + "/a.png", image_host.url + "/b.jpg"]},
        {
            "images": [
                {"image_url": image_host.url + "/a.png"},
                {
                    "image_url": "data:image/png;base64,"
                    + base64.b64encode(images.png(32, 32)).decode()
                },
            ]
        },
    ):
        open_stack.clear_sim()
        r = httpx.post(
            open_stack.url + "/v1/images/edits",
            headers=headers,
            json={"model": "gpt-image-1", "prompt": "combine", **payload},
            timeout=30,
        )
        assert r.status_code == 200, r.text
        sent = [q for q in open_stack.sim_requests() if q["protocol"] == "openai"][-1]
        assert [f["name"] for f in sent["files"]] == ["image[]", "image[]"]


def test_seed_multipart_url_text_part(open_stack: Stack, image_host: Any) -> None:
    key = open_stack.create_key(credits=10)
    r = httpx.post(
        open_stack.url + "/v1/openai/images/edits",
        headers={"authorization": f"Bearer {key['key']}"},
        files={
            "model": (None, "nano-banana"),
            "prompt": (None, "add a green leaf on top of the apple"),
            "image": (None, image_host.url + "/a.png"),
        },
        timeout=30,
    )
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["created"] == 0 and body["data"][0]["url"]


def test_seed_multipart_file(stack: Stack, key: dict[str, Any]) -> None:
    r = httpx.post(
        stack.url + "/v1/openai/images/edits",
        headers={"authorization": f"Bearer {key['key']}"},
        files={"image": ("apple.png", io.BytesIO(images.png()), "image/png")},
        data={"model": "nano-banana-pro", "prompt": "add a green leaf on top of the apple"},
        timeout=30,
    )
    assert r.status_code == 200, r.text
    assert r.json()["data"][0]["url"]


def test_curl_image_brackets(stack: Stack, key: dict[str, Any]) -> None:
    """The seed's `-F "image[]=@body-lotion.png"` form."""
    r = httpx.post(
        stack.url + "/v1/images/edits",
        headers={"authorization": f"Bearer {key['key']}"},
        files=[("image[]", ("body-lotion.png", images.png(), "image/png"))],
        data={"model": "gpt-image-1", "prompt": "Create a lovely gift basket"},
        timeout=30,
    )
    assert r.status_code == 200, r.text
    assert r.json()["data"][0]["b64_json"]


def test_public_base_url_shapes_result_urls() -> None:
    from tests.e2e.conftest import start_stack

    s = start_stack(public_base_url="https://img.example.com/")
    try:
        key = s.create_key(credits=1)
        r = httpx.post(
            s.url + "/v1/images/edits",
            headers={"authorization": f"Bearer {key['key']}"},
            data={"model": "nano-banana", "prompt": "x"},
            files={"image": ("a.png", images.png(), "image/png")},
            timeout=30,
        )
        url = r.json()["data"][0]["url"]
        assert url.startswith("https://img.example.com/v1/files/"), url
        name = url.rsplit("/", 1)[1]
        assert httpx.get(f"{s.url}/v1/files/{name}", timeout=10).status_code == 200
        assert httpx.get(f"{s.url}/v1/files/..%2Fadmin_key", timeout=10).status_code == 404
    finally:
        s.gateway.stop()
        s.sim.stop()
