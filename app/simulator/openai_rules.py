"""OpenAI images/edits and images/generations request rules: structural parsing and
per-model validation.

:func:`parse_multipart` / :func:`parse_json` turn the wire format into a :class:`RawEdit`
(unknown, duplicate or mistyped parameters are refused here), and :func:`validate` applies the
per-model rules and inspects every image by its bytes. Messages and codes follow what the real
API sends (reference/upstream-protocols.md sections 1 and 2c), so a gateway test can assert
the exact refusal it would get from OpenAI.
"""

from __future__ import annotations

import hashlib
import math
import re
from dataclasses import dataclass, field
from typing import Any

import httpx

from app.simulator.errors import SimError, bad_request, openai_error
from app.simulator.imaging import (
    FORMAT_BY_MIME,
    ImageDecodeError,
    ImageInfo,
    decode_data_url,
    inspect_image,
)
from app.simulator.multipart import Part

DEFAULT_MODEL = "gpt-image-1.5"
DALLE2 = "dall-e-2"
GPT_MODELS = (
    "gpt-image-1.5",
    "gpt-image-2",
    "gpt-image-2-2026-04-21",
    "gpt-image-1",
    "gpt-image-1-mini",
    "chatgpt-image-latest",
)
ALL_MODELS = (*GPT_MODELS[:3], DALLE2, *GPT_MODELS[3:])
FLEX_SIZE_MODELS = frozenset({"gpt-image-2", "gpt-image-2-2026-04-21"})
NO_INPUT_FIDELITY = frozenset({"gpt-image-1-mini", "gpt-image-2", "gpt-image-2-2026-04-21"})
#: OpenAI models that exist but cannot edit images: 400 invalid_value rather than 404
_OTHER_MODEL_PREFIXES = ("gpt-", "dall-e", "o1", "o3", "o4", "chatgpt-", "sora", "tts-", "whisper")

GPT_SIZES = ("1024x1024", "1024x1536", "1536x1024", "auto")
GPT2_ALIASES = frozenset({"1254x1254", "1672x941", "941x1672"})
DALLE2_SIZES = ("256x256", "512x512", "1024x1024")
IMAGE_MIMES = ("image/jpeg", "image/png", "image/webp")

MULTIPART_FIELDS = frozenset(
    {
        "model",
        "prompt",
        "n",
        "size",
        "quality",
        "response_format",
        "background",
        "output_format",
        "output_compression",
        "input_fidelity",
        "stream",
        "partial_images",
        "user",
        "moderation",
    }
)
JSON_FIELDS = frozenset(
    {
        "model",
        "images",
        "mask",
        "prompt",
        "n",
        "quality",
        "input_fidelity",
        "size",
        "user",
        "output_format",
        "output_compression",
        "moderation",
        "background",
        "stream",
        "partial_images",
    }
)
#: `CreateImageRequest` (generations): JSON only, no images
GENERATION_FIELDS = frozenset(
    {
        "model",
        "prompt",
        "n",
        "quality",
        "response_format",
        "output_format",
        "output_compression",
        "stream",
        "partial_images",
        "size",
        "moderation",
        "background",
        "style",
        "user",
    }
)
#: fields only GPT image models understand; sent to dall-e-2 they are refused
GPT_ONLY_FIELDS = (
    "background",
    "output_format",
    "output_compression",
    "input_fidelity",
    "moderation",
    "partial_images",
)
_IMAGE_ARRAY = re.compile(r"image\[(\d*)\]")
_SIZE = re.compile(r"(\d+)x(\d+)")

GPT_MAX_BYTES = 50 * 1024 * 1024
DALLE2_MAX_BYTES = 4 * 1024 * 1024
MASK_MAX_BYTES = 4 * 1024 * 1024
URL_FETCH_TIMEOUT_S = 15.0


@dataclass(slots=True)
class InputImage:
    """One uploaded (or fetched / data-URL) image before and after inspection."""

    param: str
    filename: str | None
    declared_type: str | None
    data: bytes
    info: ImageInfo | None = None
    sha256: str | None = None

    def describe(self, name: str) -> dict[str, Any]:
        """The recording's view of this file; hashes once and reads only the image header."""
        if self.sha256 is None:
            self.sha256 = hashlib.sha256(self.data).hexdigest()
        info = self.info
        if info is None:
            try:
                info = inspect_image(self.data, verify=False, sha256=self.sha256)
            except ImageDecodeError:
                info = None
        return {
            "name": name,
            "filename": self.filename,
            "content_type": self.declared_type,
            "size": len(self.data),
            "sha256": self.sha256,
            "width": info.width if info else None,
            "height": info.height if info else None,
            "format": info.format if info else None,
        }


@dataclass(slots=True)
class RawEdit:
    """The request after structural parsing: values are strings (multipart) or JSON values."""

    form: str  # "multipart" | "json"
    values: dict[str, Any]
    images: list[InputImage]
    mask: InputImage | None = None
    #: what the files were called on the wire, for recording ("image", "image[]", ...)
    image_names: list[str] = field(default_factory=list)


@dataclass(slots=True)
class Edit:
    """A fully validated edit."""

    model: str
    prompt: str
    n: int
    size: str
    width: int
    height: int
    quality: str
    background: str
    output_format: str
    compression: int | None
    stream: bool
    partial_images: int
    response_format: str
    images: list[InputImage]
    mask: InputImage | None
    input_fidelity: str | None = None
    operation: str = "edit"  # "generate": /images/generations, no input images

    @property
    def is_gpt(self) -> bool:
        return self.model != DALLE2


# --------------------------------------------------------------------------------------------
# parsing
# --------------------------------------------------------------------------------------------


def _duplicate(name: str) -> SimError:
    return bad_request(
        f"Duplicate parameter: '{name}'. You provided multiple values for this parameter, "
        "whereas only one is allowed. If you are trying to provide a list of values, use the "
        f"array syntax instead e.g. '{name}[]=<value>'.",
        param=name,
        code="duplicate_parameter",
    )


def _unknown(name: str) -> SimError:
    return bad_request(f"Unknown parameter: '{name}'.", param=name, code="unknown_parameter")


def _invalid_type(name: str, expected: str, got: str) -> SimError:
    return bad_request(
        f"Invalid type for '{name}': expected {expected}, but got {got} instead.",
        param=name,
        code="invalid_type",
    )


def parse_multipart(parts: list[Part]) -> RawEdit:
    """Structural checks on multipart parts, in wire order."""
    values: dict[str, Any] = {}
    scalar_images: list[Part] = []
    array_images: list[Part] = []
    masks: list[Part] = []
    for part in parts:
        name = part.name
        if name == "image" or _IMAGE_ARRAY.fullmatch(name) or name == "mask":
            if not part.is_file:
                if name == "mask":
                    raise _invalid_type("mask", "a file", "a string")
                raise _invalid_type("image", "one of an array of files or file", "a string")
            if name == "image":
                scalar_images.append(part)
            elif name == "mask":
                masks.append(part)
            else:
                array_images.append(part)
        elif name in MULTIPART_FIELDS:
            if part.is_file:
                raise _invalid_type(name, "a string", "a file")
            if name in values:
                raise _duplicate(name)
            values[name] = part.text()
        else:
            raise _unknown(name)
    if len(scalar_images) > 1 or (scalar_images and array_images):
        raise _duplicate("image")
    if len(masks) > 1:
        raise _duplicate("mask")
    image_parts = scalar_images or array_images
    images = [
        InputImage(
            param="image",
            filename=p.filename,
            declared_type=p.content_type or "application/octet-stream",
            data=p.data,
        )
        for p in image_parts
    ]
    mask = None
    if masks:
        m = masks[0]
        mask = InputImage("mask", m.filename, m.content_type or "application/octet-stream", m.data)
    return RawEdit("multipart", values, images, mask, [p.name for p in image_parts])


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    return "an object"


async def _image_ref(param: str, ref: Any) -> InputImage:
    """Resolve a JSON `ImageRefParam` (`{"image_url": ...}` or `{"file_id": ...}`)."""
    if not isinstance(ref, dict):
        raise _invalid_type(param, "an object", _json_type(ref))
    for key in ref:
        if key not in ("image_url", "file_id"):
            raise _unknown(f"{param}.{key}")
    if ("image_url" in ref) == ("file_id" in ref):
        raise bad_request(
            f"Invalid '{param}': exactly one of 'image_url' or 'file_id' must be provided.",
            param=param,
            code="invalid_value",
        )
    if "file_id" in ref:
        file_id = ref["file_id"]
        raise openai_error(404, f"No such File object: {file_id}", param=f"{param}.file_id")
    url = ref["image_url"]
    url_param = f"{param}.image_url"
    if not isinstance(url, str):
        raise _invalid_type(url_param, "a string", _json_type(url))
    if len(url) > 20_971_520:
        raise bad_request(
            f"Invalid '{url_param}': string too long. Expected a string with maximum length "
            f"20971520, but got a string with length {len(url)} instead.",
            param=url_param,
            code="string_above_max_length",
        )
    if url.startswith("data:"):
        try:
            mime, data = decode_data_url(url)
        except ValueError:
            raise bad_request(
                f"Invalid '{url_param}': the data URL could not be decoded as base64 image data.",
                param=url_param,
                code="invalid_image_url",
            ) from None
        return InputImage(param, None, mime, data)
    if url.startswith(("http://", "https://")):
        return InputImage(param, url.rsplit("/", 1)[-1] or None, None, await _fetch(url, url_param))
    raise bad_request(
        f"Invalid '{url_param}': Expected a valid URL, but got a value with an invalid format.",
        param=url_param,
        code="invalid_value",
    )


async def _fetch(url: str, param: str) -> bytes:
    """Download an `image_url` as the real API would (no private-network guard: it's a sim)."""
    error = bad_request(f"Error while downloading {url}.", param=param, code="invalid_image_url")
    try:
        async with (
            httpx.AsyncClient(timeout=URL_FETCH_TIMEOUT_S, follow_redirects=True) as client,
            client.stream("GET", url) as response,
        ):
            if response.status_code != 200:
                raise error
            chunks: list[bytes] = []
            total = 0
            async for chunk in response.aiter_bytes():
                total += len(chunk)
                if total > GPT_MAX_BYTES:
                    raise error
                chunks.append(chunk)
            return b"".join(chunks)
    except httpx.HTTPError:
        raise error from None


async def parse_json(body: Any) -> RawEdit:
    """Structural checks on the JSON body (`EditImageBodyJsonParam`)."""
    if not isinstance(body, dict):
        raise bad_request(
            "We could not parse the JSON body of your request. (HINT: This likely means you "
            "aren't using your HTTP library correctly. The OpenAI API expects a JSON payload, "
            "but what was sent was not valid JSON.)"
        )
    for key in body:
        if key not in JSON_FIELDS:
            raise _unknown(key)
    values = {k: v for k, v in body.items() if v is not None and k not in ("images", "mask")}
    refs = body.get("images")
    images: list[InputImage] = []
    if refs is not None:
        if not isinstance(refs, list):
            raise _invalid_type("images", "an array", _json_type(refs))
        if len(refs) > 16:
            raise bad_request(
                "Invalid 'images': array too long. Expected an array with maximum length 16, "
                f"but got an array with length {len(refs)} instead.",
                param="images",
                code="array_above_max_length",
            )
        if not refs:
            raise bad_request(
                "Invalid 'images': empty array. Expected an array with minimum length 1, but "
                "got an empty array instead.",
                param="images",
                code="empty_array",
            )
        images = [await _image_ref(f"images[{i}]", ref) for i, ref in enumerate(refs)]
    mask = None
    if body.get("mask") is not None:
        mask = await _image_ref("mask", body["mask"])
        mask.param = "mask"
    return RawEdit("json", values, images, mask, [f"images[{i}]" for i in range(len(images))])


def parse_generation(body: Any) -> RawEdit:
    """Structural checks on a generation body (`CreateImageRequest`): unknown keys refused."""
    if not isinstance(body, dict):
        raise bad_request(
            "We could not parse the JSON body of your request. (HINT: This likely means you "
            "aren't using your HTTP library correctly. The OpenAI API expects a JSON payload, "
            "but what was sent was not valid JSON.)"
        )
    for key in body:
        if key not in GENERATION_FIELDS:
            raise _unknown(key)
    values = {k: v for k, v in body.items() if v is not None}
    return RawEdit("json", values, [])


# --------------------------------------------------------------------------------------------
# validation
# --------------------------------------------------------------------------------------------


def _supported(values: tuple[str, ...] | list[str]) -> str:
    quoted = [f"'{v}'" for v in values]
    return ", ".join(quoted[:-1]) + f", and {quoted[-1]}" if len(quoted) > 1 else quoted[0]


def _invalid_value(name: str, value: Any, allowed: tuple[str, ...] | list[str]) -> SimError:
    return bad_request(
        f"Invalid value: '{value}'. Supported values are: {_supported(allowed)}.",
        param=name,
        code="invalid_value",
    )


def _unsupported(name: str) -> SimError:
    return bad_request(
        f"Unsupported parameter: '{name}' is not supported with this model.",
        param=name,
        code="unsupported_parameter",
    )


def _string(raw: RawEdit, name: str) -> str | None:
    value = raw.values.get(name)
    if value is None:
        return None
    if not isinstance(value, str):
        raise _invalid_type(name, "a string", _json_type(value))
    return value


def _integer(raw: RawEdit, name: str, lo: int, hi: int) -> int | None:
    value = raw.values.get(name)
    if value is None:
        return None
    if raw.form == "multipart":
        if not re.fullmatch(r"-?\d+", value.strip()):
            raise _invalid_type(name, "an integer", "a string")
        value = int(value)
    elif isinstance(value, bool) or not isinstance(value, int):
        raise _invalid_type(name, "an integer", _json_type(value))
    if value < lo:
        raise bad_request(
            f"Invalid '{name}': integer below minimum value. Expected a value >= {lo}, but got "
            f"{value} instead.",
            param=name,
            code="integer_below_min_value",
        )
    if value > hi:
        raise bad_request(
            f"Invalid '{name}': integer above maximum value. Expected a value <= {hi}, but got "
            f"{value} instead.",
            param=name,
            code="integer_above_max_value",
        )
    return int(value)


def _boolean(raw: RawEdit, name: str) -> bool | None:
    value = raw.values.get(name)
    if value is None:
        return None
    if raw.form == "multipart":
        lowered = value.strip().lower()
        if lowered not in ("true", "false"):
            raise _invalid_type(name, "a boolean", "a string")
        return lowered == "true"
    if not isinstance(value, bool):
        raise _invalid_type(name, "a boolean", _json_type(value))
    return value


def _enum(raw: RawEdit, name: str, allowed: tuple[str, ...]) -> str | None:
    value = _string(raw, name)
    if value is not None and value not in allowed:
        raise _invalid_value(name, value, allowed)
    return value


def check_model(model: str | None) -> str:
    """Resolve the model id; unknown ones are refused as OpenAI does."""
    if model is None:
        return DEFAULT_MODEL
    if model in ALL_MODELS:
        return model
    if model.startswith(_OTHER_MODEL_PREFIXES):
        raise _invalid_value("model", model, ALL_MODELS)
    raise openai_error(
        404,
        f"The model `{model}` does not exist or you do not have access to it.",
        code="model_not_found",
    )


def gpt_image2_size(size: str) -> tuple[int, int]:
    """Parse and check a gpt-image-2 `WIDTHxHEIGHT` (reference §1c); 1K aliases pass as-is."""
    match = _SIZE.fullmatch(size)
    if match is None:
        raise bad_request(
            f"Invalid size '{size}'. Size must be 'auto' or 'WIDTHxHEIGHT' (e.g. '1536x864').",
            param="size",
            code="invalid_value",
        )
    width, height = int(match.group(1)), int(match.group(2))
    if size in GPT2_ALIASES:
        return width, height
    rule = None
    if width == 0 or height == 0 or width % 16 or height % 16:
        rule = "Width and height must both be multiples of 16."
    elif max(width, height) > 3840:
        rule = "The longest edge must be at most 3840 pixels."
    elif max(width, height) > 3 * min(width, height):
        rule = "The aspect ratio must be between 1:3 and 3:1."
    elif width * height < 655_360:
        rule = "The total number of pixels must be at least 655,360."
    elif width * height > 8_294_400:
        rule = "The total number of pixels must be at most 8,294,400 (3840x2160)."
    if rule:
        raise bad_request(f"Invalid size '{size}'. {rule}", param="size", code="invalid_value")
    return width, height


def auto_size(info: ImageInfo | None) -> tuple[int, int]:
    """`auto`: the standard size whose aspect is closest to the first input's."""
    if info is None:
        return 1024, 1024
    aspect = info.width / info.height
    options = ((1024, 1024), (1536, 1024), (1024, 1536))
    return min(options, key=lambda wh: abs(math.log(aspect * wh[1] / wh[0])))


def _mime_error(param: str, mime: str, dalle: bool) -> SimError:
    formats = "'image/png'" if dalle else "'image/jpeg', 'image/png', and 'image/webp'"
    return bad_request(
        f"Invalid file '{param}': unsupported mimetype ('{mime}'). Supported file formats are "
        f"{formats}.",
        param=param,
        code="unsupported_file_mimetype",
    )


def _inspect(image: InputImage, index: int, *, dalle: bool) -> ImageInfo:
    """Check the declared type, the size, and that the bytes really are that image type."""
    allowed = ("image/png",) if dalle else IMAGE_MIMES
    declared = image.declared_type
    if declared is not None and declared not in allowed:
        raise _mime_error(image.param, declared, dalle)
    limit = DALLE2_MAX_BYTES if dalle else GPT_MAX_BYTES
    if len(image.data) >= limit:
        if dalle:
            raise bad_request("Uploaded image must be a PNG and less than 4 MB.", param=image.param)
        raise bad_request(
            f"Invalid file '{image.param}': file too large ({len(image.data)} bytes). Maximum "
            "size is 50 MB.",
            param=image.param,
            code="file_too_large",
        )
    try:
        info = inspect_image(image.data, sha256=image.sha256)
    except ImageDecodeError:
        raise bad_request(
            f"Invalid image file or mode for image {index + 1}, please check your image file.",
            param=image.param,
            code="invalid_image_file",
        ) from None
    if info.mime not in allowed or (
        declared is not None and FORMAT_BY_MIME[declared] != info.format
    ):
        shown = declared or info.mime
        raise bad_request(
            f"Invalid file '{image.param}': the file content is {info.mime}, which does not "
            f"match its declared mimetype ('{shown}').",
            param=image.param,
            code="invalid_image_format",
        )
    image.info = info
    return info


def _check_mask(mask: InputImage, first: ImageInfo, *, dalle: bool) -> None:
    if mask.declared_type is not None and mask.declared_type != "image/png":
        raise _mime_error("mask", mask.declared_type, True)
    if len(mask.data) >= MASK_MAX_BYTES:
        raise bad_request("Invalid 'mask': the mask must be less than 4 MB.", param="mask")
    try:
        info = inspect_image(mask.data, sha256=mask.sha256)
    except ImageDecodeError:
        raise bad_request(
            "Invalid mask image file, please check your mask file.",
            param="mask",
            code="invalid_image_file",
        ) from None
    mask.info = info
    if info.format != "png":
        raise _mime_error("mask", info.mime, True)
    if (info.width, info.height) != (first.width, first.height):
        raise bad_request(
            f"Invalid mask image: the mask ({info.width}x{info.height}) must have the same "
            f"dimensions as the image ({first.width}x{first.height}).",
            param="mask",
            code="invalid_image_dimensions",
        )
    if not info.has_alpha and info.mode != "L":
        if dalle:
            raise bad_request(
                f"Invalid mask image - format must be in ['RGBA', 'LA', 'L'], got {info.mode}."
            )
        raise bad_request(
            "Invalid mask image: the mask must contain an alpha channel.",
            param="mask",
            code="invalid_image_format",
        )


def validate(raw: RawEdit, *, dalle2_require_alpha: bool = True, generation: bool = False) -> Edit:
    """Per-model rules; inspects every image (CPU: call it in a worker thread).

    `generation`: the /images/generations rules -- no images, a missing model is dall-e-2 (the
    API's documented default), `style` is dall-e-3's alone."""
    given_model = _string(raw, "model")
    model = DALLE2 if generation and given_model is None else check_model(given_model)
    dalle = model == DALLE2
    if generation and raw.values.get("style") is not None:
        raise _unsupported("style")
    if dalle and raw.form == "json" and not generation:
        raise bad_request(
            "Invalid value: 'dall-e-2'. JSON image edits support GPT image models only; "
            "use multipart/form-data for dall-e-2.",
            param="model",
            code="invalid_value",
        )
    image_param = "images" if raw.form == "json" else "image"
    prompt = _string(raw, "prompt")
    if prompt is None:
        raise bad_request(
            "Missing required parameter: 'prompt'.",
            param="prompt",
            code="missing_required_parameter",
        )
    if not prompt:
        raise bad_request(
            "Invalid 'prompt': empty string. Expected a string with minimum length 1, but got "
            "an empty string instead.",
            param="prompt",
            code="empty_string",
        )
    max_prompt = 1000 if dalle else 32000
    if len(prompt) > max_prompt:
        raise bad_request(
            f"Invalid 'prompt': string too long. Expected a string with maximum length "
            f"{max_prompt}, but got a string with length {len(prompt)} instead.",
            param="prompt",
            code="string_above_max_length",
        )
    if not raw.images and not generation:
        raise bad_request(
            f"Missing required parameter: '{image_param}'.",
            param=image_param,
            code="missing_required_parameter",
        )
    if dalle and len(raw.images) > 1:
        raise bad_request(
            f"Invalid 'image': dall-e-2 supports exactly one image, but got {len(raw.images)}.",
            param="image",
            code="invalid_value",
        )
    if len(raw.images) > 16:
        raise bad_request(
            "Invalid 'image': array too long. Expected an array with maximum length 16, but got "
            f"an array with length {len(raw.images)} instead.",
            param="image",
            code="array_above_max_length",
        )
    n = _integer(raw, "n", 1, 10) or 1
    stream = _boolean(raw, "stream") or False

    if dalle:
        for name in GPT_ONLY_FIELDS:
            if raw.values.get(name) is not None:
                raise _unsupported(name)
        if stream:
            raise bad_request(
                "Streaming is not supported for dall-e-2.", param="stream", code="invalid_value"
            )
        size = _enum(raw, "size", DALLE2_SIZES) or "1024x1024"
        quality = _enum(raw, "quality", ("standard", "auto")) or "standard"
        response_format = _enum(raw, "response_format", ("url", "b64_json")) or "url"
        width = height = int(size.split("x")[0])
        background, output_format, compression, partials, fidelity = "opaque", "png", None, 0, None
    else:
        if raw.values.get("response_format") is not None:
            raise _unknown("response_format")
        quality = _enum(raw, "quality", ("low", "medium", "high", "auto")) or "auto"
        background = _enum(raw, "background", ("transparent", "opaque", "auto")) or "auto"
        output_format = _enum(raw, "output_format", ("png", "jpeg", "webp")) or "png"
        compression = _integer(raw, "output_compression", 0, 100)
        partials = _integer(raw, "partial_images", 0, 3) or 0
        _enum(raw, "moderation", ("low", "auto"))
        fidelity = _enum(raw, "input_fidelity", ("high", "low"))
        if fidelity is not None and model in NO_INPUT_FIDELITY:
            raise _unsupported("input_fidelity")
        if background == "transparent" and output_format == "jpeg":
            raise bad_request(
                "Transparent background is not supported with output_format 'jpeg'; use 'png' "
                "or 'webp'.",
                param="background",
                code="invalid_value",
            )
        size = _string(raw, "size") or "auto"
        response_format = "b64_json"
        width = height = 0
        if size != "auto":
            if model in FLEX_SIZE_MODELS:
                width, height = gpt_image2_size(size)
            elif size not in GPT_SIZES:
                raise _invalid_value("size", size, GPT_SIZES)
            else:
                width, height = (int(v) for v in size.split("x"))
    _string(raw, "user")

    infos = [_inspect(image, i, dalle=dalle) for i, image in enumerate(raw.images)]
    first = infos[0] if infos else None
    if first is not None and dalle:
        if first.width != first.height:
            raise bad_request(
                f"Invalid input image - image must be square, got {first.width}x{first.height}.",
                param="image",
            )
        if dalle2_require_alpha and raw.mask is None and not first.has_alpha and first.mode != "L":
            raise bad_request(
                f"Invalid input image - format must be in ['RGBA', 'LA', 'L'], got {first.mode}."
            )
    if raw.mask is not None and first is not None:
        _check_mask(raw.mask, first, dalle=dalle)
    if width == 0:
        width, height = auto_size(first)
    return Edit(
        model=model,
        prompt=prompt,
        n=n,
        size=size,
        width=width,
        height=height,
        quality=quality,
        background=background,
        output_format=output_format,
        compression=compression if output_format in ("jpeg", "webp") else None,
        stream=stream,
        partial_images=partials,
        response_format=response_format,
        images=raw.images,
        mask=raw.mask,
        input_fidelity=fidelity,
        operation="generate" if generation else "edit",
    )
