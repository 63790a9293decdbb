"""dall-e-2 → OpenAI `POST /images/edits` (multipart).

dall-e-2 is the legacy model with its own rules: exactly one square PNG under 4 MB, native `n`,
three sizes, 1000-char prompts. GPT-only fields are refused with a 400 naming the field rather
than dropped, so a client never believes it got a transparent background or a webp it did not.
The upstream is always asked for `b64_json`: the gateway stores and serves results itself, and
OpenAI's own URLs would expire after an hour. Billing settles on the images actually returned.
"""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any, ClassVar

from app.adapters.openai_common import (
    check_choice,
    check_int_range,
    check_mask,
    check_prompt,
    check_ref_count,
    image_param,
    image_parts,
    map_openai_error,
    multipart_headers,
    parse_images_response,
)
from app.core.errors import GatewayError, bad_request
from app.upstream.multipart import encode_multipart_parts

if TYPE_CHECKING:
    from app.core.config import ModelConfig
    from app.domain.edit import EditOutput, EditRequest
    from app.upstream.client import UpstreamClient

PATH = "/images/edits"
MAX_PROMPT = 1000
MAX_IMAGE_BYTES = 4 * 1024 * 1024
SIZES = ("256x256", "512x512", "1024x1024")
QUALITIES = ("standard",)
RESPONSE_FORMATS = ("url", "b64_json")
UNSUPPORTED = (
    "background",
    "output_format",
    "output_compression",
    "input_fidelity",
    "moderation",
    "partial_images",
)


class DallE2Adapter:
    """OpenAI dall-e-2 edits."""

    name: ClassVar[str] = "dall-e-2"
    upstream_kind: ClassVar[str] = "openai"
    # Read by the edit service: price `per_image x n`; answer `url` unless asked (as OpenAI).
    native_n: ClassVar[bool] = True
    default_response_format: ClassVar[str | None] = "url"
    forced_response_format: ClassVar[str | None] = None

    def __init__(self, model: str, config: ModelConfig, upstream: UpstreamClient) -> None:
        self.model = model
        self.config = config
        self.upstream = upstream

    def max_images(self) -> int:
        return 1

    def supports_stream(self) -> bool:
        return False

    def check_fields(self, req: EditRequest) -> EditRequest:
        check_prompt(req.prompt, MAX_PROMPT)
        for field in UNSUPPORTED:
            if getattr(req, field) is not None:
                raise bad_request(f"{field} is not supported by {self.model}", field)
        if req.stream:
            raise bad_request(f"stream is not supported by {self.model}", "stream")
        check_ref_count(req, 1, self.model)
        check_int_range(req.n, 1, 10, "n")
        check_choice(req.size, SIZES, "size")
        check_choice(req.quality, QUALITIES, "quality")
        check_choice(req.response_format, RESPONSE_FORMATS, "response_format")
        return dataclasses.replace(req, n=req.n if req.n is not None else 1)

    def check_images(self, req: EditRequest) -> None:
        img = req.images[0]
        param = image_param(req, 0)
        if img.mime != "image/png":
            raise bad_request(f"{self.model} needs a PNG image", param)
        if img.width != img.height:
            raise bad_request(
                f"{self.model} needs a square image; got {img.width}x{img.height}", param
            )
        if len(img.data) >= MAX_IMAGE_BYTES:
            raise bad_request(f"{self.model} needs an image smaller than 4 MB", param)
        check_mask(req, max_bytes=MAX_IMAGE_BYTES)

    def fields(self, req: EditRequest) -> list[tuple[str, str]]:
        out: list[tuple[str, str]] = [
            ("model", self.config.upstream_model),
            ("prompt", req.prompt),
            ("n", str(req.n if req.n is not None else 1)),
        ]
        for key in ("size", "quality", "user"):
            value = getattr(req, key)
            if value is not None:
                out.append((key, value))
        out.append(("response_format", "b64_json"))
        return out

    def encode(self, req: EditRequest) -> tuple[bytes, str]:
        pieces, content_type = self.encode_parts(req)
        return b"".join(pieces), content_type

    def encode_parts(self, req: EditRequest) -> tuple[list[bytes], str]:
        """The multipart body as pieces: the image by reference, never copied."""
        return encode_multipart_parts(self.fields(req), image_parts(req.images, req.mask))

    async def edit(self, req: EditRequest, trace_id: str) -> EditOutput:
        body, content_type = self.encode_parts(req)
        resp = await self.upstream.request(
            "POST", PATH, headers=multipart_headers(content_type, trace_id), content=body
        )
        if not resp.ok:
            raise map_openai_error(resp, self.upstream)
        return parse_images_response(resp, self.upstream, requested_format="png")

    def stream(self, req: EditRequest, trace_id: str) -> AsyncIterator[dict[str, Any]]:
        raise GatewayError("api_not_implemented", f"stream is not supported by {self.model}")
