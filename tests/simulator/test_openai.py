"""The simulated OpenAI images/edits endpoint: strict refusals and real outputs."""

from __future__ import annotations

import io
import json
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from PIL import Image

from app.simulator import SimulatorState, create_simulator_app
from tests.simulator import OPENAI_AUTH, b64, decode_b64_image, image_bytes, png

EDITS = "/v1/images/edits"


@pytest.fixture
def state() -> SimulatorState:
    return SimulatorState()


@pytest.fixture
async def client(state: SimulatorState) -> AsyncIterator[httpx.AsyncClient]:
    app = create_simulator_app(state)
    transport = httpx.ASGITransport(app)
    async with httpx.AsyncClient(transport=transport, base_url="http://sim.test") as c:
        yield c


async def edit(
    client: httpx.AsyncClient,
    files: list[tuple[str, Any]] | None = None,
    headers: dict[str, str] | None = None,
    **fields: str,
) -> httpx.Response:
    if files is None:
        files = [("image", ("in.png", png(), "image/png"))]
    data = {"prompt": "make it sunny", **fields}
    return await client.post(EDITS, headers=headers or OPENAI_AUTH, data=data, files=files)


def error_of(response: httpx.Response) -> dict[str, Any]:
    body = response.json()
    assert set(body) == {"error"}
    assert {"message", "type", "param", "code"} <= set(body["error"])
    return body["error"]


async def test_gpt_image_single_edit_returns_real_image(client: httpx.AsyncClient) -> None:
    r = await edit(
        client,
        model="gpt-image-1.5",
        size="1536x1024",
        quality="low",
        output_format="webp",
        output_compression="80",
    )
    assert r.status_code == 200, r.text
    body = r.json()
    assert set(body) == {
        "created",
        "data",
        "background",
        "output_format",
        "quality",
        "size",
        "usage",
    }
    assert (body["size"], body["quality"], body["output_format"]) == ("1536x1024", "low", "webp")
    assert body["background"] == "opaque"
    usage = body["usage"]
    assert usage["total_tokens"] == usage["input_tokens"] + usage["output_tokens"] > 0
    assert set(usage["input_tokens_details"]) == {"text_tokens", "image_tokens"}
    assert len(body["data"]) == 1 and set(body["data"][0]) == {"b64_json"}
    out = decode_b64_image(body["data"][0]["b64_json"])
    assert (out.format, out.size) == ("WEBP", (1536, 1024))
    assert r.headers["x-request-id"].startswith("req_")


@pytest.mark.parametrize("count", [1, 3])
async def test_image_array_form(
    client: httpx.AsyncClient, state: SimulatorState, count: int
) -> None:
    kinds = [("PNG", "image/png"), ("JPEG", "image/jpeg"), ("WEBP", "image/webp")]
    files = [
        ("image[]", (f"{i}.img", image_bytes(96, 64, fmt), mime))
        for i, (fmt, mime) in enumerate(kinds[:count])
    ]
    r = await edit(client, files, model="gpt-image-1")
    assert r.status_code == 200, r.text
    # auto keeps the (landscape) aspect of the first input
    assert r.json()["size"] == "1536x1024"
    recorded = state.requests[-1]
    assert [f["name"] for f in recorded["files"]] == ["image[]"] * count
    assert [f["format"] for f in recorded["files"]] == ["png", "jpeg", "webp"][:count]
    assert recorded["files"][0]["width"] == 96


async def test_dalle2_n3_returns_urls_served_by_the_simulator(client: httpx.AsyncClient) -> None:
    files = [("image", ("in.png", png(128, 128, "RGBA"), "image/png"))]
    r = await edit(client, files, model="dall-e-2", n="3", size="256x256")
    assert r.status_code == 200, r.text
    body = r.json()
    assert set(body) == {"created", "data"}
    assert len(body["data"]) == 3
    url = body["data"][0]["url"]
    assert url.startswith("http://sim.test/v1/files/")
    fetched = await client.get(url)
    assert fetched.status_code == 200
    assert Image.open(io.BytesIO(fetched.content)).size == (256, 256)
    r = await edit(client, files, model="dall-e-2", response_format="b64_json", size="512x512")
    assert decode_b64_image(r.json()["data"][0]["b64_json"]).size == (512, 512)


async def test_dalle2_public_base_url() -> None:
    app = create_simulator_app(public_base_url="https://sim.example/up/")
    transport = httpx.ASGITransport(app)
    async with httpx.AsyncClient(transport=transport, base_url="http://x") as c:
        files = [("image", ("in.png", png(64, 64, "RGBA"), "image/png"))]
        r = await edit(c, files, model="dall-e-2")
    assert r.json()["data"][0]["url"].startswith("https://sim.example/up/v1/files/img-")


@pytest.mark.parametrize(
    ("image", "fields", "message"),
    [
        (png(64, 64), {}, "format must be in ['RGBA', 'LA', 'L'], got RGB"),
        (png(64, 32, "RGBA"), {}, "image must be square"),
        (png(64, 64, "RGBA"), {"size": "1536x1024"}, "Supported values are: '256x256'"),
        (png(64, 64, "RGBA"), {"prompt": "x" * 1001}, "maximum length 1000"),
        (png(64, 64, "RGBA"), {"background": "opaque"}, "'background' is not supported"),
        (png(64, 64, "RGBA"), {"n": "11"}, "Expected a value <= 10"),
    ],
)
async def test_dalle2_rules(
    client: httpx.AsyncClient, image: bytes, fields: dict[str, str], message: str
) -> None:
    files = [("image", ("in.png", image, "image/png"))]
    r = await edit(client, files, **{"model": "dall-e-2", **fields})
    assert r.status_code == 400
    assert message in error_of(r)["message"]


async def test_dalle2_only_png(client: httpx.AsyncClient) -> None:
    files = [("image", ("in.jpg", image_bytes(64, 64, "JPEG"), "image/jpeg"))]
    r = await edit(client, files, model="dall-e-2")
    err = error_of(r)
    assert err["code"] == "unsupported_file_mimetype"
    assert err["message"].endswith("Supported file formats are 'image/png'.")


async def test_gpt_image_2_custom_size(client: httpx.AsyncClient) -> None:
    r = await edit(client, model="gpt-image-2", size="2048x2048", quality="low")
    assert r.status_code == 200, r.text
    assert r.json()["size"] == "2048x2048"
    assert decode_b64_image(r.json()["data"][0]["b64_json"]).size == (2048, 2048)


async def test_gpt_image_2_alias_passes(client: httpx.AsyncClient) -> None:
    r = await edit(client, model="gpt-image-2", size="941x1672")
    assert r.status_code == 200, r.text
    assert decode_b64_image(r.json()["data"][0]["b64_json"]).size == (941, 1672)


@pytest.mark.parametrize(
    ("size", "rule"),
    [
        ("1000x1000", "multiples of 16"),
        ("3856x1296", "at most 3840"),
        ("3072x1008", "between 1:3 and 3:1"),
        ("512x512", "at least 655,360"),
        ("3840x2176", "at most 8,294,400"),
        ("2048X2048", "'auto' or 'WIDTHxHEIGHT'"),
    ],
)
async def test_gpt_image_2_size_rules(client: httpx.AsyncClient, size: str, rule: str) -> None:
    r = await edit(client, model="gpt-image-2", size=size)
    err = error_of(r)
    assert r.status_code == 400 and err["param"] == "size" and rule in err["message"]


async def test_gpt_image_1_rejects_custom_size(client: httpx.AsyncClient) -> None:
    r = await edit(client, model="gpt-image-1", size="2048x2048")
    assert error_of(r)["code"] == "invalid_value"


async def test_duplicate_image_parts(client: httpx.AsyncClient, state: SimulatorState) -> None:
    files = [("image", ("a.png", png(), "image/png")), ("image", ("b.png", png(), "image/png"))]
    r = await edit(client, files, model="gpt-image-1.5")
    assert r.status_code == 400
    err = error_of(r)
    assert err["code"] == "duplicate_parameter" and err["param"] == "image"
    assert err["message"].startswith(
        "Duplicate parameter: 'image'. You provided multiple values for this parameter"
    )
    assert "'image[]=<value>'" in err["message"]
    # refused requests are still recorded, files included
    recorded = state.requests[-1]
    assert recorded["status"] == 400 and [f["name"] for f in recorded["files"]] == ["image"] * 2


async def test_octet_stream_part_is_refused(client: httpx.AsyncClient) -> None:
    files = [("image", ("upload", png(), "application/octet-stream"))]
    r = await edit(client, files, model="gpt-image-1")
    assert r.status_code == 400
    assert error_of(r) == {
        "message": "Invalid file 'image': unsupported mimetype ('application/octet-stream'). "
        "Supported file formats are 'image/jpeg', 'image/png', and 'image/webp'.",
        "type": "invalid_request_error",
        "param": "image",
        "code": "unsupported_file_mimetype",
    }


async def test_declared_type_must_match_bytes(client: httpx.AsyncClient) -> None:
    files = [("image", ("in.png", image_bytes(fmt="JPEG"), "image/png"))]
    assert error_of(await edit(client, files))["code"] == "invalid_image_format"
    files = [("image", ("in.png", b"not an image at all", "image/png"))]
    assert error_of(await edit(client, files))["code"] == "invalid_image_file"


async def test_string_where_file_expected(client: httpx.AsyncClient) -> None:
    # (None, value) makes httpx send a text part (no filename) inside multipart/form-data
    text_part = ("image", (None, b"https://example.com/a.png"))
    r = await client.post(EDITS, headers=OPENAI_AUTH, data={"prompt": "x"}, files=[text_part])
    err = error_of(r)
    assert err["code"] == "invalid_type"
    assert "expected one of an array of files or file, but got a string" in err["message"]


@pytest.mark.parametrize(
    ("fields", "code", "param"),
    [
        ({"colour": "red"}, "unknown_parameter", "colour"),
        ({"model": "gpt-image-1.5", "response_format": "b64_json"}, "unknown_parameter", None),
        ({"model": "gpt-image-1-mini", "input_fidelity": "high"}, "unsupported_parameter", None),
        ({"model": "gpt-image-2", "input_fidelity": "high"}, "unsupported_parameter", None),
        ({"quality": "ultra"}, "invalid_value", "quality"),
        ({"n": "many"}, "invalid_type", "n"),
        ({"background": "transparent", "output_format": "jpeg"}, "invalid_value", None),
        ({"model": "gpt-image-9"}, "invalid_value", "model"),
    ],
)
async def test_parameter_refusals(
    client: httpx.AsyncClient, fields: dict[str, str], code: str, param: str | None
) -> None:
    r = await edit(client, **fields)
    assert r.status_code == 400, r.text
    err = error_of(r)
    assert err["code"] == code
    if param:
        assert err["param"] == param


async def test_unknown_model_is_404(client: httpx.AsyncClient) -> None:
    r = await edit(client, model="banana-9000")
    assert r.status_code == 404 and error_of(r)["code"] == "model_not_found"


async def test_missing_prompt_and_image(client: httpx.AsyncClient) -> None:
    r = await client.post(
        EDITS, headers=OPENAI_AUTH, files=[("image", ("a.png", png(), "image/png"))]
    )
    assert error_of(r)["code"] == "missing_required_parameter"
    r = await client.post(EDITS, headers=OPENAI_AUTH, files=[("prompt", (None, b"x"))])
    assert error_of(r)["param"] == "image"
    r = await client.post(EDITS, headers=OPENAI_AUTH, data={"prompt": "x"})  # urlencoded
    assert r.status_code == 400 and "Content-Type" in error_of(r)["message"]


async def test_auth(client: httpx.AsyncClient, state: SimulatorState) -> None:
    r = await edit(client, headers={"Authorization": "Bearer "})
    assert r.status_code == 401 and "You didn't provide an API key" in error_of(r)["message"]
    r = await edit(client, headers={"Authorization": "Bearer sk-sim-invalid"})
    assert r.status_code == 401 and error_of(r)["code"] == "invalid_api_key"
    # the key is checked first, but the refused request is still recorded in full
    r = await edit(client, headers={"Authorization": "Bearer sk-sim-invalid"}, colour="red")
    assert r.status_code == 401
    recorded = state.requests[-1]
    assert recorded["status"] == 401 and recorded["fields"]["colour"] == "red"
    assert recorded["headers"]["authorization"] == "Bearer sk-…alid"


async def test_mask_rules(client: httpx.AsyncClient) -> None:
    image = ("image", ("in.png", png(64, 64), "image/png"))
    bad = ("mask", ("m.png", png(32, 32, "RGBA"), "image/png"))
    r = await edit(client, [image, bad])
    assert error_of(r)["param"] == "mask"
    no_alpha = ("mask", ("m.png", png(64, 64, "RGB"), "image/png"))
    assert "alpha channel" in error_of(await edit(client, [image, no_alpha]))["message"]
    good = ("mask", ("m.png", png(64, 64, "RGBA"), "image/png"))
    assert (await edit(client, [image, good])).status_code == 200


async def test_json_body(client: httpx.AsyncClient, state: SimulatorState) -> None:
    data_url = "data:image/png;base64," + b64(png(80, 40))
    body = {"model": "gpt-image-1.5", "prompt": "x", "images": [{"image_url": data_url}]}
    r = await client.post(EDITS, headers=OPENAI_AUTH, json=body)
    assert r.status_code == 200, r.text
    assert r.json()["size"] == "1536x1024"
    recorded = state.requests[-1]
    summary = recorded["json"]["images"][0]["image_url"]
    assert summary["mime"] == "image/png" and summary["size"] > 0 and len(summary["sha256"]) == 64
    assert recorded["files"][0]["width"] == 80

    r = await client.post(EDITS, headers=OPENAI_AUTH, json={"prompt": "x", "image": data_url})
    assert error_of(r)["code"] == "unknown_parameter"
    r = await client.post(EDITS, headers=OPENAI_AUTH, json={**body, "model": "dall-e-2"})
    assert r.status_code == 400 and error_of(r)["param"] == "model"
    r = await client.post(EDITS, headers=OPENAI_AUTH, json={**body, "n": "2"})
    assert error_of(r)["code"] == "invalid_type"
    r = await client.post(
        EDITS, headers=OPENAI_AUTH, json={**body, "images": [{"file_id": "file-1"}]}
    )
    assert r.status_code == 404


async def test_stream_events(client: httpx.AsyncClient) -> None:
    r = await edit(client, model="gpt-image-1.5", stream="true", partial_images="2")
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/event-stream")
    events = []
    for block in r.text.strip().split("\n\n"):
        lines = dict(line.split(": ", 1) for line in block.splitlines())
        payload = json.loads(lines["data"])
        assert payload["type"] == lines["event"]
        events.append(payload)
    assert [e["type"] for e in events] == ["image_edit.partial_image"] * 2 + [
        "image_edit.completed"
    ]
    common = {"type", "b64_json", "created_at", "size", "quality", "background", "output_format"}
    assert set(events[0]) == common | {"partial_image_index"}
    assert [e["partial_image_index"] for e in events[:2]] == [0, 1]
    assert set(events[-1]) == common | {"usage"}
    assert decode_b64_image(events[-1]["b64_json"]).size == (1024, 1024)


async def test_official_sdk_round_trip(state: SimulatorState) -> None:
    """The OpenAI SDK's own multipart encoding is accepted (and its raw-bytes mistake refused)."""
    openai = pytest.importorskip("openai")
    transport = httpx.ASGITransport(create_simulator_app(state))
    async with httpx.AsyncClient(transport=transport) as http:
        sdk = openai.AsyncOpenAI(
            api_key="sk-sim-sdk-1234", base_url="http://sim.test/v1", http_client=http
        )
        one = ("a.png", png(), "image/png")
        result = await sdk.images.edit(model="gpt-image-1.5", image=one, prompt="sdk")
        assert result.data and result.data[0].b64_json and result.usage
        many = [one, ("b.jpg", image_bytes(fmt="JPEG"), "image/jpeg")]
        result = await sdk.images.edit(model="gpt-image-1", image=many, prompt="sdk", n=2)
        assert len(result.data or []) == 2
        assert [f["name"] for f in state.requests[-1]["files"]] == ["image[]", "image[]"]
        with pytest.raises(openai.BadRequestError) as caught:
            await sdk.images.edit(model="gpt-image-1", image=png(), prompt="raw bytes")
        assert "unsupported mimetype ('application/octet-stream')" in str(caught.value)
        stream = await sdk.images.edit(
            model="gpt-image-1", image=one, prompt="sdk", stream=True, partial_images=1
        )
        kinds = [event.type async for event in stream]
        assert kinds == ["image_edit.partial_image", "image_edit.completed"]
