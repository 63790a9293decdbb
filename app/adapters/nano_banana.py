"""Nano Banana models (Gemini image models) → Gemini `POST /models/{id}:generateContent`.

A generation is the same call with the prompt as the only part. Only `model`, `prompt` and
`image` are used (docs/API.md, "Models") and every other field is ignored
without an error, so `check_fields` returns a request with those fields cleared: nothing
downstream can mistake an ignored `n`, `size`, `mask` or `stream` for something honoured, the mask
is never fetched, and `response_format` is pinned to `url` (nano-banana always answers URLs).

Gemini reports content refusals as HTTP 200 without an image; those become 400
`moderation_blocked` when the reason is a safety one, and 502 otherwise (the model just did not
draw), so clients are never charged for an empty answer.

The body is JSON with each image as base64 text. A small body of in-memory images is encoded
as it always was (one `orjson.dumps`); a large or spooled image is never encoded whole: the JSON
is dumped with a placeholder where each image's base64 goes and split around it, and each image
becomes a `Base64Blob` piece that the transport encodes chunk by chunk while sending. The bytes
on the wire are the same either way (docs/ARCHITECTURE.md, "Upstream bodies").
"""

from __future__ import annotations

import base64
import dataclasses
import secrets
from typing import TYPE_CHECKING, Any, ClassVar

import orjson

from app.adapters.openai_common import (
    check_prompt,
    check_ref_count,
    clean_message,
    decode_b64,
    error_object,
    image_param,
    malformed,
    map_status,
    sniff_mime,
)
from app.core.errors import GatewayError, bad_request
from app.domain.blob import Blob
from app.domain.edit import EditOutput, GeneratedImage
from app.upstream.body import Base64Blob, Body, Piece
from app.upstream.hints import parse_retry_after
from app.upstream.request import UpstreamRequest
from app.upstream.transport import JOIN_MAX

if TYPE_CHECKING:
    from app.core.config import ModelConfig
    from app.domain.edit import EditRequest
    from app.upstream.transport import UpstreamResponse

MAX_IMAGES = 14
MAX_PROMPT = 32000
IMAGE_MIMES = ("image/png", "image/jpeg", "image/webp")
SAFETY_REASONS = frozenset(
    {
        "SAFETY",
        "IMAGE_SAFETY",
        "PROHIBITED_CONTENT",
        "IMAGE_PROHIBITED_CONTENT",
        "BLOCKLIST",
        "SPII",
        "RECITATION",
        "IMAGE_RECITATION",
    }
)
MAX_TEXT_IN_ERROR = 200


class NanoBananaAdapter:
    """Gemini generateContent image editing."""

    name: ClassVar[str] = "nano-banana"
    protocol: ClassVar[str] = "gemini"
    # Read by the edit service: priced per request; always answers URLs.
    native_n: ClassVar[bool] = False
    default_response_format: ClassVar[str | None] = None
    forced_response_format: ClassVar[str | None] = "url"

    def __init__(self, model: str, config: ModelConfig) -> None:
        self.model = model
        self.config = config

    def max_images(self) -> int:
        return MAX_IMAGES

    def supports_stream(self) -> bool:
        return False

    def check_fields(self, req: EditRequest) -> EditRequest:
        check_prompt(req.prompt, MAX_PROMPT)
        check_ref_count(req, MAX_IMAGES, self.model)
        return dataclasses.replace(
            req,
            mask_ref=None,
            mask=None,
            n=None,
            size=None,
            quality=None,
            response_format="url",
            background=None,
            output_format=None,
            output_compression=None,
            input_fidelity=None,
            moderation=None,
            user=None,
            stream=False,
            partial_images=None,
        )

    def check_images(self, req: EditRequest) -> None:
        for i, img in enumerate(req.images):
            if img.mime not in IMAGE_MIMES:
                raise bad_request(
                    f"{self.model} accepts PNG, JPEG or WEBP images", image_param(req, i)
                )

    def body(self, req: EditRequest, inline: list[str] | None = None) -> dict[str, Any]:
        """The request JSON; `inline[i]` is the text put where image i's base64 goes (by
        default the base64 itself, which reads the image whole)."""
        parts: list[dict[str, Any]] = [{"text": req.prompt}]
        for i, img in enumerate(req.images):
            data = inline[i] if inline is not None else _b64_text(img.data)
            parts.append({"inlineData": {"mimeType": img.mime, "data": data}})
        return {
            "contents": [{"role": "user", "parts": parts}],
            "generationConfig": {"responseModalities": ["IMAGE"]},
        }

    def encode(self, req: EditRequest) -> Body:
        """The JSON body: one buffer when every image is small and in memory, else pieces with
        each image's base64 as a `Base64Blob` (the same bytes, never encoded whole here)."""
        images = [img.data for img in req.images]
        if all(isinstance(b, bytes) for b in images) and 4 * sum(map(len, images)) <= 3 * JOIN_MAX:
            return orjson.dumps(self.body(req))
        while True:
            # A random marker that JSON leaves as it is; a prompt containing it (2^-64) would
            # split wrongly, so the split is checked and a fresh marker drawn.
            marker = f"imagegate-inline-{secrets.token_hex(8)}"
            text = orjson.dumps(self.body(req, [marker] * len(images)))
            between = text.split(marker.encode("ascii"))
            if len(between) == len(images) + 1:
                break
        pieces: list[Piece] = [between[0]]
        for blob, after in zip(images, between[1:], strict=True):
            pieces += [Base64Blob(blob), after]
        return pieces

    def build(
        self, req: EditRequest, model_id: str, *, trace_id: str, stream: bool = False
    ) -> UpstreamRequest:
        """`generateContent` for Gemini and Vertex alike (`role` is required on Vertex)."""
        headers = {"content-type": "application/json"}
        return UpstreamRequest("generateContent", model_id, self.encode(req), headers)

    def parse(self, resp: UpstreamResponse, req: EditRequest) -> EditOutput:
        try:
            payload = resp.json()
        except ValueError:
            raise malformed("a non-JSON response") from None
        if not isinstance(payload, dict):
            raise malformed()
        images = extract_images(payload)
        usage = payload.get("usageMetadata")
        return EditOutput(
            images=[
                GeneratedImage(data=data, mime=mime, revised_prompt=req.prompt)
                for data, mime in images
            ],
            created=0,
            usage=usage if isinstance(usage, dict) else None,
        )

    def error(self, resp: UpstreamResponse) -> GatewayError:
        return map_gemini_error(resp)

    def event(self, name: str, data: dict[str, Any]) -> dict[str, Any]:
        raise GatewayError("api_not_implemented", f"stream is not supported by {self.model}")

    def stream_done(self, event: dict[str, Any]) -> bool:
        return True


def _inline(part: dict[str, Any]) -> dict[str, Any] | None:
    """The part's inline image, accepting proto-JSON camelCase or snake_case."""
    blob = part.get("inlineData", part.get("inline_data"))
    return blob if isinstance(blob, dict) else None


def _b64_text(blob: Blob) -> str:
    """Base64 of an in-memory image (a spooled one goes as a `Base64Blob` piece instead)."""
    if not isinstance(blob, bytes):
        raise TypeError("a spooled image is encoded by the transport, chunk by chunk")
    return base64.b64encode(blob).decode("ascii")


def extract_images(payload: dict[str, Any]) -> list[tuple[bytes, str]]:
    """Final (non-thought) images of the first candidate; the last thought image as a fallback
    unless the answer was a safety refusal (an interim image must not slip past a block).

    Raises the failure that fits when there is none: moderation for safety reasons, else 502.
    """
    feedback = payload.get("promptFeedback")
    block = feedback.get("blockReason") if isinstance(feedback, dict) else None
    candidates = payload.get("candidates")
    candidate = candidates[0] if isinstance(candidates, list) and candidates else None
    if candidate is not None and not isinstance(candidate, dict):
        raise malformed()
    finish = candidate.get("finishReason") if candidate else None
    content = candidate.get("content") if candidate else None
    parts = content.get("parts") if isinstance(content, dict) else None
    finals: list[tuple[bytes, str]] = []
    thoughts: list[tuple[bytes, str]] = []
    texts: list[str] = []
    for part in parts if isinstance(parts, list) else []:
        if not isinstance(part, dict):
            continue
        blob = _inline(part)
        if blob is None:
            if isinstance(part.get("text"), str) and part.get("thought") is not True:
                texts.append(part["text"])
            continue
        data = decode_b64(blob.get("data"))
        declared = blob.get("mimeType", blob.get("mime_type"))
        mime = sniff_mime(data) or (declared if isinstance(declared, str) else "image/png")
        (thoughts if part.get("thought") is True else finals).append((data, mime))
    if finals:
        return finals
    if block:
        raise GatewayError(
            "moderation_blocked", f"the upstream blocked the prompt (blockReason {block})"
        )
    if finish in SAFETY_REASONS:
        raise GatewayError(
            "moderation_blocked", f"the upstream refused the content (finishReason {finish})"
        )
    if thoughts:  # Gemini 3: "the last image within Thinking is also the final rendered image"
        return thoughts[-1:]
    detail = f"finishReason {finish}" if finish else "no candidates"
    text = clean_message(" ".join(texts))
    if text:
        if len(text) > MAX_TEXT_IN_ERROR:
            text = text[:MAX_TEXT_IN_ERROR] + "…"
        detail += f"; it said: {text}"
    raise GatewayError("api_error", f"upstream returned no image ({detail})", status=502)


def map_gemini_error(resp: UpstreamResponse) -> GatewayError:
    """Gemini's `{"error": {code, message, status}}` → gateway error (same table as OpenAI)."""
    err = error_object(resp)
    message = clean_message(err.get("message"))
    if message and resp.status < 500 and isinstance(err.get("status"), str):
        message = f"{message} ({err['status']})"
    return map_status(resp.status, message=message, retry_after=parse_retry_after(resp.headers))
