"""nano-banana adapter: fields ignored, the Gemini request, thought parts, refusals, errors."""

from __future__ import annotations

import base64

import orjson
import pytest

from app.adapters.nano_banana import NanoBananaAdapter
from app.core.errors import GatewayError
from tests.adapters import (
    GEMINI_KEY,
    Reply,
    bind,
    image_bytes,
    json_response,
    make_image,
    make_mask,
    make_req,
    model_config,
)

PNG = image_bytes(24, 24, "PNG")
JPEG = image_bytes(24, 24, "JPEG")


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def gemini_ok(parts: list[dict], finish: str = "STOP", **extra) -> Reply:
    body = {
        "candidates": [{"content": {"role": "model", "parts": parts}, "finishReason": finish}],
        **extra,
    }
    return json_response(body)


def image_part(data: bytes = PNG, thought: bool = False) -> dict:
    part: dict = {"inlineData": {"mimeType": "image/png", "data": b64(data)}}
    if thought:
        part["thought"] = True
    return part


def adapter(
    answers: list | None = None,
    model: str = "nano-banana",
    upstream_model: str = "gemini-2.5-flash-image",
    **kw,
):
    mc = model_config("nano-banana", upstream_model, upstream="gemini")
    answers = answers or [gemini_ok([image_part()])]
    return bind(lambda _: NanoBananaAdapter(model, mc), answers, kind="gemini", **kw)


def test_prompt_rules() -> None:
    a, _ = adapter()
    a.check_fields(make_req("nano-banana", prompt="x" * 32000))
    for prompt in ("x" * 32001,):
        with pytest.raises(GatewayError) as ei:
            a.check_fields(make_req("nano-banana", prompt=prompt))
        assert ei.value.param == "prompt"


def test_every_other_field_is_ignored_without_error() -> None:
    a, _ = adapter()
    req = make_req(
        "nano-banana",
        n=7,
        size="not-a-size",
        quality="ultra",
        response_format="b64_json",
        background="transparent",
        output_format="gif",
        output_compression=500,
        input_fidelity="extreme",
        moderation="none",
        user="u",
        stream=True,
        partial_images=9,
        mask=make_mask(10, 10),
        callback_url="https://example.com/hook",
    )
    out = a.check_fields(req)
    assert out.n is None and out.size is None and out.quality is None
    assert out.mask_ref is None and out.mask is None  # never fetched
    assert out.stream is False and out.partial_images is None
    assert out.response_format == "url"  # nano-banana always answers URLs
    assert out.callback_url == "https://example.com/hook"  # a gateway feature, kept
    a.check_images(out)


def test_image_count_rules() -> None:
    a, _ = adapter()
    assert a.max_images() == 14
    a.check_fields(make_req("nano-banana", images=[make_image(8, 8)] * 14))
    with pytest.raises(GatewayError) as ei:  # refused before any fetch, from the refs alone
        a.check_fields(make_req("nano-banana", images=[make_image(8, 8)] * 15))
    assert "at most 14" in ei.value.message and ei.value.param == "image"


async def test_outbound_request() -> None:
    a, rec = adapter(model="nano-banana-2", upstream_model="gemini-3.1-flash-image")
    imgs = [make_image(16, 16, "PNG"), make_image(16, 16, "JPEG"), make_image(16, 16, "WEBP")]
    req = a.check_fields(make_req("nano-banana-2", prompt="add a leaf", images=imgs, size="1x1"))
    out = await a.edit(req, "trace")
    sent = rec.last
    assert sent.method == "POST"
    assert str(sent.url) == (
        "http://upstream.test/v1beta/models/gemini-3.1-flash-image:generateContent"
    )
    assert sent.headers["x-goog-api-key"] == GEMINI_KEY
    assert "authorization" not in sent.headers
    assert sent.headers["content-type"] == "application/json"
    assert orjson.loads(sent.content) == {
        "contents": [
            {
                "role": "user",
                "parts": [
                    {"text": "add a leaf"},
                    {"inlineData": {"mimeType": "image/png", "data": b64(imgs[0].data)}},
                    {"inlineData": {"mimeType": "image/jpeg", "data": b64(imgs[1].data)}},
                    {"inlineData": {"mimeType": "image/webp", "data": b64(imgs[2].data)}},
                ],
            }
        ],
        "generationConfig": {"responseModalities": ["IMAGE"]},
    }
    assert out.created == 0
    assert [(i.data, i.mime, i.revised_prompt) for i in out.images] == [
        (PNG, "image/png", "add a leaf")
    ]
    assert out.extra == {}


async def test_thought_parts_skipped() -> None:
    final = image_bytes(30, 30, "JPEG")
    parts = [
        {"text": "thinking...", "thought": True},
        image_part(PNG, thought=True),
        {"text": "Here it is", "thoughtSignature": "sig"},
        {"inlineData": {"mimeType": "image/jpeg", "data": b64(final)}, "thoughtSignature": "s"},
    ]
    a, _ = adapter(answers=[gemini_ok(parts)])
    out = await a.edit(a.check_fields(make_req("nano-banana")), "t")
    assert [(i.data, i.mime) for i in out.images] == [(final, "image/jpeg")]


async def test_last_thought_image_is_a_fallback() -> None:
    second = image_bytes(20, 20, "PNG")
    parts = [image_part(PNG, thought=True), image_part(second, thought=True)]
    a, _ = adapter(answers=[gemini_ok(parts)])
    out = await a.edit(a.check_fields(make_req("nano-banana")), "t")
    assert [i.data for i in out.images] == [second]


async def test_snake_case_inline_data_accepted() -> None:
    parts = [{"inline_data": {"mime_type": "image/png", "data": b64(PNG)}}]
    a, _ = adapter(answers=[gemini_ok(parts)])
    out = await a.edit(a.check_fields(make_req("nano-banana")), "t")
    assert out.images[0].data == PNG


@pytest.mark.parametrize(
    "reason",
    [
        "SAFETY",
        "IMAGE_SAFETY",
        "PROHIBITED_CONTENT",
        "IMAGE_PROHIBITED_CONTENT",
        "BLOCKLIST",
        "SPII",
        "RECITATION",
        "IMAGE_RECITATION",
    ],
)
async def test_safety_finish_reasons_are_moderation_blocked(reason: str) -> None:
    a, rec = adapter(answers=[gemini_ok([], finish=reason)])
    with pytest.raises(GatewayError) as ei:
        await a.edit(a.check_fields(make_req("nano-banana")), "t")
    assert (ei.value.code, ei.value.status) == ("moderation_blocked", 400)
    assert reason in ei.value.message
    assert len(rec.requests) == 1


async def test_safety_block_does_not_fall_back_to_thought_image() -> None:
    a, _ = adapter(answers=[gemini_ok([image_part(thought=True)], finish="IMAGE_SAFETY")])
    with pytest.raises(GatewayError) as ei:
        await a.edit(a.check_fields(make_req("nano-banana")), "t")
    assert ei.value.code == "moderation_blocked"


async def test_prompt_block_reason_is_moderation_blocked() -> None:
    answer = json_response({"promptFeedback": {"blockReason": "PROHIBITED_CONTENT"}})
    a, _ = adapter(answers=[answer])
    with pytest.raises(GatewayError) as ei:
        await a.edit(a.check_fields(make_req("nano-banana")), "t")
    assert ei.value.code == "moderation_blocked" and "PROHIBITED_CONTENT" in ei.value.message


@pytest.mark.parametrize(
    ("parts", "finish", "fragment"),
    [
        ([{"text": "I can only describe it."}], "STOP", "finishReason STOP"),
        ([], "NO_IMAGE", "finishReason NO_IMAGE"),
        ([], "OTHER", "finishReason OTHER"),
        ([], "IMAGE_OTHER", "finishReason IMAGE_OTHER"),
    ],
)
async def test_no_image_is_502(parts: list, finish: str, fragment: str) -> None:
    a, _ = adapter(answers=[gemini_ok(parts, finish=finish)])
    with pytest.raises(GatewayError) as ei:
        await a.edit(a.check_fields(make_req("nano-banana")), "t")
    assert (ei.value.code, ei.value.status) == ("api_error", 502)
    assert "upstream returned no image" in ei.value.message and fragment in ei.value.message


async def test_text_only_answer_quoted_in_error() -> None:
    a, _ = adapter(answers=[gemini_ok([{"text": "I can only describe it."}])])
    with pytest.raises(GatewayError) as ei:
        await a.edit(a.check_fields(make_req("nano-banana")), "t")
    assert "I can only describe it." in ei.value.message


@pytest.mark.parametrize(
    "answer",
    [
        Reply(200, b"not json"),
        json_response({}),
        json_response({"candidates": ["x"]}),
        json_response({"candidates": [{"content": {"parts": [{"inlineData": {"data": "%%%"}}]}}]}),
    ],
)
async def test_malformed_success_is_502(answer: Reply) -> None:
    a, _ = adapter(answers=[answer])
    with pytest.raises(GatewayError) as ei:
        await a.edit(a.check_fields(make_req("nano-banana")), "t")
    assert ei.value.status == 502


def gemini_error(code: int, status: str, message: str, headers: dict | None = None):
    return json_response(
        {"error": {"code": code, "message": message, "status": status}}, code, headers
    )


async def test_invalid_argument_is_bad_request() -> None:
    a, rec = adapter(answers=[gemini_error(400, "INVALID_ARGUMENT", 'Unknown name "size"')])
    with pytest.raises(GatewayError) as ei:
        await a.edit(a.check_fields(make_req("nano-banana")), "t")
    assert (ei.value.code, ei.value.status) == ("bad_request", 400)
    assert ei.value.message.startswith("upstream rejected the request: Unknown name")
    assert len(rec.requests) == 1


async def test_permission_denied_is_502_without_body() -> None:
    a, _ = adapter(answers=[gemini_error(403, "PERMISSION_DENIED", f"key {GEMINI_KEY} invalid")])
    with pytest.raises(GatewayError) as ei:
        await a.edit(a.check_fields(make_req("nano-banana")), "t")
    assert (ei.value.code, ei.value.status) == ("api_error", 502)
    assert GEMINI_KEY not in ei.value.message


async def test_resource_exhausted_is_429_after_retries() -> None:
    answer = gemini_error(429, "RESOURCE_EXHAUSTED", "quota", {"retry-after": "0"})
    a, rec = adapter(answers=[answer])
    with pytest.raises(GatewayError) as ei:
        await a.edit(a.check_fields(make_req("nano-banana")), "t")
    assert (ei.value.code, ei.value.status) == ("too_many_requests", 429)
    assert "Retry-After" in ei.value.headers
    assert len(rec.requests) == 3


async def test_unavailable_then_ok_is_retried() -> None:
    a, rec = adapter(
        answers=[gemini_error(503, "UNAVAILABLE", "overloaded"), gemini_ok([image_part()])]
    )
    out = await a.edit(a.check_fields(make_req("nano-banana")), "t")
    assert len(out.images) == 1 and len(rec.requests) == 2


async def test_internal_after_retries_is_502() -> None:
    a, _ = adapter(answers=[gemini_error(500, "INTERNAL", "boom")])
    with pytest.raises(GatewayError) as ei:
        await a.edit(a.check_fields(make_req("nano-banana")), "t")
    assert (ei.value.code, ei.value.status) == ("api_error", 502)


def test_no_streaming() -> None:
    a, _ = adapter()
    assert not a.supports_stream()
