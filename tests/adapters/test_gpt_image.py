"""gpt-image adapter: every validation rule, the outbound multipart, responses and errors."""

from __future__ import annotations

import base64

import pytest

from app.adapters.gpt_image import GptImageAdapter
from app.core.errors import GatewayError
from app.domain.edit import Image
from tests.adapters import (
    OPENAI_KEY,
    Reply,
    bind,
    image_bytes,
    json_response,
    make_image,
    make_mask,
    make_req,
    model_config,
    openai_error,
    openai_ok,
    parse_multipart,
    text_fields,
)

GPT_MODELS = ["gpt-image-1", "gpt-image-1-mini", "gpt-image-1.5", "gpt-image-2"]


def adapter(model: str = "gpt-image-1.5", answers: list | None = None, **kw):
    upstream_model = model + "-upstream-id" if model != "gpt-image-2" else "gpt-image-2"
    mc = model_config("gpt-image", upstream_model)
    return bind(lambda _: GptImageAdapter(model, mc), answers or [openai_ok()], **kw)


def rejects(model: str, param: str | None, fragment: str = "", **fields) -> GatewayError:
    a, _ = adapter(model)
    with pytest.raises(GatewayError) as ei:
        a.check_fields(make_req(model, **fields))
    err = ei.value
    assert err.status == 400 and err.code == "bad_request", err
    assert err.param == param
    assert fragment in err.message, err.message
    return err


# -- prompt, n -------------------------------------------------------------------------------


@pytest.mark.parametrize("model", GPT_MODELS)
def test_prompt_bounded(model: str) -> None:
    rejects(model, "prompt", "32000", prompt="x" * 32001)
    a, _ = adapter(model)
    a.check_fields(make_req(model, prompt="x" * 32000))


@pytest.mark.parametrize("model", GPT_MODELS)
def test_n_silently_treated_as_one(model: str) -> None:
    a, _ = adapter(model)
    assert a.check_fields(make_req(model, n=10)).n == 1
    assert a.check_fields(make_req(model)).n == 1


# -- size ------------------------------------------------------------------------------------


@pytest.mark.parametrize("model", ["gpt-image-1", "gpt-image-1-mini", "gpt-image-1.5"])
@pytest.mark.parametrize("size", [None, "auto", "1024x1024", "1536x1024", "1024x1536"])
def test_fixed_sizes_accepted(model: str, size: str | None) -> None:
    a, _ = adapter(model)
    assert a.check_fields(make_req(model, size=size)).size == size


@pytest.mark.parametrize("model", ["gpt-image-1", "gpt-image-1-mini", "gpt-image-1.5"])
@pytest.mark.parametrize("size", ["2048x2048", "256x256", "1792x1024", "", "AUTO", "1254x1254"])
def test_fixed_sizes_others_refused(model: str, size: str) -> None:
    rejects(model, "size", "auto, 1024x1024, 1536x1024, 1024x1536", size=size)


@pytest.mark.parametrize(
    ("size", "sent"),
    [
        (None, None),
        ("", None),
        ("auto", "auto"),
        ("1024x1024", "1024x1024"),
        ("1536x1024", "1536x1024"),
        ("2048x2048", "2048x2048"),
        ("3840x2160", "3840x2160"),  # exactly the max pixels
        ("2160x3840", "2160x3840"),
        ("2304x768", "2304x768"),  # exactly 3:1 is allowed
        ("768x2304", "768x2304"),
        ("1024x640", "1024x640"),  # exactly the min pixels (655,360)
        ("1254x1254", "1254x1254"),  # 1K aliases: not multiples of 16, relayed unchanged
        ("1672x941", "1672x941"),
        ("941x1672", "941x1672"),
    ],
)
def test_gpt_image_2_sizes_accepted(size: str | None, sent: str | None) -> None:
    a, _ = adapter("gpt-image-2")
    req = a.check_fields(make_req("gpt-image-2", size=size))
    assert req.size == sent
    fields = dict(a.fields(req, "m"))
    assert fields.get("size") == sent


@pytest.mark.parametrize(
    "size",
    [
        "AUTO",
        "Auto",
        "1024*1024",
        " 1024x1024",
        "1024x1024 ",
        "1024X1024",
        "1024x",
        "x1024",
        "-1024x1024",
        "1024x1024\n",
        "1e3x1024",
        "1024 x 1024",
        "\uff11\uff10\uff12\uff14x1024",  # full-width digits
    ],
)
def test_gpt_image_2_size_format(size: str) -> None:
    rejects("gpt-image-2", "size", "size must be auto or WIDTHxHEIGHT", size=size)


@pytest.mark.parametrize(
    ("size", "rule"),
    [
        ("1000x1000", "multiples of 16"),
        ("1024x1000", "multiples of 16"),
        ("4000x2000", "longer side must be at most 3840"),
        ("3856x1024", "longer side must be at most 3840"),
        ("3840x2176", "at most 8,294,400"),
        ("512x512", "at least 655,360"),
        ("1008x640", "at least 655,360"),
        ("3072x768", "aspect ratio must be at most 3:1"),
        ("768x3072", "aspect ratio must be at most 3:1"),
        ("0x0", "at least 655,360"),
    ],
)
def test_gpt_image_2_size_rules_each_named(size: str, rule: str) -> None:
    rejects("gpt-image-2", "size", rule, size=size)


# -- other fields ----------------------------------------------------------------------------


@pytest.mark.parametrize("model", GPT_MODELS)
@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("quality", "standard"),
        ("quality", "hd"),
        ("background", "white"),
        ("output_format", "gif"),
        ("output_format", "jpg"),
        ("output_compression", 101),
        ("output_compression", -1),
        ("moderation", "high"),
        ("response_format", "png"),
        ("input_fidelity", "medium"),
        ("partial_images", 4),
    ],
)
def test_invalid_values_refused(model: str, field: str, value: object) -> None:
    rejects(model, field, **{field: value})


@pytest.mark.parametrize("model", GPT_MODELS)
def test_valid_values_accepted(model: str) -> None:
    a, _ = adapter(model)
    req = make_req(
        model,
        quality="high",
        background="opaque",
        output_format="webp",
        output_compression=80,
        moderation="low",
        response_format="url",
        user="u-1",
        partial_images=2,
        stream=True,
    )
    out = a.check_fields(req)
    assert (out.quality, out.background, out.output_format) == ("high", "opaque", "webp")
    assert out.output_compression == 80 and out.response_format == "url"


def test_transparent_background_needs_png_or_webp() -> None:
    rejects(
        "gpt-image-1.5",
        "output_format",
        "png or webp",
        background="transparent",
        output_format="jpeg",
    )
    a, _ = adapter()
    a.check_fields(make_req(background="transparent", output_format="webp"))


def test_input_fidelity_refused_on_mini() -> None:
    rejects(
        "gpt-image-1-mini",
        "input_fidelity",
        "not supported by gpt-image-1-mini",
        input_fidelity="high",
    )


def test_input_fidelity_accepted_but_never_sent_on_gpt_image_2() -> None:
    a, _ = adapter("gpt-image-2")
    req = a.check_fields(make_req("gpt-image-2", input_fidelity="high"))
    assert "input_fidelity" not in dict(a.fields(req, "m"))


@pytest.mark.parametrize("model", ["gpt-image-1", "gpt-image-1.5"])
def test_input_fidelity_forwarded_where_supported(model: str) -> None:
    a, _ = adapter(model)
    req = a.check_fields(make_req(model, input_fidelity="high"))
    assert dict(a.fields(req, "m"))["input_fidelity"] == "high"


def test_output_compression_only_sent_with_lossy_formats() -> None:
    a, _ = adapter()
    png = a.check_fields(make_req(output_compression=50))
    assert "output_compression" not in dict(a.fields(png, "m"))
    jpeg = a.check_fields(make_req(output_compression=50, output_format="jpeg"))
    assert dict(a.fields(jpeg, "m"))["output_compression"] == "50"


# -- images ----------------------------------------------------------------------------------


def test_image_count_rules() -> None:
    a, _ = adapter()
    assert a.max_images() == 16
    a.check_fields(make_req(images=[make_image(16, 16)] * 16))
    with pytest.raises(GatewayError) as ei:  # refused before any fetch, from the refs alone
        a.check_fields(make_req(images=[make_image(16, 16)] * 17))
    assert "at most 16" in ei.value.message and ei.value.param == "image"


def test_image_formats_and_size() -> None:
    a, _ = adapter()
    a.check_images(
        make_req(images=[make_image(fmt="PNG"), make_image(fmt="JPEG"), make_image(fmt="WEBP")])
    )
    gif = Image(b"GIF89a...", "image/gif", 10, 10)
    with pytest.raises(GatewayError) as ei:
        a.check_images(make_req(images=[make_image(), gif]))
    assert ei.value.param == "image[1]"
    huge = Image(b"\x89PNG\r\n\x1a\n" + bytes(50 * 1024 * 1024), "image/png", 10, 10)
    with pytest.raises(GatewayError) as ei:
        a.check_images(make_req(images=[huge]))
    assert ei.value.status == 413 and "50 MB" in ei.value.message


def test_mask_rules() -> None:
    a, _ = adapter()
    a.check_images(
        make_req(images=[make_image(64, 64), make_image(32, 32)], mask=make_mask(64, 64))
    )
    with pytest.raises(GatewayError) as ei:
        a.check_images(make_req(images=[make_image(64, 64)], mask=make_mask(32, 64)))
    assert ei.value.param == "mask" and "same dimensions" in ei.value.message
    with pytest.raises(GatewayError) as ei:
        a.check_images(make_req(mask=make_image(64, 64, "JPEG")))
    assert ei.value.param == "mask" and "PNG" in ei.value.message


# -- outbound encoding -----------------------------------------------------------------------


async def test_single_image_multipart() -> None:
    a, rec = adapter("gpt-image-1.5")
    img = make_image(40, 40, "JPEG")
    req = a.check_fields(
        make_req(
            images=[img],
            size="1024x1024",
            quality="low",
            n=4,
            response_format="b64_json",
            user="alice",
        )
    )
    out = await a.edit(req, "trace-1")
    sent = rec.last
    assert sent.method == "POST" and str(sent.url) == "http://upstream.test/v1/images/edits"
    assert sent.headers["authorization"] == f"Bearer {OPENAI_KEY}"
    assert sent.headers["x-client-request-id"] == "trace-1"
    parts = parse_multipart(sent)
    files = [p for p in parts if p.filename is not None]
    assert [(p.name, p.filename, p.content_type) for p in files] == [
        ("image", "image_0.jpeg", "image/jpeg")
    ]
    assert files[0].data == img.data
    assert text_fields(parts) == {
        "model": "gpt-image-1.5-upstream-id",
        "prompt": "make it blue",
        "size": "1024x1024",
        "quality": "low",
        "user": "alice",
    }
    assert [p.name for p in parts][:2] == ["model", "prompt"]
    assert len(out.images) == 1 and out.images[0].mime == "image/png"


async def test_several_images_use_image_brackets_and_mask() -> None:
    a, rec = adapter("gpt-image-2")
    imgs = [make_image(64, 64, "PNG"), make_image(32, 32, "JPEG"), make_image(48, 48, "WEBP")]
    mask = make_mask(64, 64)
    req = a.check_fields(
        make_req(
            "gpt-image-2",
            images=imgs,
            mask=mask,
            size="2048x1152",
            input_fidelity="low",
            background="auto",
            output_format="png",
            moderation="auto",
        )
    )
    await a.edit(req, "t")
    parts = parse_multipart(rec.last)
    files = [(p.name, p.filename, p.content_type) for p in parts if p.filename]
    assert files == [
        ("image[]", "image_0.png", "image/png"),
        ("image[]", "image_1.jpeg", "image/jpeg"),
        ("image[]", "image_2.webp", "image/webp"),
        ("mask", "mask.png", "image/png"),
    ]
    assert [p.data for p in parts if p.filename] == [i.data for i in imgs] + [mask.data]
    fields = text_fields(parts)
    assert fields == {
        "model": "gpt-image-2",
        "prompt": "make it blue",
        "size": "2048x1152",
        "background": "auto",
        "output_format": "png",
        "moderation": "auto",
    }


async def test_never_sent_fields() -> None:
    a, rec = adapter("gpt-image-1")
    req = a.check_fields(
        make_req("gpt-image-1", n=3, response_format="url", stream=True, partial_images=2)
    )
    await a.edit(req, "t")
    names = {p.name for p in parse_multipart(rec.last)}
    assert names == {"model", "prompt", "image"}


async def test_prompt_with_newlines_and_quotes_roundtrips() -> None:
    a, rec = adapter()
    prompt = 'line one\r\nline "two"\n--not-a-boundary\nünïcødé'
    await a.edit(a.check_fields(make_req(prompt=prompt)), "t")
    assert text_fields(parse_multipart(rec.last))["prompt"] == prompt


# -- responses -------------------------------------------------------------------------------


async def test_response_parsed_with_extra_fields() -> None:
    usage = {"total_tokens": 100, "input_tokens": 50, "output_tokens": 50}
    a, _ = adapter(
        answers=[
            openai_ok(
                fmt="WEBP",
                usage=usage,
                size="1024x1024",
                quality="high",
                output_format="webp",
                background="opaque",
            )
        ]
    )
    out = await a.edit(a.check_fields(make_req()), "t")
    assert out.created == 1777048863
    assert out.images[0].mime == "image/webp"
    assert out.images[0].data == base64.b64decode(base64.b64encode(image_bytes(32, 32, "WEBP")))
    assert out.extra == {
        "usage": usage,
        "size": "1024x1024",
        "quality": "high",
        "output_format": "webp",
        "background": "opaque",
    }


@pytest.mark.parametrize(
    "answer",
    [
        Reply(200, b"<html>oops</html>"),
        json_response({"created": 1, "data": []}),
        json_response({"created": 1}),
        json_response([1, 2]),
        json_response({"created": 1, "data": [{"b64_json": "not base64!!"}]}),
        json_response({"created": 1, "data": [{"url": "https://x/y.png"}]}),
    ],
)
async def test_malformed_success_is_502(answer: Reply) -> None:
    a, _ = adapter(answers=[answer])
    with pytest.raises(GatewayError) as ei:
        await a.edit(a.check_fields(make_req()), "t")
    assert ei.value.status == 502 and ei.value.code == "api_error"


# -- upstream errors -------------------------------------------------------------------------


async def test_moderation_blocked() -> None:
    msg = "Your request was rejected by the safety system."
    a, rec = adapter(
        answers=[openai_error(400, msg, "moderation_blocked", "image_generation_user_error")]
    )
    with pytest.raises(GatewayError) as ei:
        await a.edit(a.check_fields(make_req()), "t")
    assert (ei.value.code, ei.value.status, ei.value.message) == ("moderation_blocked", 400, msg)
    assert len(rec.requests) == 1


async def test_upstream_400_passes_message_and_param() -> None:
    a, rec = adapter(answers=[openai_error(400, "Invalid size.", "invalid_value", param="size")])
    with pytest.raises(GatewayError) as ei:
        await a.edit(a.check_fields(make_req()), "t")
    err = ei.value
    assert (err.code, err.status, err.param) == ("bad_request", 400, "size")
    assert err.message == "upstream rejected the request: Invalid size."
    assert len(rec.requests) == 1


@pytest.mark.parametrize("status", [401, 403])
async def test_auth_failure_hides_upstream_body(status: int) -> None:
    a, _ = adapter(answers=[openai_error(status, f"Incorrect API key provided: {OPENAI_KEY}")])
    with pytest.raises(GatewayError) as ei:
        await a.edit(a.check_fields(make_req()), "t")
    assert (ei.value.code, ei.value.status) == ("api_error", 502)
    assert ei.value.message == "upstream authentication failed"
    assert OPENAI_KEY not in repr(ei.value)


async def test_rate_limited_after_retries() -> None:
    a, rec = adapter(answers=[openai_error(429, "slow down", headers={"retry-after": "0"})])
    with pytest.raises(GatewayError) as ei:
        await a.edit(a.check_fields(make_req()), "t")
    assert (ei.value.code, ei.value.status) == ("too_many_requests", 429)
    assert ei.value.headers == {"Retry-After": "1"}
    assert len(rec.requests) == 3


async def test_5xx_after_retries_is_502() -> None:
    a, rec = adapter(answers=[openai_error(500, "The server had an error")])
    with pytest.raises(GatewayError) as ei:
        await a.edit(a.check_fields(make_req()), "t")
    assert (ei.value.code, ei.value.status) == ("api_error", 502)
    assert len(rec.requests) == 3


async def test_404_model_not_found_is_bad_request() -> None:
    a, _ = adapter(answers=[openai_error(404, "The model does not exist", "model_not_found")])
    with pytest.raises(GatewayError) as ei:
        await a.edit(a.check_fields(make_req()), "t")
    assert (ei.value.code, ei.value.status) == ("bad_request", 400)


# -- streaming -------------------------------------------------------------------------------


def sse(*events: tuple[str, str]) -> Reply:
    body = b"".join(f"event: {e}\ndata: {d}\n\n".encode() for e, d in events)
    return Reply(200, body, {"content-type": "text/event-stream"})


async def test_stream_relays_events_and_sends_stream_fields() -> None:
    answer = sse(
        ("image_edit.partial_image", '{"type":"image_edit.partial_image","b64_json":"AA=="}'),
        ("image_edit.completed", '{"type":"image_edit.completed","b64_json":"BB==","usage":{}}'),
    )
    a, rec = adapter(answers=[answer])
    assert a.supports_stream()
    req = a.check_fields(make_req(stream=True, partial_images=1))
    events = [e async for e in a.stream(req, "t")]
    assert [e["type"] for e in events] == ["image_edit.partial_image", "image_edit.completed"]
    fields = text_fields(parse_multipart(rec.last))
    assert fields["stream"] == "true" and fields["partial_images"] == "1"


async def test_stream_error_event_raises() -> None:
    answer = sse(
        ("error", '{"type":"error","error":{"message":"blocked","code":"moderation_blocked"}}')
    )
    a, _ = adapter(answers=[answer])
    with pytest.raises(GatewayError) as ei:
        _ = [e async for e in a.stream(a.check_fields(make_req(stream=True)), "t")]
    assert ei.value.code == "moderation_blocked"


async def test_stream_ending_without_completed_is_502() -> None:
    answer = sse(("image_edit.partial_image", '{"type":"image_edit.partial_image"}'))
    a, _ = adapter(answers=[answer])
    with pytest.raises(GatewayError) as ei:
        _ = [e async for e in a.stream(a.check_fields(make_req(stream=True)), "t")]
    assert ei.value.status == 502


async def test_stream_http_error_is_mapped() -> None:
    a, rec = adapter(answers=[openai_error(400, "bad mask", param="mask")])
    with pytest.raises(GatewayError) as ei:
        _ = [e async for e in a.stream(a.check_fields(make_req(stream=True)), "t")]
    assert ei.value.param == "mask" and ei.value.status == 400
    assert len(rec.requests) == 1
