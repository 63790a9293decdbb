"""`parse_edit_body`: every body form the SDKs, curl and servers send → one `EditRequest`.

Multipart bodies are built with httpx's encoder, which is what openai-python uses, and fed in
chunks of 1 byte, 7 bytes, 64 KB and whole, so part boundaries, headers and look-behind land
at every possible chunk offset.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable
from typing import Any

import httpx
import orjson
import pytest

from app.api.body import CONTENT_TYPE_MESSAGE, parse_edit_body
from app.core.config import LimitsConfig
from app.core.errors import GatewayError
from app.domain.edit import EditRequest

LIMITS = LimitsConfig()
DEFAULT_MODEL = "gpt-image-1.5"
CHUNK_SIZES = [1, 7, 64 * 1024, None]  # None = the whole body in one chunk
PNG = b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4  # binary, with CRs and dashes inside
PNG2 = b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + b"\r\n--" * 50
JPEG = b"\xff\xd8\xff\xe0" + b"\x00\x10JFIF" + bytes(300)
BOUNDARY = "xXxBOUNDARYxXx"
MULTIPART = f"multipart/form-data; boundary={BOUNDARY}"
JSON = "application/json"


# ----------------------------------------------------------------------------- helpers


def sdk_multipart(
    data: dict[str, str] | None = None, files: list[tuple[str, Any]] | None = None
) -> tuple[str, bytes]:
    """Encode like openai-python: httpx `data=` for text fields, `files=` for uploads."""
    request = httpx.Request("POST", "http://gw/v1/images/edits", data=data, files=files)
    return request.headers["content-type"], request.read()


def png_file(name: str = "image", content: bytes = PNG, filename: str = "a.png") -> Any:
    return (name, (filename, content, "image/png"))


def manual(parts: Iterable[tuple[str, bytes | str] | tuple[str, bytes | str, str]]) -> bytes:
    """A multipart body by hand: (name, value) text parts and (name, value, filename) files."""
    out = bytearray()
    for part in parts:
        name, value = part[0], part[1]
        raw = value.encode() if isinstance(value, str) else value
        disposition = f'form-data; name="{name}"'
        if len(part) == 3:
            disposition += f'; filename="{part[2]}"'
        out += f"--{BOUNDARY}\r\nContent-Disposition: {disposition}\r\n\r\n".encode()
        out += raw + b"\r\n"
    out += f"--{BOUNDARY}--\r\n".encode()
    return bytes(out)


async def stream(body: bytes, chunk: int | None) -> AsyncIterator[bytes]:
    if chunk is None:
        yield body
        return
    for i in range(0, len(body), chunk):
        yield body[i : i + chunk]


async def parse(
    content_type: str | None,
    body: bytes,
    chunk: int | None = None,
    limits: LimitsConfig = LIMITS,
) -> EditRequest:
    return await parse_edit_body(
        content_type, stream(body, chunk), limits, default_model=DEFAULT_MODEL
    )


async def parse_json(doc: Any, chunk: int | None = None, limits: LimitsConfig = LIMITS) -> Any:
    return await parse(JSON, orjson.dumps(doc), chunk, limits)


async def expect_error(
    coro: Any, code: str, status: int, param: str | None, match: str | None = None
) -> GatewayError:
    with pytest.raises(GatewayError) as info:
        await coro
    err = info.value
    assert (err.code, err.status, err.param) == (code, status, param), repr(err)
    if match is not None:
        assert match in err.message, err.message
    return err


def bad(coro: Any, param: str | None, match: str | None = None) -> Any:
    return expect_error(coro, "bad_request", 400, param, match)


def small_limits(**overrides: int) -> LimitsConfig:
    return LimitsConfig(**overrides)


BASE = {"prompt": "make it blue"}


# ----------------------------------------------------------------------------- multipart: SDK


@pytest.mark.parametrize("chunk", CHUNK_SIZES)
async def test_sdk_single_image_with_all_fields(chunk: int | None) -> None:
    data = {
        "model": "gpt-image-1",
        "prompt": "a red hat\non the cat",
        "n": "2",
        "size": "1024x1536",
        "quality": "high",
        "response_format": "b64_json",
        "background": "transparent",
        "output_format": "webp",
        "output_compression": "80",
        "input_fidelity": "high",
        "moderation": "low",
        "user": "user-1",
        "stream": "true",
        "partial_images": "2",
        "callback_url": "https://example.com/hook",
    }
    ct, body = sdk_multipart(data, [png_file()])
    req = await parse(ct, body, chunk)
    assert req.body_kind == "multipart"
    assert req.model == "gpt-image-1"
    assert req.prompt == "a red hat\non the cat"
    assert len(req.image_refs) == 1
    ref = req.image_refs[0]
    assert (ref.param, ref.data, ref.url) == ("image", PNG, None)
    assert type(ref.data) is bytes
    assert req.mask_ref is None
    assert (req.n, req.output_compression, req.partial_images) == (2, 80, 2)
    assert req.stream is True
    assert (req.size, req.quality, req.response_format) == ("1024x1536", "high", "b64_json")
    assert (req.background, req.output_format) == ("transparent", "webp")
    assert (req.input_fidelity, req.moderation, req.user) == ("high", "low", "user-1")
    assert req.callback_url == "https://example.com/hook"


@pytest.mark.parametrize("chunk", CHUNK_SIZES)
async def test_sdk_image_list_becomes_ordered_image_brackets(chunk: int | None) -> None:
    files = [png_file("image[]", PNG), png_file("image[]", PNG2), png_file("image[]", JPEG)]
    ct, body = sdk_multipart(BASE, files)
    assert body.count(b'name="image[]"') == 3
    req = await parse(ct, body, chunk)
    assert [r.data for r in req.image_refs] == [PNG, PNG2, JPEG]
    assert [r.param for r in req.image_refs] == ["image[0]", "image[1]", "image[2]"]


@pytest.mark.parametrize("chunk", CHUNK_SIZES)
async def test_sdk_mask_file(chunk: int | None) -> None:
    ct, body = sdk_multipart(BASE, [png_file("image", PNG), png_file("mask", PNG2, "m.png")])
    req = await parse(ct, body, chunk)
    assert req.mask_ref is not None
    assert (req.mask_ref.param, req.mask_ref.data) == ("mask", PNG2)
    assert req.image_refs[0].data == PNG


async def test_single_image_brackets_part_is_position_zero() -> None:
    ct, body = sdk_multipart(BASE, [png_file("image[]")])
    req = await parse(ct, body)
    assert [(r.param, r.data) for r in req.image_refs] == [("image[0]", PNG)]


@pytest.mark.parametrize("chunk", CHUNK_SIZES)
async def test_indexed_parts_are_ordered_by_index(chunk: int | None) -> None:
    body = manual(
        [
            ("prompt", "p"),
            ("image[2]", JPEG, "c.jpg"),
            ("image[0]", PNG, "a.png"),
            ("image[10]", b"ten" + PNG, "k.png"),
            ("image[1]", PNG2, "b.png"),
        ]
    )
    req = await parse(MULTIPART, body, chunk)
    assert [r.param for r in req.image_refs] == ["image[0]", "image[1]", "image[2]", "image[10]"]
    assert [r.data for r in req.image_refs] == [PNG, PNG2, JPEG, b"ten" + PNG]


@pytest.mark.parametrize("chunk", CHUNK_SIZES)
async def test_repeated_image_parts_are_kept_in_order(chunk: int | None) -> None:
    ct, body = sdk_multipart(BASE, [png_file("image", PNG), png_file("image", JPEG, "b.jpg")])
    req = await parse(ct, body, chunk)
    assert [(r.param, r.data) for r in req.image_refs] == [("image[0]", PNG), ("image[1]", JPEG)]


async def test_image_and_image_brackets_may_mix_in_arrival_order() -> None:
    body = manual([("prompt", "p"), ("image", PNG, "a"), ("image[]", JPEG, "b")])
    req = await parse(MULTIPART, body)
    assert [r.data for r in req.image_refs] == [PNG, JPEG]


@pytest.mark.parametrize(
    "parts",
    [
        [("image[0]", PNG, "a"), ("image", PNG, "b")],
        [("image[]", PNG, "a"), ("image[1]", PNG, "b")],
    ],
)
async def test_indexed_and_unindexed_images_cannot_mix(parts: list[Any]) -> None:
    await bad(parse(MULTIPART, manual([("prompt", "p"), *parts])), "image", "image[N]")


async def test_duplicate_image_index() -> None:
    body = manual([("prompt", "p"), ("image[1]", PNG, "a"), ("image[01]", PNG, "b")])
    await bad(parse(MULTIPART, body), "image", "duplicate parameter 'image[1]'")


@pytest.mark.parametrize("name", ["image[x]", "image[-1]", "image[1", "image[]]", "image[1][]"])
async def test_malformed_image_names_are_unknown(name: str) -> None:
    body = manual([("prompt", "p"), (name, PNG, "a")])
    await bad(parse(MULTIPART, body), name, f"unknown parameter '{name}'")


async def test_declared_filename_and_content_type_are_ignored() -> None:
    ct, body = sdk_multipart(BASE, [("image", ("x.txt", JPEG, "application/octet-stream"))])
    req = await parse(ct, body)
    assert req.image_refs[0].data == JPEG
    # raw bytes, as `images.edit(image=b"...")` sends them (filename "upload")
    ct, body = sdk_multipart(BASE, [("image", PNG)])
    assert (await parse(ct, body)).image_refs[0].data == PNG


@pytest.mark.parametrize("chunk", [1, None])
async def test_non_bytes_chunks_are_accepted(chunk: int | None) -> None:
    ct, body = sdk_multipart(BASE, [png_file()])

    async def chunks() -> AsyncIterator[Any]:
        size = chunk or len(body)
        for i in range(0, len(body), size):
            yield bytearray(body[i : i + size])
        yield b""

    req = await parse_edit_body(ct, chunks(), LIMITS, default_model=DEFAULT_MODEL)
    assert req.image_refs[0].data == PNG


async def test_quoted_boundary_and_extra_content_type_params() -> None:
    body = manual([("prompt", "p"), ("image", PNG, "a.png")])
    req = await parse(f'multipart/form-data; charset=utf-8; boundary="{BOUNDARY}"', body)
    assert req.image_refs[0].data == PNG
    req = await parse(f"Multipart/Form-Data; boundary={BOUNDARY}", body)
    assert req.prompt == "p"


# ----------------------------------------------------------------------------- multipart: URLs


@pytest.mark.parametrize("chunk", CHUNK_SIZES)
async def test_url_text_parts_for_image_and_mask(chunk: int | None) -> None:
    data_url = "data:image/png;base64,iVBORw0KGgo="
    body = manual(
        [
            ("prompt", "p"),
            ("image", "https://example.com/a.png"),
            ("image", f" {data_url}\n"),
            ("image", "HTTP://EXAMPLE.COM/B.PNG"),
            ("mask", "https://example.com/mask.png"),
        ]
    )
    req = await parse(MULTIPART, body, chunk)
    assert [(r.param, r.url, r.data) for r in req.image_refs] == [
        ("image[0]", "https://example.com/a.png", None),
        ("image[1]", data_url, None),
        ("image[2]", "HTTP://EXAMPLE.COM/B.PNG", None),
    ]
    assert req.mask_ref is not None
    assert (req.mask_ref.url, req.mask_ref.data) == ("https://example.com/mask.png", None)


async def test_seed_form_single_url_image() -> None:
    """`curl -F model=nano-banana -F prompt=... -F image=https://...` (the seed's form)."""
    body = manual(
        [("model", "nano-banana"), ("prompt", "p"), ("image", "https://example.com/cat.webp")]
    )
    req = await parse(MULTIPART, body)
    assert req.model == "nano-banana"
    assert [(r.param, r.url) for r in req.image_refs] == [("image", "https://example.com/cat.webp")]


async def test_url_and_file_images_mix() -> None:
    body = manual([("prompt", "p"), ("image[]", PNG, "a"), ("image[]", "https://e.com/b.png")])
    req = await parse(MULTIPART, body)
    assert [(r.data, r.url) for r in req.image_refs] == [(PNG, None), (None, "https://e.com/b.png")]


@pytest.mark.parametrize("value", ["photo.png", "ftp://e.com/a.png", "/tmp/a.png"])
async def test_text_image_that_is_no_url_is_refused(value: str) -> None:
    body = manual([("prompt", "p"), ("image", value)])
    await bad(parse(MULTIPART, body), "image", "uploaded file, an http(s) URL or a data: URL")


async def test_text_mask_that_is_no_url_is_refused() -> None:
    body = manual([("prompt", "p"), ("image", PNG, "a"), ("mask", "mask.png")])
    await bad(parse(MULTIPART, body), "mask", "http(s) URL")


async def test_image_bytes_without_filename_are_an_upload() -> None:
    """Some clients omit `filename`; the bytes decide, and the media layer sniffs them."""
    body = manual([("prompt", "p"), ("image", PNG), ("mask", PNG2)])
    req = await parse(MULTIPART, body)
    assert req.image_refs[0].data == PNG
    assert req.mask_ref is not None and req.mask_ref.data == PNG2


async def test_empty_text_image_counts_as_omitted() -> None:
    body = manual([("prompt", "p"), ("image", ""), ("mask", "")])
    await bad(parse(MULTIPART, body), "image", "image is required")
    body = manual([("prompt", "p"), ("image[]", PNG, "a"), ("image[]", " "), ("mask", "")])
    req = await parse(MULTIPART, body)
    assert [r.param for r in req.image_refs] == ["image[0]"]
    assert req.mask_ref is None


@pytest.mark.parametrize("name", ["image", "mask"])
async def test_empty_file_part_is_refused(name: str) -> None:
    body = manual([("prompt", "p"), *([("image", PNG, "a")] if name == "mask" else [])])
    body = body.replace(
        f"--{BOUNDARY}--".encode(),
        f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="{name}"; filename="e.png"\r\n'
        f"\r\n\r\n--{BOUNDARY}--".encode(),
    )
    await bad(parse(MULTIPART, body), name, "empty file")


# ----------------------------------------------------------------------------- multipart: fields


@pytest.mark.parametrize(
    ("raw", "expected"),
    [("true", True), ("false", False), ("True", True), ("False", False), ("1", True), ("0", False)],
)
async def test_booleans(raw: str, expected: bool) -> None:
    ct, body = sdk_multipart({**BASE, "stream": raw}, [png_file()])
    assert (await parse(ct, body)).stream is expected


@pytest.mark.parametrize("raw", ["yes", "2", "on", "tru"])
async def test_bad_boolean(raw: str) -> None:
    ct, body = sdk_multipart({**BASE, "stream": raw}, [png_file()])
    await bad(parse(ct, body), "stream", "stream must be a boolean")


@pytest.mark.parametrize(
    ("field", "raw", "expected"),
    [("n", "3", 3), ("n", " 4 ", 4), ("output_compression", "0", 0), ("partial_images", "-1", -1)],
)
async def test_integers(field: str, raw: str, expected: int) -> None:
    ct, body = sdk_multipart({**BASE, field: raw}, [png_file()])
    assert getattr(await parse(ct, body), field) == expected


@pytest.mark.parametrize("field", ["n", "output_compression", "partial_images"])
@pytest.mark.parametrize("raw", ["two", "1.5", "1_0", "\uff11", "0x10", "--1", "1e3", "9" * 40])
async def test_bad_integers(field: str, raw: str) -> None:
    ct, body = sdk_multipart({**BASE, field: raw}, [png_file()])
    await bad(parse(ct, body), field, f"{field} must be an integer")


async def test_empty_optional_fields_are_omitted_but_size_stays_empty() -> None:
    fields = [
        "model",
        "n",
        "quality",
        "response_format",
        "background",
        "output_format",
        "output_compression",
        "input_fidelity",
        "moderation",
        "user",
        "stream",
        "partial_images",
        "callback_url",
    ]
    body = manual([("prompt", "p"), ("image", PNG, "a"), ("size", ""), *((f, "") for f in fields)])
    req = await parse(MULTIPART, body)
    assert req.size == ""
    assert req.model == DEFAULT_MODEL
    assert req.stream is False
    for f in fields:
        if f not in ("model", "stream"):
            assert getattr(req, f) is None, f
    # an omitted size is None, so the adapter can tell the two apart
    ct, body = sdk_multipart(BASE, [png_file()])
    assert (await parse(ct, body)).size is None


async def test_text_values_are_stripped_but_prompt_and_size_are_verbatim() -> None:
    ct, body = sdk_multipart(
        {"prompt": "  spaced prompt \n", "size": " auto\n", "model": " dall-e-2 "}, [png_file()]
    )
    req = await parse(ct, body)
    # A size with spaces around it is not a size: the adapter refuses it, naming `size`.
    assert (req.prompt, req.size, req.model) == ("  spaced prompt \n", " auto\n", "dall-e-2")


async def test_unicode_prompt() -> None:
    ct, body = sdk_multipart({"prompt": "ein Hut 🎩 für die Katze"}, [png_file()])
    assert (await parse(ct, body, 1)).prompt == "ein Hut 🎩 für die Katze"


@pytest.mark.parametrize("name", ["foo", "images", "mask[]", "prompt[]", "Image"])
async def test_unknown_multipart_field(name: str) -> None:
    ct, body = sdk_multipart({**BASE, name: "x"}, [png_file()])
    await bad(parse(ct, body), name, f"unknown parameter '{name}'")


async def test_unknown_file_part() -> None:
    ct, body = sdk_multipart(BASE, [png_file(), png_file("extra")])
    await bad(parse(ct, body), "extra", "unknown parameter 'extra'")


async def test_unknown_parameter_name_is_bounded_in_the_message() -> None:
    name = "x" * 500
    ct, body = sdk_multipart({**BASE, name: "v"}, [png_file()])
    err = await bad(parse(ct, body), "x" * 61 + "...")
    assert len(err.message) < 100


@pytest.mark.parametrize("field", ["n", "prompt", "model", "stream", "size"])
async def test_duplicate_scalar_field(field: str) -> None:
    body = manual([("prompt", "p"), ("image", PNG, "a"), (field, "1"), (field, "1")])
    if field == "prompt":
        body = manual([("prompt", "p"), ("image", PNG, "a"), ("prompt", "q")])
    await bad(parse(MULTIPART, body), field, f"duplicate parameter '{field}'")


async def test_duplicate_empty_scalar_is_still_a_duplicate() -> None:
    body = manual([("prompt", "p"), ("image", PNG, "a"), ("size", ""), ("size", "auto")])
    await bad(parse(MULTIPART, body), "size", "duplicate")


async def test_duplicate_mask() -> None:
    body = manual([("prompt", "p"), ("image", PNG, "a"), ("mask", PNG, "m"), ("mask", PNG, "m")])
    await bad(parse(MULTIPART, body), "mask", "duplicate parameter 'mask'")


async def test_text_field_sent_as_file_is_read_as_text() -> None:
    """`curl -F prompt=@prompt.txt` sends the prompt as a file part."""
    body = manual([("prompt", "from a file", "prompt.txt"), ("image", PNG, "a")])
    assert (await parse(MULTIPART, body)).prompt == "from a file"


async def test_non_utf8_field() -> None:
    body = manual([("prompt", b"caf\xe9"), ("image", PNG, "a")])
    await bad(parse(MULTIPART, body), "prompt", "UTF-8")


# ----------------------------------------------------------------------------- both: prompt/model


@pytest.mark.parametrize("kind", ["multipart", "json"])
@pytest.mark.parametrize(
    ("prompt", "match"),
    [(None, "prompt is required"), ("", "must not be empty"), ("  \n\t", "must not be empty")],
)
async def test_prompt_required(kind: str, prompt: str | None, match: str) -> None:
    if kind == "json":
        doc: dict[str, Any] = {"image": "https://e.com/a.png"}
        if prompt is not None:
            doc["prompt"] = prompt
        await bad(parse_json(doc), "prompt", match)
        return
    data = {"prompt": prompt} if prompt is not None else {}
    ct, body = sdk_multipart(data, [png_file()])
    await bad(parse(ct, body), "prompt", match)


@pytest.mark.parametrize("kind", ["multipart", "json"])
async def test_prompt_length(kind: str) -> None:
    async def run(prompt: str) -> EditRequest:
        if kind == "json":
            return await parse_json({"prompt": prompt, "image": "https://e.com/a.png"})
        ct, body = sdk_multipart({"prompt": prompt}, [png_file()])
        return await parse(ct, body)

    assert len((await run("é" * 32000)).prompt) == 32000
    await bad(run("a" * 32001), "prompt", "at most 32000 characters")


async def test_huge_prompt_is_refused_while_reading() -> None:
    body = manual([("prompt", "a" * 200_000), ("image", PNG, "a")])
    consumed = 0

    async def chunks() -> AsyncIterator[bytes]:
        nonlocal consumed
        for i in range(0, len(body), 1000):
            consumed += 1000
            yield body[i : i + 1000]

    with pytest.raises(GatewayError) as info:
        await parse_edit_body(MULTIPART, chunks(), LIMITS, default_model=DEFAULT_MODEL)
    assert (info.value.code, info.value.param) == ("bad_request", "prompt")
    assert consumed <= 130_000


@pytest.mark.parametrize("kind", ["multipart", "json"])
async def test_model_defaults(kind: str) -> None:
    if kind == "json":
        req = await parse_json({"prompt": "p", "image": "https://e.com/a.png", "model": None})
    else:
        ct, body = sdk_multipart(BASE, [png_file()])
        req = await parse(ct, body)
    assert req.model == DEFAULT_MODEL


@pytest.mark.parametrize("kind", ["multipart", "json"])
async def test_image_required(kind: str) -> None:
    if kind == "json":
        await bad(parse_json({"prompt": "p"}), "image", "image is required")
    else:
        body = manual([("prompt", "p"), ("model", "gpt-image-1")])
        await bad(parse(MULTIPART, body), "image", "image is required")


# ----------------------------------------------------------------------------- limits


async def test_max_images() -> None:
    limits = small_limits(max_images=3)
    files = [png_file("image[]") for _ in range(3)]
    ct, body = sdk_multipart(BASE, files)
    assert len((await parse(ct, body, limits=limits)).image_refs) == 3
    ct, body = sdk_multipart(BASE, [*files, png_file("image[]")])
    await bad(parse(ct, body, limits=limits), "image", "at most 3 images")


async def test_sixteen_images_by_default_seventeen_refused() -> None:
    files = [png_file("image[]") for _ in range(16)]
    ct, body = sdk_multipart(BASE, files)
    assert len((await parse(ct, body)).image_refs) == 16
    ct, body = sdk_multipart(BASE, [*files, png_file("image[]")])
    await bad(parse(ct, body), "image", "at most 16 images")
    # URL text parts count too; the mask does not
    body = manual([("prompt", "p"), *(("image", "https://e.com/a") for _ in range(17))])
    await bad(parse(MULTIPART, body), "image", "at most 16 images")
    urls = [("image", "https://e.com/a") for _ in range(16)]
    body = manual([("prompt", "p"), *urls, ("mask", "https://e.com/m")])
    assert (await parse(MULTIPART, body)).mask_ref is not None


@pytest.mark.parametrize("chunk", CHUNK_SIZES)
async def test_file_over_image_limit_names_the_param(chunk: int | None) -> None:
    limits = small_limits(max_image_bytes=1024)
    ok = b"\x89PNG" + bytes(1020)
    ct, body = sdk_multipart(BASE, [png_file("image[]", ok), png_file("image[]", ok + b"!")])
    err = await expect_error(parse(ct, body, chunk, limits), "payload_too_large", 413, "image[1]")
    assert "1024" in err.message
    ct, body = sdk_multipart(BASE, [png_file("image", ok + b"!")])
    await expect_error(parse(ct, body, chunk, limits), "payload_too_large", 413, "image")
    ct, body = sdk_multipart(BASE, [png_file("image", ok), png_file("mask", ok + b"!")])
    await expect_error(parse(ct, body, chunk, limits), "payload_too_large", 413, "mask")


async def test_unnamed_image_bytes_over_image_limit() -> None:
    limits = small_limits(max_image_bytes=1024)
    body = manual([("prompt", "p"), ("image", b"\x89PNG\x00" + bytes(1100))])
    await expect_error(parse(MULTIPART, body, limits=limits), "payload_too_large", 413, "image")


async def test_url_text_part_is_capped() -> None:
    limits = small_limits(max_image_bytes=1024)
    body = manual([("prompt", "p"), ("image", "data:image/png;base64," + "A" * 5000)])
    await expect_error(parse(MULTIPART, body, limits=limits), "payload_too_large", 413, "image")


async def test_text_part_cap() -> None:
    ct, body = sdk_multipart({**BASE, "user": "u" * (64 * 1024 + 1)}, [png_file()])
    await expect_error(parse(ct, body, 7000), "payload_too_large", 413, "user")
    ct, body = sdk_multipart({**BASE, "user": "u" * (64 * 1024)}, [png_file()])
    assert len((await parse(ct, body)).user or "") == 64 * 1024


@pytest.mark.parametrize("chunk", [7, 64 * 1024, None])
async def test_body_limit_stops_reading(chunk: int | None) -> None:
    limits = small_limits(max_body_bytes=4096)
    ct, body = sdk_multipart(BASE, [png_file("image[]", bytes(3000)) for _ in range(3)])
    consumed = 0

    async def chunks() -> AsyncIterator[bytes]:
        nonlocal consumed
        async for piece in stream(body, chunk):
            consumed += len(piece)
            yield piece

    with pytest.raises(GatewayError) as info:
        await parse_edit_body(ct, chunks(), limits, default_model=DEFAULT_MODEL)
    assert (info.value.code, info.value.status, info.value.param) == (
        "payload_too_large",
        413,
        None,
    )
    assert consumed <= 4096 + (chunk or len(body))


async def test_body_exactly_at_limit_is_fine() -> None:
    ct, body = sdk_multipart(BASE, [png_file()])
    limits = small_limits(max_body_bytes=max(len(body), 1024))
    assert (await parse(ct, body, 100, limits)).image_refs[0].data == PNG


# ----------------------------------------------------------------------------- malformed


@pytest.mark.parametrize(
    "content_type",
    [
        None,
        "",
        "text/plain",
        "application/x-www-form-urlencoded",
        "multipart/mixed; boundary=x",
        "application/jsonx",
    ],
)
async def test_other_content_types(content_type: str | None) -> None:
    await bad(parse(content_type, b'{"prompt": "p"}'), None, CONTENT_TYPE_MESSAGE)


@pytest.mark.parametrize("content_type", ["multipart/form-data", "multipart/form-data; boundary="])
async def test_missing_boundary(content_type: str) -> None:
    _, body = sdk_multipart(BASE, [png_file()])
    await bad(parse(content_type, body), None, "boundary")


async def test_overlong_boundary() -> None:
    await bad(parse("multipart/form-data; boundary=" + "b" * 300, b"--x"), None, "boundary")


@pytest.mark.parametrize("chunk", CHUNK_SIZES)
async def test_truncated_bodies(chunk: int | None) -> None:
    ct, body = sdk_multipart(BASE, [png_file()])
    for cut in (0, 1, 20, len(body) // 2, len(body) - 10, len(body) - 3):
        await bad(parse(ct, body[:cut], chunk), None, "malformed multipart body")


@pytest.mark.parametrize(
    "body",
    [
        b"garbage",
        b"--wrong\r\nContent-Disposition: form-data; name=prompt\r\n\r\np\r\n--wrong--\r\n",
        f"--{BOUNDARY}\r\nbad header line\r\n\r\nv\r\n--{BOUNDARY}--\r\n".encode(),
        f"--{BOUNDARY}XX\r\n".encode(),
    ],
)
async def test_malformed_multipart(body: bytes) -> None:
    await bad(parse(MULTIPART, body), None, "malformed multipart body")


async def test_part_without_disposition_or_name() -> None:
    body = f"--{BOUNDARY}\r\nContent-Type: text/plain\r\n\r\nv\r\n--{BOUNDARY}--\r\n".encode()
    await bad(parse(MULTIPART, body), None, "Content-Disposition")
    text = f"--{BOUNDARY}\r\nContent-Disposition: form-data\r\n\r\nv\r\n--{BOUNDARY}--\r\n"
    await bad(parse(MULTIPART, text.encode()), None, "no name")


async def test_empty_multipart_message() -> None:
    await bad(parse(MULTIPART, f"--{BOUNDARY}--\r\n".encode()), "prompt", "prompt is required")


async def test_epilogue_after_closing_boundary_is_ignored() -> None:
    ct, body = sdk_multipart(BASE, [png_file()])
    assert (await parse(ct, body + b"\r\ntrailing junk", 7)).image_refs[0].data == PNG


# ----------------------------------------------------------------------------- JSON


@pytest.mark.parametrize("chunk", [1, 7, None])
async def test_json_full(chunk: int | None) -> None:
    doc = {
        "model": "gpt-image-1.5",
        "prompt": "p",
        "image": "https://example.com/a.png",
        "mask": "https://example.com/m.png",
        "n": 2,
        "size": "1536x1024",
        "quality": "low",
        "response_format": "url",
        "background": "opaque",
        "output_format": "jpeg",
        "output_compression": 50,
        "input_fidelity": "low",
        "moderation": "auto",
        "user": "u",
        "stream": True,
        "partial_images": 1,
        "callback_url": "https://example.com/cb",
    }
    req = await parse_json(doc, chunk)
    assert req.body_kind == "json"
    assert [(r.param, r.url, r.data) for r in req.image_refs] == [
        ("image", "https://example.com/a.png", None)
    ]
    assert req.mask_ref is not None
    assert (req.mask_ref.param, req.mask_ref.url) == ("mask", "https://example.com/m.png")
    assert (req.n, req.output_compression, req.partial_images, req.stream) == (2, 50, 1, True)
    assert (req.size, req.quality, req.response_format, req.background) == (
        "1536x1024",
        "low",
        "url",
        "opaque",
    )
    assert (req.output_format, req.input_fidelity, req.moderation, req.user) == (
        "jpeg",
        "low",
        "auto",
        "u",
    )
    assert req.callback_url == "https://example.com/cb"


async def test_json_with_charset() -> None:
    body = orjson.dumps({"prompt": "p", "image": "https://e.com/a.png"})
    req = await parse("application/json; charset=utf-8", body)
    assert req.body_kind == "json"


async def test_json_image_array_and_data_url() -> None:
    data_url = "data:image/webp;base64,UklGRg=="
    req = await parse_json({"prompt": "p", "image": ["https://e.com/a.png", data_url]})
    assert [(r.param, r.url) for r in req.image_refs] == [
        ("image[0]", "https://e.com/a.png"),
        ("image[1]", data_url),
    ]


async def test_json_openai_images_form() -> None:
    doc = {
        "prompt": "p",
        "images": [{"image_url": "https://e.com/a.png"}, {"image_url": "data:image/png;base64,AA"}],
        "mask": {"image_url": "https://e.com/m.png"},
    }
    req = await parse_json(doc)
    assert [(r.param, r.url) for r in req.image_refs] == [
        ("images[0]", "https://e.com/a.png"),
        ("images[1]", "data:image/png;base64,AA"),
    ]
    assert req.mask_ref is not None and req.mask_ref.url == "https://e.com/m.png"


@pytest.mark.parametrize(
    ("doc", "param"),
    [
        ({"images": [{"file_id": "file-1"}]}, "images[0]"),
        ({"images": [{"image_url": "https://e.com/a"}, {"file_id": "f"}]}, "images[1]"),
        ({"images": [{"image_url": "https://e.com/a", "file_id": "f"}]}, "images[0]"),
        ({"image": [{"file_id": "f"}]}, "image[0]"),
        ({"image": {"file_id": "f"}}, "image"),
        ({"image": "https://e.com/a", "mask": {"file_id": "f"}}, "mask"),
    ],
)
async def test_json_file_id_is_not_implemented(doc: dict[str, Any], param: str) -> None:
    err = await expect_error(parse_json({"prompt": "p", **doc}), "api_not_implemented", 400, param)
    assert err.message == "file_id references are not supported; send image_url"


async def test_json_image_and_images_together() -> None:
    doc = {"prompt": "p", "image": "https://e.com/a", "images": [{"image_url": "https://e.com/b"}]}
    await bad(parse_json(doc), "images", "either image or images")
    # null means "not given"
    req = await parse_json(
        {"prompt": "p", "image": None, "images": [{"image_url": "https://e.com/b"}]}
    )
    assert req.image_refs[0].url == "https://e.com/b"


@pytest.mark.parametrize(
    ("doc", "param", "match"),
    [
        ({"image": []}, "image", "at least one image"),
        ({"images": []}, "images", "at least one image"),
        ({"image": "photo.png"}, "image", "http(s) URL or a data: URL"),
        ({"image": "ftp://e.com/a.png"}, "image", "http(s) URL"),
        ({"image": ["https://e.com/a", 3]}, "image[1]", "image URL string"),
        ({"image": 5}, "image", "image URL string"),
        ({"images": "https://e.com/a"}, "images", "array"),
        ({"images": [{"image_url": 3}]}, "images[0]", "image_url must be a string"),
        (
            {"images": [{"image_url": "https://e.com/a", "detail": "high"}]},
            "images[0].detail",
            None,
        ),
        ({"images": [{}]}, "images[0]", "image_url must be a string"),
        ({"image": "https://e.com/a", "mask": ["https://e.com/m"]}, "mask", None),
        ({"image": "https://e.com/a", "mask": "m.png"}, "mask", "http(s) URL"),
    ],
)
async def test_json_bad_images(doc: dict[str, Any], param: str, match: str | None) -> None:
    await bad(parse_json({"prompt": "p", **doc}), param, match)


async def test_json_too_many_images() -> None:
    urls = [f"https://e.com/{i}.png" for i in range(17)]
    await bad(parse_json({"prompt": "p", "image": urls}), "image", "at most 16 images")
    images = [{"image_url": u} for u in urls]
    await bad(parse_json({"prompt": "p", "images": images}), "images", "at most 16 images")
    assert len((await parse_json({"prompt": "p", "image": urls[:16]})).image_refs) == 16


@pytest.mark.parametrize(
    ("field", "value", "match"),
    [
        ("n", "2", "n must be an integer"),
        ("n", True, "n must be an integer"),
        ("n", 1.0, "n must be an integer"),
        ("output_compression", "80", "must be an integer"),
        ("partial_images", [1], "must be an integer"),
        ("stream", "true", "stream must be a boolean"),
        ("stream", 1, "stream must be a boolean"),
        ("size", 1024, "size must be a string"),
        ("model", ["a"], "model must be a string"),
        ("prompt", 5, "prompt must be a string"),
        ("user", {"id": 1}, "user must be a string"),
    ],
)
async def test_json_strict_types(field: str, value: Any, match: str) -> None:
    doc = {"prompt": "p", "image": "https://e.com/a", field: value}
    await bad(parse_json(doc), field, match)


async def test_json_nulls_and_empty_strings() -> None:
    doc = {
        "prompt": "p",
        "image": "https://e.com/a",
        "mask": None,
        "n": None,
        "stream": None,
        "quality": "",
        "size": "",
        "model": "",
    }
    req = await parse_json(doc)
    assert (req.n, req.stream, req.quality, req.size, req.model, req.mask_ref) == (
        None,
        False,
        None,
        "",
        DEFAULT_MODEL,
        None,
    )


@pytest.mark.parametrize("key", ["foo", "Image", "image_url", "file_id", "response"])
async def test_json_unknown_field(key: str) -> None:
    doc = {"prompt": "p", "image": "https://e.com/a", key: 1}
    await bad(parse_json(doc), key, f"unknown parameter '{key}'")


@pytest.mark.parametrize(
    "body", [b"", b"{", b"{'prompt': 'p'}", b'{"prompt": "p",}', b"\xff\xfe{}", b"nul"]
)
async def test_malformed_json(body: bytes) -> None:
    await bad(parse(JSON, body), None, "malformed JSON body")


@pytest.mark.parametrize("body", [b"[]", b'"p"', b"1", b"null"])
async def test_json_top_level_must_be_object(body: bytes) -> None:
    await bad(parse(JSON, body), None, "must be an object")


async def test_json_limit() -> None:
    limits = small_limits(max_json_bytes=2048)
    body = orjson.dumps({"prompt": "p" * 3000, "image": "https://e.com/a"})
    consumed = 0

    async def chunks() -> AsyncIterator[bytes]:
        nonlocal consumed
        for i in range(0, len(body), 512):
            consumed += 512
            yield body[i : i + 512]

    with pytest.raises(GatewayError) as info:
        await parse_edit_body(JSON, chunks(), limits, default_model=DEFAULT_MODEL)
    assert (info.value.code, info.value.status) == ("payload_too_large", 413)
    assert consumed <= 2048 + 512
    ok = orjson.dumps({"prompt": "p" * 1000, "image": "https://e.com/a"})
    assert (await parse(JSON, ok, 100, limits)).prompt == "p" * 1000


async def test_json_url_is_stripped() -> None:
    req = await parse_json({"prompt": "p", "image": "  https://e.com/a.png\n"})
    assert req.image_refs[0].url == "https://e.com/a.png"
