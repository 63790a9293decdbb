"""Gemini `POST /v1beta/models/{model}:generateContent` for the "Nano Banana" image models.

The real endpoint parses proto-JSON strictly: unknown names anywhere are a 400, both camelCase
(json name) and snake_case (proto name) spellings are accepted, errors name the proto path
(`generation_config.image_config`). Responses are always camelCase. Gemini 3 models also
"think": the answer carries an interim `thought: true` image before the final one, which is
exactly what a gateway must learn to skip (reference §4).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import math
import secrets
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import orjson
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

from app.simulator.common import (
    CLIENT_GONE_STATUS,
    DisconnectResponse,
    SimContext,
    begin_record,
    pause,
    read_body,
    record_status,
)
from app.simulator.errors import (
    GOOGLE_DEFAULT_MESSAGES,
    SimError,
    google_body,
    google_error,
    invalid_argument,
    json_response,
)
from app.simulator.faults import DEFAULT_TIMEOUT_DELAY_S, Fault, prompt_directive
from app.simulator.gemini_schema import check_schema
from app.simulator.gemini_schema import get_field as _get
from app.simulator.imaging import (
    FORMAT_BY_MIME,
    ImageDecodeError,
    ImageInfo,
    RenderSpec,
    inspect_image,
    render,
)
from app.simulator.state import summarize_json

MAX_REQUEST_BYTES = 20 * 1024 * 1024
BASE_RATIOS = ("1:1", "2:3", "3:2", "3:4", "4:3", "4:5", "5:4", "9:16", "16:9", "21:9")
EXTRA_RATIOS = ("1:4", "4:1", "1:8", "8:1")
INPUT_MIMES = ("image/png", "image/jpeg", "image/webp", "image/heic", "image/heif")

#: Gemini 2.5 Flash Image output sizes (reference §4b), all 1290 tokens
_DIMS_25 = {
    "1:1": (1024, 1024),
    "2:3": (832, 1248),
    "3:2": (1248, 832),
    "3:4": (864, 1184),
    "4:3": (1184, 864),
    "4:5": (896, 1152),
    "5:4": (1152, 896),
    "9:16": (768, 1344),
    "16:9": (1344, 768),
    "21:9": (1536, 672),
}
#: Gemini 3 image models at 1K; 2K/4K double/quadruple, 512 halves
_DIMS_3 = {
    "1:1": (1024, 1024),
    "2:3": (848, 1264),
    "3:2": (1264, 848),
    "3:4": (896, 1200),
    "4:3": (1200, 896),
    "4:5": (928, 1152),
    "5:4": (1152, 928),
    "9:16": (768, 1376),
    "16:9": (1376, 768),
    "21:9": (1584, 672),
}
_SIZE_SCALE = {"512": 0.5, "1K": 1.0, "2K": 2.0, "4K": 4.0}


@dataclass(frozen=True, slots=True)
class GeminiModel:
    id: str
    thinking: bool
    image_sizes: tuple[str, ...]
    ratios: tuple[str, ...]
    max_images: int | None
    output_tokens: dict[str, int] = field(default_factory=dict)

    def dims(self, ratio: str, image_size: str | None) -> tuple[int, int]:
        if not self.thinking:
            return _DIMS_25[ratio]
        if ratio in _DIMS_3:
            w, h = _DIMS_3[ratio]
        else:  # 1:4, 4:1, 1:8, 8:1 on 3.1 Flash: ~1 MP, multiples of 16
            rw, rh = (int(v) for v in ratio.split(":"))
            w = round(math.sqrt(1024 * 1024 * rw / rh) / 16) * 16
            h = round(math.sqrt(1024 * 1024 * rh / rw) / 16) * 16
        scale = _SIZE_SCALE.get(image_size or "1K", 1.0)
        return int(w * scale), int(h * scale)


def _models() -> dict[str, GeminiModel]:
    flash25 = GeminiModel("gemini-2.5-flash-image", False, (), BASE_RATIOS, None, {"1K": 1290})
    pro = GeminiModel(
        "gemini-3-pro-image", True, ("1K", "2K", "4K"), BASE_RATIOS, 14,
        {"1K": 1120, "2K": 1120, "4K": 2000},
    )  # fmt: skip
    flash31 = GeminiModel(
        "gemini-3.1-flash-image", True, ("512", "1K", "2K", "4K"), BASE_RATIOS + EXTRA_RATIOS, 14,
        {"512": 747, "1K": 1120, "2K": 1680, "4K": 2520},
    )  # fmt: skip
    lite = GeminiModel(
        "gemini-3.1-flash-lite-image", True, (), BASE_RATIOS + EXTRA_RATIOS, 14, {"1K": 1120}
    )
    table: dict[str, GeminiModel] = {}
    for model in (flash25, pro, flash31, lite):
        table[model.id] = model
        table[model.id + "-preview"] = model
    table["nano-banana-pro-preview"] = pro
    return table


MODELS = _models()


# --------------------------------------------------------------------------------------------
# semantic validation
# --------------------------------------------------------------------------------------------


@dataclass(slots=True)
class InlineImage:
    path: str
    mime: str
    data: bytes
    info: ImageInfo | None = None

    def describe(self) -> dict[str, Any]:
        info = self.info
        return {
            "name": self.path,
            "filename": None,
            "content_type": self.mime,
            "size": len(self.data),
            "sha256": info.sha256 if info else hashlib.sha256(self.data).hexdigest(),
            "width": info.width if info else None,
            "height": info.height if info else None,
            "format": info.format if info else None,
        }


@dataclass(slots=True)
class GenerateRequest:
    model: GeminiModel
    model_id: str
    prompt: str
    images: list[InlineImage]
    modalities: tuple[str, ...]
    aspect_ratio: str | None
    image_size: str | None
    include_thoughts: bool


def _b64decode(value: str) -> bytes:
    """Proto-JSON bytes: standard or URL-safe base64, padding optional."""
    cleaned = value.strip().replace("-", "+").replace("_", "/")
    cleaned += "=" * (-len(cleaned) % 4)
    return base64.b64decode(cleaned, validate=True)


def _unable_to_process() -> SimError:
    return invalid_argument(
        "Unable to process input image. Please retry or report in "
        "https://developers.generativeai.google/guide/troubleshooting"
    )


def collect_images(body: dict[str, Any]) -> list[InlineImage]:
    """Decode every `inlineData` part (structure only; pixels are checked by :func:`validate`)."""
    images: list[InlineImage] = []
    for ci, content in enumerate(_get(body, "contents") or []):
        for pi, part in enumerate(_get(content, "parts") or []):
            blob = _get(part, "inlineData")
            if blob is None:
                continue
            path = f"contents[{ci}].parts[{pi}].inline_data"
            mime = (_get(blob, "mimeType") or "").lower()
            data = _get(blob, "data") or ""
            try:
                raw = _b64decode(data)
            except (binascii.Error, ValueError):
                raise invalid_argument(
                    f"Invalid value at '{path}.data' (TYPE_BYTES), Base64 decoding failed for "
                    f'"{data[:40]}"',
                    [(f"{path}.data", "Base64 decoding failed")],
                ) from None
            images.append(InlineImage(path, mime, raw))
    return images


def validate(body: dict[str, Any], model_id: str, images: list[InlineImage]) -> GenerateRequest:
    """Semantic rules after the schema check (CPU: inspects images; run in a thread)."""
    model = MODELS[model_id]
    contents = _get(body, "contents")
    if not contents:
        raise invalid_argument("* GenerateContentRequest.contents: contents is not specified\n")
    texts: list[str] = []
    for ci, content in enumerate(contents):
        role = _get(content, "role")
        if role not in (None, "", "user", "model"):
            raise invalid_argument("Please use a valid role: user, model.")
        parts = _get(content, "parts")
        if not parts:
            raise invalid_argument(
                f"* GenerateContentRequest.contents[{ci}].parts: contents.parts must not be "
                "empty.\n"
            )
        for pi, part in enumerate(parts):
            data_fields = [
                name
                for name in (
                    "text",
                    "inlineData",
                    "fileData",
                    "functionCall",
                    "functionResponse",
                    "executableCode",
                    "codeExecutionResult",
                )
                if _get(part, name) not in (None, "")
            ]
            if not data_fields:
                raise invalid_argument(
                    f"* GenerateContentRequest.contents[{ci}].parts[{pi}].data: required oneof "
                    "field 'data' must have one initialized field\n"
                )
            if len(data_fields) > 1:
                raise invalid_argument(
                    "Invalid JSON payload received. Oneof field 'data' is already set. Cannot "
                    f"set '{data_fields[1]}'"
                )
            if data_fields[0] == "fileData":
                uri = _get(_get(part, "fileData"), "fileUri") or ""
                raise google_error(
                    403,
                    f"You do not have permission to access the File {uri.rsplit('/', 1)[-1]} "
                    "or it may not exist.",
                )
            if data_fields[0] == "text" and role in (None, "", "user"):
                texts.append(_get(part, "text"))
    for image in images:
        if not image.mime:
            raise invalid_argument(
                f"* GenerateContentRequest.{image.path}.mime_type: mime_type is not specified\n"
            )
        if image.mime not in INPUT_MIMES:
            raise invalid_argument(f"Unsupported MIME type: {image.mime}")
        if image.mime in ("image/heic", "image/heif"):
            continue  # accepted as-is; Pillow cannot decode HEIF without a plugin
        try:
            image.info = inspect_image(image.data)
        except ImageDecodeError:
            raise _unable_to_process() from None
        if image.info.format != FORMAT_BY_MIME[image.mime]:
            raise _unable_to_process()
    if model.max_images is not None and len(images) > model.max_images:
        raise invalid_argument(
            f"Too many images in the request: {len(images)}. This model accepts at most "
            f"{model.max_images} images."
        )

    config = _get(body, "generationConfig") or {}
    candidates = _get(config, "candidateCount")
    if candidates is not None and int(candidates) > 1:
        raise invalid_argument(f"Multiple candidates is not enabled for models/{model_id}")
    modalities = tuple(m.upper() for m in (_get(config, "responseModalities") or []))
    modalities = tuple(m for m in modalities if m != "MODALITY_UNSPECIFIED") or ("TEXT", "IMAGE")
    if "AUDIO" in modalities:
        raise invalid_argument("Model does not support the requested response modalities: audio")
    image_config = _get(config, "imageConfig") or {}
    ratio = _get(image_config, "aspectRatio")
    if ratio is not None and ratio not in model.ratios:
        raise invalid_argument(
            f"Unsupported aspect ratio: {ratio!r}. Supported values are: "
            + ", ".join(model.ratios)
            + "."
        )
    size = _get(image_config, "imageSize")
    if size is not None:
        if not model.image_sizes:
            raise invalid_argument(f"Image size is not supported for models/{model_id}.")
        if size not in model.image_sizes:
            raise invalid_argument(
                f"Unsupported image size: {size!r}. Supported values are: "
                + ", ".join(model.image_sizes)
                + " (use an uppercase 'K')."
            )
    thinking = _get(config, "thinkingConfig") or {}
    return GenerateRequest(
        model=model,
        model_id=model_id,
        prompt=" ".join(t for t in texts if t).strip(),
        images=images,
        modalities=modalities,
        aspect_ratio=ratio,
        image_size=size,
        include_thoughts=bool(_get(thinking, "includeThoughts")),
    )


# --------------------------------------------------------------------------------------------
# answering
# --------------------------------------------------------------------------------------------


def _nearest_ratio(model: GeminiModel, info: ImageInfo | None) -> str:
    """Default aspect ratio: match the first input image, else 1:1 (Gemini docs)."""
    if info is None:
        return "1:1"
    aspect = info.width / info.height

    def distance(ratio: str) -> float:
        rw, rh = (int(v) for v in ratio.split(":"))
        return abs(math.log(aspect * rh / rw))

    return min(model.ratios, key=distance)


def _first_decodable(req: GenerateRequest) -> InlineImage | None:
    return next((image for image in req.images if image.info is not None), None)


def output_dims(req: GenerateRequest) -> tuple[int, int]:
    first = _first_decodable(req)
    ratio = req.aspect_ratio or _nearest_ratio(req.model, first.info if first else None)
    return req.model.dims(ratio, req.image_size)


def _render(req: GenerateRequest) -> tuple[bytes, bytes | None]:
    """(final png, interim thought png or None)."""
    first = _first_decodable(req)
    width, height = output_dims(req)
    spec = RenderSpec(
        source_sha256=first.info.sha256 if first and first.info else None,
        prompt=req.prompt or "(no prompt)",
        width=width,
        height=height,
        format="png",
        partials=1 if req.model.thinking else 0,
    )
    try:
        item = render(first.data if first else None, spec)
    except ImageDecodeError:
        raise _unable_to_process() from None
    return item.final, (item.partials[0] if item.partials else None)


def usage_metadata(
    req: GenerateRequest, *, image_out: bool, text: str | None, thoughts: bool
) -> dict[str, Any]:
    """Token counts shaped like Gemini's `usageMetadata` (reference §4c, §5c)."""
    prompt_text = max(1, len(req.prompt) // 4)
    per_image_in = 560 if req.model.thinking else 258
    prompt_image = per_image_in * len(req.images)
    image_tokens = req.model.output_tokens.get(req.image_size or "1K", 1120) if image_out else 0
    text_tokens = max(1, len(text) // 4) if text else 0
    thought_tokens = 0
    if thoughts:
        thought_tokens = 120 + hashlib.sha256(req.prompt.encode()).digest()[0]
    prompt_details = [{"modality": "TEXT", "tokenCount": prompt_text}]
    if prompt_image:
        prompt_details.append({"modality": "IMAGE", "tokenCount": prompt_image})
    candidate_details = []
    if image_tokens:
        candidate_details.append({"modality": "IMAGE", "tokenCount": image_tokens})
    if text_tokens:
        candidate_details.append({"modality": "TEXT", "tokenCount": text_tokens})
    meta: dict[str, Any] = {
        "promptTokenCount": prompt_text + prompt_image,
        "candidatesTokenCount": image_tokens + text_tokens,
        "totalTokenCount": prompt_text + prompt_image + image_tokens + text_tokens + thought_tokens,
        "promptTokensDetails": prompt_details,
    }
    if candidate_details:
        meta["candidatesTokensDetails"] = candidate_details
    if thought_tokens:
        meta["thoughtsTokenCount"] = thought_tokens
    return meta


def _envelope(req: GenerateRequest, **fields: Any) -> dict[str, Any]:
    return {**fields, "modelVersion": req.model_id, "responseId": secrets.token_urlsafe(16)}


def success_body(req: GenerateRequest, final: bytes | None, thought: bytes | None) -> dict:
    signature = base64.b64encode(secrets.token_bytes(24)).decode() if req.model.thinking else None
    parts: list[dict[str, Any]] = []
    if req.model.thinking and req.include_thoughts:
        parts.append({"text": "**Planning the edit**\n\nWorking out composition.", "thought": True})
    if thought is not None:
        image = {"mimeType": "image/png", "data": base64.b64encode(thought).decode()}
        parts.append({"inlineData": image, "thought": True})
    text = None
    if req.model.thinking or "TEXT" in req.modalities or final is None:
        text = (
            f"Here is the edited image: {req.prompt[:200]}"
            if final
            else (f"I can describe it instead: {req.prompt[:200]}")
        )
        parts.append({"text": text, **({"thoughtSignature": signature} if signature else {})})
    if final is not None:
        image = {"mimeType": "image/png", "data": base64.b64encode(final).decode()}
        parts.append(
            {"inlineData": image, **({"thoughtSignature": signature} if signature else {})}
        )
    candidate = {"content": {"role": "model", "parts": parts}, "finishReason": "STOP", "index": 0}
    meta = usage_metadata(req, image_out=final is not None, text=text, thoughts=req.model.thinking)
    return _envelope(req, candidates=[candidate], usageMetadata=meta)


def safety_body(req: GenerateRequest, fault: Fault) -> dict[str, Any]:
    meta = usage_metadata(req, image_out=False, text=None, thoughts=False)
    if fault.where == "prompt":
        feedback = {
            "blockReason": fault.block_reason or "SAFETY",
            "safetyRatings": [
                {"category": "HARM_CATEGORY_DANGEROUS_CONTENT", "probability": "HIGH",
                 "blocked": True},
            ],
        }  # fmt: skip
        return _envelope(req, promptFeedback=feedback, usageMetadata=meta)
    candidate = {
        "finishReason": fault.finish_reason or "IMAGE_SAFETY",
        "index": 0,
        "finishMessage": "Unable to show the generated image because it may violate Google's "
        "Generative AI Prohibited Use policy.",
    }
    return _envelope(req, candidates=[candidate], usageMetadata=meta)


def no_image_body(req: GenerateRequest, finish_reason: str) -> dict[str, Any]:
    text = "I'm unable to create that image, but here is a description instead."
    candidate = {
        "content": {"role": "model", "parts": [{"text": text}]},
        "finishReason": finish_reason,
        "index": 0,
    }
    meta = usage_metadata(req, image_out=False, text=text, thoughts=False)
    return _envelope(req, candidates=[candidate], usageMetadata=meta)


def status_error(fault: Fault) -> SimError:
    status = fault.status or 500
    headers = dict(fault.headers)
    details: list[Any] | None = None
    if fault.retry_after is not None:
        headers.setdefault("retry-after", f"{fault.retry_after:g}")
        details = [
            {"@type": "type.googleapis.com/google.rpc.RetryInfo",
             "retryDelay": f"{fault.retry_after:g}s"}
        ]  # fmt: skip
    if fault.body is not None:
        return SimError(status, fault.body, headers)
    message = fault.message or GOOGLE_DEFAULT_MESSAGES.get(status, "Error.")
    return google_error(status, message, grpc_status=fault.code, details=details, headers=headers)


def _stream_chunks(body: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Split a full response into per-part chunks like `streamGenerateContent` does."""
    candidates = body.get("candidates") or []
    parts = candidates[0].get("content", {}).get("parts", []) if candidates else []
    meta: dict[str, Any] = {k: body[k] for k in ("modelVersion", "responseId") if k in body}
    for part in parts[:-1]:
        yield {
            "candidates": [{"content": {"role": "model", "parts": [part]}, "index": 0}],
            **meta,
        }
    last = dict(body)
    if candidates and parts:
        last["candidates"] = [{**candidates[0], "content": {"role": "model", "parts": parts[-1:]}}]
    yield last


def _auth(request: Request) -> None:
    key = request.headers.get("x-goog-api-key") or request.query_params.get("key")
    if not key:
        raise google_error(
            403,
            "Method doesn't allow unregistered callers (callers without established identity). "
            "Please use API Key or other form of API consumer identity to call this API.",
        )
    if key == "sim-invalid":
        raise google_error(
            403,
            "API key not valid. Please pass a valid API key.",
            details=[
                {
                    "@type": "type.googleapis.com/google.rpc.ErrorInfo",
                    "reason": "API_KEY_INVALID",
                    "domain": "googleapis.com",
                    "metadata": {"service": "generativelanguage.googleapis.com"},
                }
            ],
        )


def _not_found(model_id: str, method: str) -> SimError:
    return google_error(
        404,
        f"models/{model_id} is not found for API version v1beta, or is not supported for "
        f"{method}. Call ListModels to see the list of available models and their supported "
        "methods.",
    )


def check_roles(body: Any) -> None:
    """Vertex (unlike the Gemini API) refuses contents without a `role`."""
    contents = body.get("contents") if isinstance(body, dict) else None
    for item in contents if isinstance(contents, list) else []:
        if isinstance(item, dict) and item.get("role") not in ("user", "model"):
            raise invalid_argument(
                "Unable to submit request because Please use a valid role: user, model.. Learn "
                "more: https://cloud.google.com/vertex-ai/generative-ai/docs/model-reference/gemini"
            )


async def handle_generate(
    request: Request,
    ctx: SimContext,
    record: dict[str, Any],
    model_id: str,
    method: str,
    auth: Callable[[Request], None] = _auth,
    vertex: bool = False,
) -> Response:
    record["model"] = model_id
    # read and record the body first so even refused requests show what was sent; the key and
    # the model are still checked before the body, as Google does
    content_type = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
    data = await read_body(request, MAX_REQUEST_BYTES)
    body: Any = None
    body_error: SimError | None = None
    if data is None:
        body_error = invalid_argument(
            f"Request payload size exceeds the limit: {MAX_REQUEST_BYTES} bytes."
        )
    elif content_type not in ("application/json", ""):
        body_error = invalid_argument(
            f"Invalid JSON payload received. Unexpected Content-Type: {content_type}."
        )
    else:
        try:
            body = orjson.loads(data)
            record["json"] = await run_in_threadpool(summarize_json, body)
        except orjson.JSONDecodeError as exc:
            body_error = invalid_argument(f"Invalid JSON payload received. {exc}.")
    auth(request)
    if method not in ("generateContent", "streamGenerateContent"):
        raise google_error(404, f"Method {method} is not found for models/{model_id}.")
    if model_id not in MODELS:
        raise _not_found(model_id, method)
    if body_error is not None:
        raise body_error
    check_schema(body)
    if vertex:
        check_roles(body)
    images = collect_images(body)
    try:
        req = await run_in_threadpool(validate, body, model_id, images)
    finally:
        record["files"] = await run_in_threadpool(lambda: [i.describe() for i in images])

    fault = ctx.state.take_fault("gemini", model_id) or prompt_directive(req.prompt)
    kind = fault.kind if fault is not None else None
    record["fault"] = kind
    delay = ctx.state.latency_s
    if fault is not None and kind in ("latency", "timeout"):
        default = DEFAULT_TIMEOUT_DELAY_S if kind == "timeout" else 1.0
        delay += fault.delay_s if fault.delay_s is not None else default
    if fault is not None and kind == "status":
        raise status_error(fault)
    if kind == "disconnect":
        return DisconnectResponse()
    if await pause(request, delay):
        return Response(status_code=CLIENT_GONE_STATUS)
    if kind == "timeout":
        raise google_error(504, GOOGLE_DEFAULT_MESSAGES[504])

    if fault is not None and kind == "safety":
        result = safety_body(req, fault)
    elif kind == "text_only":
        result = no_image_body(req, "STOP")
    elif kind == "short":
        result = no_image_body(req, "NO_IMAGE")
    elif "IMAGE" not in req.modalities:
        result = success_body(req, None, None)
    else:
        final, thought = await run_in_threadpool(_render, req)
        result = success_body(req, final, thought)
    if kind == "no_usage":
        result.pop("usageMetadata", None)

    if method == "generateContent":
        return json_response(result)
    chunks = list(_stream_chunks(result))
    if request.query_params.get("alt") == "sse":

        async def events() -> Any:
            for chunk in chunks:
                yield b"data: " + orjson.dumps(chunk) + b"\r\n\r\n"

        return StreamingResponse(events(), media_type="text/event-stream")
    return json_response(chunks)


def routes(ctx: SimContext) -> list[Route]:
    async def generate(request: Request) -> Response:
        record = begin_record(request, ctx.state, "gemini")
        model_id, _, method = request.path_params["model_action"].rpartition(":")
        if not model_id:
            model_id, method = method, ""
        try:
            response = await handle_generate(request, ctx, record, model_id, method)
        except SimError as exc:
            response = exc.to_response()
        record_status(record, response)
        return response

    async def list_models(request: Request) -> Response:
        seen = sorted(MODELS)
        return json_response(
            {
                "models": [
                    {
                        "name": f"models/{model_id}",
                        "displayName": model_id,
                        "supportedGenerationMethods": ["generateContent", "streamGenerateContent"],
                    }
                    for model_id in seen
                ]
            }
        )

    async def get_model(request: Request) -> Response:
        model_id = request.path_params["model_action"]
        if model_id not in MODELS:
            return json_response(google_body(404, f"models/{model_id} is not found."), 404)
        return json_response(
            {
                "name": f"models/{model_id}",
                "displayName": model_id,
                "supportedGenerationMethods": ["generateContent", "streamGenerateContent"],
            }
        )

    return [
        Route("/v1beta/models", list_models, methods=["GET"]),
        Route("/v1beta/models/{model_action}", generate, methods=["POST"]),
        Route("/v1beta/models/{model_action}", get_model, methods=["GET"]),
    ]
