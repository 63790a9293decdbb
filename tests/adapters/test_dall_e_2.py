"""dall-e-2 adapter: its own rules, GPT-only fields refused by name, b64_json always asked."""

from __future__ import annotations

import pytest

from app.adapters.dall_e_2 import DallE2Adapter
from app.core.errors import GatewayError
from app.domain.edit import Image
from tests.adapters import (
    bind,
    make_image,
    make_mask,
    make_req,
    model_config,
    openai_error,
    openai_ok,
    parse_multipart,
    text_fields,
)


def adapter(answers: list | None = None):
    mc = model_config("dall-e-2", "dall-e-2")
    return bind(lambda _: DallE2Adapter("dall-e-2", mc), answers or [openai_ok()])


def req(**kw):
    kw.setdefault("images", [make_image(64, 64)])
    return make_req("dall-e-2", **kw)


def rejects(param: str, fragment: str = "", **fields) -> GatewayError:
    a, _ = adapter()
    with pytest.raises(GatewayError) as ei:
        a.check_fields(req(**fields))
    assert (ei.value.code, ei.value.status, ei.value.param) == ("bad_request", 400, param)
    assert fragment in ei.value.message, ei.value.message
    return ei.value


def test_prompt_limit_is_1000() -> None:
    a, _ = adapter()
    a.check_fields(req(prompt="x" * 1000))
    rejects("prompt", "1000", prompt="x" * 1001)


@pytest.mark.parametrize("n", [1, 5, 10])
def test_n_native(n: int) -> None:
    a, _ = adapter()
    assert a.check_fields(req(n=n)).n == n


@pytest.mark.parametrize("n", [0, 11, -1])
def test_n_out_of_range(n: int) -> None:
    rejects("n", "1 to 10", n=n)


def test_n_defaults_to_one() -> None:
    a, _ = adapter()
    assert a.check_fields(req()).n == 1


@pytest.mark.parametrize("size", ["256x256", "512x512", "1024x1024", None])
def test_sizes_accepted(size: str | None) -> None:
    a, _ = adapter()
    a.check_fields(req(size=size))


@pytest.mark.parametrize("size", ["auto", "1536x1024", "2048x2048", "", "128x128"])
def test_sizes_refused(size: str) -> None:
    rejects("size", size=size)


def test_quality_only_standard() -> None:
    a, _ = adapter()
    a.check_fields(req(quality="standard"))
    rejects("quality", quality="high")
    rejects("quality", quality="auto")


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("background", "transparent"),
        ("output_format", "png"),
        ("output_compression", 50),
        ("input_fidelity", "high"),
        ("moderation", "low"),
        ("stream", True),
        ("partial_images", 1),
    ],
)
def test_gpt_only_fields_refused_by_name(field: str, value: object) -> None:
    rejects(field, f"{field} is not supported by dall-e-2", **{field: value})


def test_response_format_validated() -> None:
    a, _ = adapter()
    a.check_fields(req(response_format="url"))
    a.check_fields(req(response_format="b64_json"))
    rejects("response_format", response_format="jpeg")


def test_image_rules() -> None:
    a, _ = adapter()
    assert a.max_images() == 1
    a.check_images(req())
    cases = [
        ([make_image(64, 64, "JPEG")], "PNG"),
        ([make_image(64, 32)], "square"),
        ([Image(b"\x89PNG\r\n\x1a\n" + bytes(4 * 1024 * 1024), "image/png", 8, 8)], "4 MB"),
    ]
    for images, fragment in cases:
        with pytest.raises(GatewayError) as ei:
            a.check_images(req(images=images))
        assert ei.value.status == 400 and fragment in ei.value.message, ei.value.message
    with pytest.raises(GatewayError) as ei:
        a.check_fields(req(images=[make_image(), make_image()]))
    assert "at most 1 image" in ei.value.message


def test_mask_rules() -> None:
    a, _ = adapter()
    a.check_images(req(mask=make_mask(64, 64)))
    with pytest.raises(GatewayError) as ei:
        a.check_images(req(mask=make_mask(32, 32)))
    assert ei.value.param == "mask"


async def test_outbound_asks_b64_and_sends_n_all_images_returned() -> None:
    a, rec = adapter(answers=[openai_ok(n=3)])
    r = a.check_fields(
        req(n=3, size="512x512", response_format="url", user="bob", mask=make_mask(64, 64))
    )
    out = await a.edit(r, "t")
    assert len(out.images) == 3
    parts = parse_multipart(rec.last)
    assert text_fields(parts) == {
        "model": "dall-e-2",
        "prompt": "make it blue",
        "n": "3",
        "size": "512x512",
        "user": "bob",
        "response_format": "b64_json",
    }
    files = [(p.name, p.filename, p.content_type) for p in parts if p.filename]
    assert files == [("image", "image_0.png", "image/png"), ("mask", "mask.png", "image/png")]


async def test_fewer_images_than_asked_are_all_returned() -> None:
    a, _ = adapter(answers=[openai_ok(n=2)])
    out = await a.edit(a.check_fields(req(n=4)), "t")
    assert len(out.images) == 2


async def test_upstream_error_mapping() -> None:
    a, _ = adapter(
        answers=[openai_error(400, "Invalid input image - format must be PNG", param="image")]
    )
    with pytest.raises(GatewayError) as ei:
        await a.edit(a.check_fields(req()), "t")
    assert ei.value.code == "bad_request" and ei.value.param == "image"


def test_no_streaming() -> None:
    a, _ = adapter()
    assert not a.supports_stream()
    with pytest.raises(GatewayError) as ei:
        a.check_fields(req(stream=True))
    assert ei.value.param == "stream"
