"""GPT Image models (gpt-image-1, -1-mini, -1.5, -2) → OpenAI `POST /images/edits` (multipart)
and `POST /images/generations` (JSON, the same fields less the image ones).

What differs per model is decided from the model names (gateway name or upstream id), so an
operator may add e.g. `gpt-image-2-2026-04-21` as a config entry and get gpt-image-2's rules:
- gpt-image-2 takes flexible `WIDTHxHEIGHT` sizes and processes inputs at high fidelity, so
  `input_fidelity` is accepted from clients but never forwarded (the API refuses changing it);
- gpt-image-1-mini does not support `input_fidelity` at all → 400;
- `n` is silently treated as 1 (GPT image models answer one image per request, billed
  once), never sent;
- `response_format` is the gateway's own choice (OpenAI rejects it for GPT models), never sent.
"""

from __future__ import annotations

import dataclasses
import re
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
from app.core.errors import bad_request, too_large

if TYPE_CHECKING:
    from app.core.config import ModelConfig
    from app.domain.edit import EditRequest
    from app.upstream.request import UpstreamRequest

MAX_IMAGES = 16
MAX_PROMPT = 32000
MAX_IMAGE_BYTES = 50 * 1024 * 1024
IMAGE_MIMES = ("image/png", "image/jpeg", "image/webp")

FIXED_SIZES = ("auto", "1024x1024", "1536x1024", "1024x1536")
QUALITIES = ("low", "medium", "high", "auto")
BACKGROUNDS = ("transparent", "opaque", "auto")
OUTPUT_FORMATS = ("png", "jpeg", "webp")
FIDELITIES = ("high", "low")
MODERATIONS = ("low", "auto")
RESPONSE_FORMATS = ("url", "b64_json")

# gpt-image-2 flexible sizes (upstream's documented limits)
SIZE_PATTERN = re.compile(r"[0-9]+x[0-9]+")
SIZE_ALIASES = frozenset({"1254x1254", "1672x941", "941x1672"})  # 1K aliases, relayed as given
MAX_EDGE = 3840
MAX_PIXELS = 8_294_400
MIN_PIXELS = 655_360
MAX_ASPECT = 3


def check_flexible_size(size: str) -> None:
    """gpt-image-2's `WIDTHxHEIGHT` rules, each violation a separate 400 naming the rule."""
    if size in SIZE_ALIASES:
        return
    if not SIZE_PATTERN.fullmatch(size):
        raise bad_request(
            f"size must be auto or WIDTHxHEIGHT (e.g. 1536x1024); got {size!r}", "size"
        )
    w_text, _, h_text = size.partition("x")
    w, h = int(w_text), int(h_text)
    if w % 16 or h % 16:
        raise bad_request(f"size {size}: width and height must be multiples of 16", "size")
    if max(w, h) > MAX_EDGE:
        raise bad_request(f"size {size}: the longer side must be at most {MAX_EDGE}", "size")
    if w * h > MAX_PIXELS:
        raise bad_request(
            f"size {size}: total pixels must be at most {MAX_PIXELS:,} (got {w * h:,})", "size"
        )
    if w * h < MIN_PIXELS:
        raise bad_request(
            f"size {size}: total pixels must be at least {MIN_PIXELS:,} (got {w * h:,})", "size"
        )
    if max(w, h) > MAX_ASPECT * min(w, h):
        raise bad_request(f"size {size}: the aspect ratio must be at most 3:1", "size")


class GptImageAdapter(OpenAIImages):
    """OpenAI GPT Image edits."""

    name: ClassVar[str] = "gpt-image"
    # Read by the edit service: one image per request; the response format follows the body kind.
    native_n: ClassVar[bool] = False
    default_response_format: ClassVar[str | None] = None
    forced_response_format: ClassVar[str | None] = None

    def __init__(self, model: str, config: ModelConfig) -> None:
        self.model = model
        self.config = config
        names = (model, config.upstream_model)
        self.is_gpt2 = any(n.startswith("gpt-image-2") for n in names)
        self.fidelity_supported = not any(n.startswith("gpt-image-1-mini") for n in names)

    def max_images(self) -> int:
        return MAX_IMAGES

    def supports_stream(self) -> bool:
        return True

    # -- checks ------------------------------------------------------------------------------

    def check_fields(self, req: EditRequest) -> EditRequest:
        check_prompt(req.prompt, MAX_PROMPT)
        check_ref_count(req, MAX_IMAGES, self.model)
        size = self._check_size(req.size)
        check_choice(req.quality, QUALITIES, "quality")
        check_choice(req.background, BACKGROUNDS, "background")
        check_choice(req.output_format, OUTPUT_FORMATS, "output_format")
        check_int_range(req.output_compression, 0, 100, "output_compression")
        check_choice(req.input_fidelity, FIDELITIES, "input_fidelity")
        check_choice(req.moderation, MODERATIONS, "moderation")
        check_choice(req.response_format, RESPONSE_FORMATS, "response_format")
        check_int_range(req.partial_images, 0, 3, "partial_images")
        if req.input_fidelity is not None and not self.fidelity_supported:
            raise bad_request(f"input_fidelity is not supported by {self.model}", "input_fidelity")
        if req.background == "transparent" and req.output_format == "jpeg":
            raise bad_request(
                "background=transparent needs output_format png or webp", "output_format"
            )
        compression = req.output_compression
        if req.output_format not in ("jpeg", "webp"):
            compression = None  # only meaningful for lossy formats; png would ignore it
        return dataclasses.replace(
            req,
            n=1,
            size=size,
            output_compression=compression,
            input_fidelity=req.input_fidelity if not self.is_gpt2 else None,
        )

    def _check_size(self, size: str | None) -> str | None:
        if self.is_gpt2:
            if size is None or size == "":
                return None
            if size != "auto":
                check_flexible_size(size)
            return size
        if size is not None and size not in FIXED_SIZES:
            raise bad_request(
                f"size must be one of {', '.join(FIXED_SIZES)} for {self.model}; got {size!r}",
                "size",
            )
        return size

    def check_images(self, req: EditRequest) -> None:
        for i, img in enumerate(req.images):
            if img.mime not in IMAGE_MIMES:
                raise bad_request(
                    f"{self.model} accepts PNG, JPEG or WEBP images", image_param(req, i)
                )
            if len(img.data) >= MAX_IMAGE_BYTES:
                raise too_large("each image must be smaller than 50 MB", image_param(req, i))
        check_mask(req)

    # -- the upstream request ----------------------------------------------------------------

    def fields(
        self, req: EditRequest, model_id: str, *, streaming: bool = False
    ) -> list[tuple[str, str]]:
        """The text parts for this model: only fields it accepts and the client gave."""
        out: list[tuple[str, str]] = [("model", model_id), ("prompt", req.prompt)]
        if req.size:
            out.append(("size", req.size))
        for key in ("quality", "background", "output_format", "moderation", "user"):
            value = getattr(req, key)
            if value is not None:
                out.append((key, value))
        if req.output_compression is not None and req.output_format in ("jpeg", "webp"):
            out.append(("output_compression", str(req.output_compression)))
        # A channel may serve this model from gpt-image-2 (`model_map`): never send what that
        # model refuses to change, whatever the client-facing model accepts.
        gpt2 = self.is_gpt2 or model_id.startswith("gpt-image-2")
        if req.input_fidelity is not None and self.fidelity_supported and not gpt2:
            out.append(("input_fidelity", req.input_fidelity))
        if streaming:
            out.append(("stream", "true"))
            if req.partial_images is not None:
                out.append(("partial_images", str(req.partial_images)))
        return out

    def build(
        self, req: EditRequest, model_id: str, *, trace_id: str, stream: bool = False
    ) -> UpstreamRequest:
        fields = self.fields(req, model_id, streaming=stream)
        if req.operation == "generate":
            return openai_generation_request(fields, model_id, trace_id, stream)
        return openai_edit_request(fields, req, model_id, trace_id, stream)
