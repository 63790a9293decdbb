"""Helpers shared by the adapters: field checks, upstream-error mapping, OpenAI encoding/decoding.

The gateway answers in OpenAI's error vocabulary whatever the upstream, so the status → gateway
error mapping lives here and the Gemini adapter reuses it with its own message extraction.
Everything that parses an upstream body treats it as untrusted: a malformed success body is a
502, never a 500, and an upstream message is redacted and truncated before a client sees it.
"""

from __future__ import annotations

import base64
import binascii
import math
import time
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

import orjson

from app.core.errors import GatewayError, bad_request
from app.domain.edit import EditOutput, EditRequest, GeneratedImage, Image
from app.upstream.hints import parse_retry_after
from app.upstream.multipart import FilePart, encode_multipart_parts
from app.upstream.request import UpstreamRequest

if TYPE_CHECKING:
    from app.upstream.transport import UpstreamResponse

MAX_UPSTREAM_MESSAGE = 500
MIME_BY_FORMAT = {
    "png": "image/png",
    "jpeg": "image/jpeg",
    "jpg": "image/jpeg",
    "webp": "image/webp",
}
UPSTREAM_REJECTED = "upstream rejected the request: "


# ---------------------------------------------------------------------------------------------
# Field checks


def check_prompt(prompt: str, limit: int) -> None:
    """The model's prompt limit, checked before any fetch. (That a prompt is present and not
    blank is the body parser's rule: every request reaching an adapter has one.)"""
    if len(prompt) > limit:
        raise bad_request(
            f"prompt is too long: {len(prompt)} characters, the limit is {limit}", "prompt"
        )


def check_choice(value: str | None, allowed: Iterable[str], param: str) -> None:
    """`None` means the client did not send the field: always fine."""
    if value is None:
        return
    options = tuple(allowed)
    if value not in options:
        raise bad_request(f"{param} must be one of {', '.join(options)}; got {value!r}", param)


def check_int_range(value: int | None, low: int, high: int, param: str) -> None:
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise bad_request(f"{param} must be an integer from {low} to {high}; got {value!r}", param)


def check_ref_count(req: EditRequest, limit: int, model: str) -> None:
    """The model's image count, checked before fetching so too many inputs are refused without
    downloading any of them. (The body parser caps the count for every model while reading.)"""
    if len(req.image_refs) > limit:
        noun = "image" if limit == 1 else "images"
        got = len(req.image_refs)
        raise bad_request(f"{model} accepts at most {limit} {noun}; got {got}", "image")


def image_param(req: EditRequest, index: int) -> str:
    """The parameter name the client used for image `index`, for error messages."""
    if len(req.image_refs) == len(req.images) and index < len(req.image_refs):
        return req.image_refs[index].param
    return "image" if len(req.images) == 1 else f"image[{index}]"


def check_mask(req: EditRequest, *, max_bytes: int | None = None) -> None:
    """The mask is a PNG with the first image's dimensions (OpenAI applies it to that image)."""
    mask = req.mask
    if mask is None:
        return
    if mask.mime != "image/png":
        raise bad_request("mask must be a PNG image", "mask")
    if max_bytes is not None and len(mask.data) >= max_bytes:
        raise bad_request(f"mask must be smaller than {max_bytes // (1024 * 1024)} MB", "mask")
    if req.images:
        first = req.images[0]
        if (mask.width, mask.height) != (first.width, first.height):
            raise bad_request(
                f"mask must have the same dimensions as the first image: mask is "
                f"{mask.width}x{mask.height}, image is {first.width}x{first.height}",
                "mask",
            )


def sniff_mime(data: bytes) -> str | None:
    """Identify PNG/JPEG/WEBP by magic bytes (what the upstream returned, not what it claimed)."""
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "image/png"
    if data.startswith(b"\xff\xd8\xff"):
        return "image/jpeg"
    if len(data) >= 12 and data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp"
    return None


# ---------------------------------------------------------------------------------------------
# Upstream error mapping (status → gateway error), shared by both protocols


def clean_message(message: Any) -> str | None:
    """An upstream's message, trimmed and bounded (the caller redacts our keys from it)."""
    if not isinstance(message, str) or not message.strip():
        return None
    text = message.strip()
    if len(text) > MAX_UPSTREAM_MESSAGE:
        text = text[:MAX_UPSTREAM_MESSAGE] + "…"
    return text


def map_status(
    status: int,
    *,
    message: str | None,
    param: str | None = None,
    retry_after: float | None = None,
) -> GatewayError:
    """Map a final (post-retry) upstream HTTP error to the gateway's error.

    Auth failures become 502 with a fixed message: the upstream's body may echo the key, and the
    client cannot fix our credential anyway. Request errors pass the upstream's explanation on.
    """
    if status in (401, 403):
        return GatewayError("api_error", "upstream authentication failed", status=502)
    if status == 429:
        wait = max(1, math.ceil(retry_after)) if retry_after is not None else 1
        return GatewayError(
            "too_many_requests",
            "upstream rate limited",
            status=429,
            headers={"Retry-After": str(wait)},
        )
    if status == 408:
        return GatewayError("upstream_timeout", "upstream timed out", status=504)
    if status == 413:
        return GatewayError(
            "payload_too_large",
            UPSTREAM_REJECTED + (message or "request too large"),
            param=param,
            status=413,
        )
    if status in (400, 404, 409, 415, 422):
        return GatewayError(
            "bad_request",
            UPSTREAM_REJECTED + (message or f"HTTP {status}"),
            param=param,
            status=400,
        )
    if status >= 500:
        detail = f": {message}" if message else ""
        return GatewayError("api_error", f"upstream error (HTTP {status}){detail}", status=502)
    return GatewayError("api_error", f"upstream answered HTTP {status}", status=502)


def malformed(what: str = "a malformed response") -> GatewayError:
    return GatewayError("api_error", f"upstream returned {what}", status=502)


def error_object(resp: UpstreamResponse) -> dict[str, Any]:
    """The `error` object both upstreams answer with (`{"error": {...}}`), or {}."""
    try:
        body = resp.json()
    except ValueError:
        return {}
    if isinstance(body, dict) and isinstance(body.get("error"), dict):
        return dict(body["error"])
    return {}


def map_openai_error(resp: UpstreamResponse) -> GatewayError:
    """OpenAI's (and Azure's) `{"error": {message, type, param, code}}` → gateway error."""
    err = error_object(resp)
    message = clean_message(err.get("message"))
    param = err.get("param") if isinstance(err.get("param"), str) else None
    is_moderation = (
        err.get("code") == "moderation_blocked" or err.get("type") == "image_generation_user_error"
    )
    inner = err.get("inner_error", err.get("innererror"))
    if isinstance(inner, dict) and inner.get("code") == "ResponsibleAIPolicyViolation":
        is_moderation = True  # Azure's content filter
    if err.get("code") in ("content_policy_violation", "content_filter"):
        is_moderation = True
    if resp.status == 400 and is_moderation:
        return GatewayError(
            "moderation_blocked",
            message or "the request was rejected by the upstream's safety system",
            status=400,
        )
    return map_status(
        resp.status, message=message, param=param, retry_after=parse_retry_after(resp.headers)
    )


# ---------------------------------------------------------------------------------------------
# OpenAI encoding / decoding


def image_parts(images: list[Image], mask: Image | None) -> list[FilePart]:
    """One image → part `image`; several → repeated `image[]` (repeated `image` is a 400
    `duplicate_parameter` upstream). Content types come from the sniffed bytes."""
    name = "image" if len(images) == 1 else "image[]"
    parts = [
        FilePart(name, f"image_{i}.{img.ext}", img.mime, img.data) for i, img in enumerate(images)
    ]
    if mask is not None:
        parts.append(FilePart("mask", "mask.png", "image/png", mask.data))
    return parts


def decode_b64(value: Any) -> bytes:
    if not isinstance(value, str) or not value:
        raise malformed("an image without data")
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise malformed("invalid base64 image data") from None


def parse_images_response(
    resp: UpstreamResponse, *, requested_format: str | None = None
) -> EditOutput:
    """OpenAI `ImagesResponse` → `EditOutput` (b64 decoded, MIME sniffed from the bytes)."""
    try:
        body = resp.json()
    except ValueError:
        raise malformed("a non-JSON response") from None
    if not isinstance(body, dict) or not isinstance(body.get("data"), list):
        raise malformed()
    fmt = body.get("output_format") if isinstance(body.get("output_format"), str) else None
    fallback = MIME_BY_FORMAT.get(fmt or requested_format or "png", "image/png")
    images: list[GeneratedImage] = []
    for item in body["data"]:
        if not isinstance(item, dict):
            raise malformed()
        data = decode_b64(item.get("b64_json"))
        revised = item.get("revised_prompt")
        images.append(
            GeneratedImage(
                data=data,
                mime=sniff_mime(data) or fallback,
                revised_prompt=revised if isinstance(revised, str) else None,
            )
        )
    if not images:
        raise GatewayError("api_error", "upstream returned no image", status=502)
    created = body.get("created")
    if not isinstance(created, int) or isinstance(created, bool):
        created = int(time.time())
    extra: dict[str, Any] = {}
    if isinstance(body.get("usage"), dict):
        extra["usage"] = body["usage"]
    for key in ("size", "quality", "output_format", "background"):
        if isinstance(body.get(key), str):
            extra[key] = body[key]
    return EditOutput(images=images, created=created, extra=extra, usage=extra.get("usage"))


def openai_edit_request(
    fields: list[tuple[str, str]], req: EditRequest, model_id: str, trace_id: str, stream: bool
) -> UpstreamRequest:
    """The one OpenAI `images/edits` request (OpenAI and Azure channels alike): text fields,
    then the images (`image` or repeated `image[]`) and the mask, as body pieces — the image
    bytes by reference, never copied. X-Client-Request-Id correlates with our trace id."""
    pieces, content_type = encode_multipart_parts(fields, image_parts(req.images, req.mask))
    headers = {"content-type": content_type, "x-client-request-id": trace_id}
    return UpstreamRequest("images/edits", model_id, pieces, headers, stream=stream)


_JSON_INTS = frozenset({"n", "output_compression", "partial_images"})


def openai_generation_request(
    fields: list[tuple[str, str]], model_id: str, trace_id: str, stream: bool
) -> UpstreamRequest:
    """The one OpenAI `images/generations` request (JSON, OpenAI and Azure channels alike),
    from the same field selection the model's edits use, with JSON types restored."""
    body: dict[str, Any] = {}
    for name, value in fields:
        if name in _JSON_INTS:
            body[name] = int(value)
        elif name == "stream":
            body[name] = value == "true"
        else:
            body[name] = value
    headers = {"content-type": "application/json", "x-client-request-id": trace_id}
    return UpstreamRequest(
        "images/generations", model_id, orjson.dumps(body), headers, stream=stream
    )


class OpenAIImages:
    """What gpt-image and dall-e-2 share: the answer, the errors and the stream events."""

    protocol = "openai"

    def parse(self, resp: UpstreamResponse, req: EditRequest) -> EditOutput:
        return parse_images_response(resp, requested_format=req.output_format or "png")

    def error(self, resp: UpstreamResponse) -> GatewayError:
        return map_openai_error(resp)

    def event(self, name: str, data: dict[str, Any]) -> dict[str, Any]:
        """Relay `image_edit.*` / `image_generation.*` (partial_image, completed) events; an
        error event raises."""
        if name == "error" or "error" in data:
            nested = data.get("error")
            err: dict[str, Any] = nested if isinstance(nested, dict) else data
            message = clean_message(err.get("message")) or "upstream stream failed"
            code, kind = err.get("code"), err.get("type")
            if code == "moderation_blocked" or kind == "image_generation_user_error":
                raise GatewayError("moderation_blocked", message, status=400)
            raise GatewayError("api_error", message, status=502)
        data.setdefault("type", name)
        return data

    def stream_done(self, event: dict[str, Any]) -> bool:
        return str(event.get("type", "")).endswith(".completed")
