"""dall-e-2 → OpenAI `POST /images/edits` (multipart) and `POST /images/generations` (JSON).

dall-e-2 is the legacy model with its own rules: exactly one square PNG under 4 MB, native `n`,
three sizes, 1000-char prompts. GPT-only fields are refused with a 400 naming the field rather
than dropped, so a client never believes it got a transparent background or a webp it did not.
The upstream is always asked for `b64_json`: the gateway stores and serves results itself, and
OpenAI's own URLs would expire after an hour. Billing settles on the images actually returned.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, ClassVar

from app.adapters.openai_common import (
    OpenAIImages,
    check_choice,
    check_int_range,
    check_mask,
    check_prompt,
    check_ref_count,
    image_param,
    openai_edit_request,
    openai_generation_request,
)
from app.core.errors import bad_request

if TYPE_CHECKING:
    from app.core.config import ModelConfig
    from app.domain.edit import EditRequest
    from app.upstream.request import UpstreamRequest

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


class DallE2Adapter(OpenAIImages):
    """OpenAI dall-e-2 edits."""

    name: ClassVar[str] = "dall-e-2"
    # Read by the edit service: price `per_image x n`; answer `url` unless asked (as OpenAI).
    native_n: ClassVar[bool] = True
    default_response_format: ClassVar[str | None] = "url"
    forced_response_format: ClassVar[str | None] = None

    def __init__(self, model: str, config: ModelConfig) -> None:
        self.model = model
        self.config = config

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
        check_ref_count(req, 1, self.model)  # generations have none
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

    def fields(self, req: EditRequest, model_id: str) -> list[tuple[str, str]]:
        out: list[tuple[str, str]] = [
            ("model", model_id),
            ("prompt", req.prompt),
            ("n", str(req.n if req.n is not None else 1)),
        ]
        for key in ("size", "quality", "user"):
            value = getattr(req, key)
            if value is not None:
                out.append((key, value))
        out.append(("response_format", "b64_json"))
        return out

    def build(
        self, req: EditRequest, model_id: str, *, trace_id: str, stream: bool = False
    ) -> UpstreamRequest:
        fields = self.fields(req, model_id)
        if req.operation == "generate":
            return openai_generation_request(fields, model_id, trace_id, False)
        return openai_edit_request(fields, req, model_id, trace_id, False)
