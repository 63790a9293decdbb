"""OpenAI `POST /v1/images/edits` and `/v1/images/generations`: read, validate (see
:mod:`openai_rules`), fault, answer.

Answers follow reference/upstream-protocols.md section 3: `ImagesResponse` with `usage`,
`size`, `quality`, `output_format` and `background` for GPT image models; `url` results for
dall-e-2 served from this app; SSE `image_edit.partial_image` / `image_edit.completed` events
when `stream=true` (`image_generation.*` for generations).
"""

from __future__ import annotations

import asyncio
import base64
import math
import time
from collections.abc import Callable
from typing import Any

import orjson
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

from app.simulator.common import (
    CLIENT_GONE_STATUS,
    MAX_BODY_BYTES,
    DisconnectResponse,
    SimContext,
    begin_record,
    new_id,
    pause,
    read_body,
    record_status,
)
from app.simulator.errors import (
    OPENAI_DEFAULTS,
    SimError,
    bad_request,
    json_response,
    openai_body,
    openai_error,
)
from app.simulator.faults import DEFAULT_TIMEOUT_DELAY_S, Fault, prompt_directive
from app.simulator.imaging import ImageDecodeError, RenderSpec, render
from app.simulator.multipart import BodyTooLarge, MultipartError, Part, read_multipart
from app.simulator.openai_rules import (
    NO_INPUT_FIDELITY,
    Edit,
    InputImage,
    RawEdit,
    parse_generation,
    parse_json,
    parse_multipart,
    validate,
)
from app.simulator.state import summarize_json

# image output tokens for gpt-image-1 / -1.5 / mini at 1024x1024, 1024x1536, 1536x1024
_OUTPUT_TOKENS = {
    "low": (272, 408, 400),
    "medium": (1056, 1584, 1568),
    "high": (4160, 6240, 6208),
}


def resolved_quality(edit: Edit) -> str:
    return "high" if edit.quality == "auto" else edit.quality


def usage(edit: Edit, images_out: int) -> dict[str, Any]:
    """Plausible `ImagesUsage`: token counts shaped like OpenAI's (reference §5b)."""
    text_tokens = max(1, len(edit.prompt) // 4)
    image_tokens = 0
    for image in edit.images:
        info = image.info
        tiles = 1 if info is None else math.ceil(info.width / 512) * math.ceil(info.height / 512)
        image_tokens += 65 + 129 * min(tiles, 6)
    if edit.input_fidelity == "high" or edit.model in NO_INPUT_FIDELITY:
        image_tokens += 2048 * min(len(edit.images), 2)  # high fidelity: more input tokens
    square, portrait, landscape = _OUTPUT_TOKENS[resolved_quality(edit)]
    by_size = {(1024, 1024): square, (1024, 1536): portrait, (1536, 1024): landscape}
    per_image = by_size.get((edit.width, edit.height))
    if per_image is None:  # gpt-image-2 custom sizes: scale the square cost by pixel count
        per_image = round(square * edit.width * edit.height / (1024 * 1024))
    output = per_image * images_out + 100 * edit.partial_images * (1 if edit.stream else 0)
    return {
        "total_tokens": text_tokens + image_tokens + output,
        "input_tokens": text_tokens + image_tokens,
        "output_tokens": output,
        "input_tokens_details": {"text_tokens": text_tokens, "image_tokens": image_tokens},
        "output_tokens_details": {"image_tokens": output, "text_tokens": 0},
    }


def stream_usage(edit: Edit) -> dict[str, Any]:
    """The `usage` of a streamed `image_edit.completed` event: `ImagesUsage`, which has no
    `output_tokens_details` (reference §1d), so all output tokens are image tokens."""
    full = usage(edit, 1)
    full.pop("output_tokens_details")
    return full


def _specs(edit: Edit, count: int, partials: int) -> list[RenderSpec]:
    first = edit.images[0].info if edit.images else None
    return [
        RenderSpec(
            source_sha256=first.sha256 if first else None,
            prompt=edit.prompt,
            width=edit.width,
            height=edit.height,
            format=edit.output_format,
            index=i,
            transparent=edit.background == "transparent",
            compression=edit.compression,
            partials=partials,
        )
        for i in range(count)
    ]


def _render_all(edit: Edit, count: int, partials: int = 0) -> list[Any]:
    source = edit.images[0].data if edit.images else None  # a generation draws from nothing
    try:
        return [render(source, spec) for spec in _specs(edit, count, partials)]
    except ImageDecodeError:
        raise bad_request(
            "Invalid image file or mode for image 1, please check your image file.",
            param="image",
            code="invalid_image_file",
        ) from None


def moderation_error(fault: Fault) -> SimError:
    stage = "input" if fault.where == "prompt" else "output"
    return openai_error(
        400,
        fault.message
        or "Your request was rejected by the safety system. If you believe this is an error, "
        f"contact us at help.openai.com and include the request ID {new_id('req_')}.",
        type="image_generation_user_error",
        code="moderation_blocked",
        moderation_details={"moderation_stage": stage, "categories": ["other"]},
    )


def status_error(fault: Fault) -> SimError:
    status = fault.status or 500
    headers = dict(fault.headers)
    if fault.retry_after is not None:
        headers.setdefault("retry-after", f"{fault.retry_after:g}")
    if status == 429:
        headers.setdefault("x-ratelimit-remaining-requests", "0")
    if fault.body is not None:
        return SimError(status, fault.body, headers)
    type_, code, message = OPENAI_DEFAULTS.get(
        status, ("server_error" if status >= 500 else "invalid_request_error", None, "Error.")
    )
    return openai_error(
        status,
        fault.message or message,
        type=type_,
        code=fault.code if fault.code is not None else code,
        headers=headers,
    )


def _sse(event: str, payload: dict[str, Any]) -> bytes:
    return b"event: " + event.encode() + b"\ndata: " + orjson.dumps(payload) + b"\n\n"


def _stream_response(
    edit: Edit, rendered: list[Any], fault: Fault | None, delay: float
) -> StreamingResponse:
    """`image_edit.partial_image` events then `image_edit.completed` (reference §3b); a
    generation's are `image_generation.*`."""
    prefix = "image_generation" if edit.operation == "generate" else "image_edit"
    size = f"{edit.width}x{edit.height}"
    common = {
        "size": size,
        "quality": resolved_quality(edit),
        "background": "transparent" if edit.background == "transparent" else "opaque",
        "output_format": edit.output_format,
    }
    events = sum(1 + len(item.partials) for item in rendered) or 1
    step = delay / events

    async def body() -> Any:
        for item in rendered:
            for index, partial in enumerate(item.partials):
                if step:
                    await asyncio.sleep(step)
                yield _sse(
                    f"{prefix}.partial_image",
                    {
                        "type": f"{prefix}.partial_image",
                        "b64_json": base64.b64encode(partial).decode(),
                        "created_at": int(time.time()),
                        **common,
                        "partial_image_index": index,
                    },
                )
            if fault is not None and fault.kind == "safety":
                error = moderation_error(fault).body["error"]
                yield _sse("error", {"type": "error", "error": error})
                return
            if step:
                await asyncio.sleep(step)
            yield _sse(
                f"{prefix}.completed",
                {
                    "type": f"{prefix}.completed",
                    "b64_json": base64.b64encode(item.final).decode(),
                    "created_at": int(time.time()),
                    **common,
                    "usage": stream_usage(edit),
                },
            )

    return StreamingResponse(
        body(), media_type="text/event-stream", headers={"cache-control": "no-cache"}
    )


def _images_response(edit: Edit, rendered: list[Any], ctx: SimContext, request: Request) -> dict:
    data: list[dict[str, Any]] = []
    for item in rendered:
        if edit.response_format == "url":
            name = ctx.state.files.put(item.final, "image/png", "png")
            data.append({"url": f"{ctx.base_url(request)}/v1/files/{name}"})
        else:
            data.append({"b64_json": base64.b64encode(item.final).decode()})
    body: dict[str, Any] = {"created": int(time.time()), "data": data}
    if edit.is_gpt:
        body.update(
            background="transparent" if edit.background == "transparent" else "opaque",
            output_format=edit.output_format,
            quality=resolved_quality(edit),
            size=f"{edit.width}x{edit.height}",
            usage=usage(edit, len(rendered)),
        )
    return body


def _check_auth(request: Request) -> None:
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        raise openai_error(
            401,
            "You didn't provide an API key. You need to provide your API key in an "
            "Authorization header using Bearer auth (i.e. Authorization: Bearer YOUR_KEY), or "
            "as the password field (with blank username) if you're accessing the API from your "
            "browser and are prompted for a username and password. You can obtain an API key "
            "from https://platform.openai.com/account/api-keys.",
        )
    if token == "sk-sim-invalid":
        raise openai_error(
            401,
            f"Incorrect API key provided: {token[:3]}*****{token[-4:]}. You can find your API "
            "key at https://platform.openai.com/account/api-keys.",
            code="invalid_api_key",
        )


def _describe_raw(raw: RawEdit) -> list[dict[str, Any]]:
    files = [img.describe(name) for img, name in zip(raw.images, raw.image_names, strict=False)]
    if raw.mask is not None:
        files.append(raw.mask.describe("mask"))
    return files


def _describe_parts(parts: list[Part]) -> list[dict[str, Any]]:
    return [
        InputImage(p.name, p.filename, p.content_type, p.data).describe(p.name)
        for p in parts
        if p.is_file
    ]


def _form_fields(parts: list[Part]) -> dict[str, Any]:
    """Text parts as {name: value}, or {name: [values...]} when a name repeats."""
    fields: dict[str, Any] = {}
    for part in parts:
        if part.is_file:
            continue
        value = part.text()
        if part.name not in fields:
            fields[part.name] = value
        elif isinstance(fields[part.name], list):
            fields[part.name].append(value)
        else:
            fields[part.name] = [fields[part.name], value]
    return fields


async def _read_json(request: Request, record: dict[str, Any]) -> Any:
    data = await read_body(request)
    if data is None:
        raise openai_error(413, "Request entity too large.")
    try:
        body = orjson.loads(data)
    except orjson.JSONDecodeError:
        raise bad_request(
            "We could not parse the JSON body of your request. (HINT: This likely means you "
            "aren't using your HTTP library correctly. The OpenAI API expects a JSON "
            "payload, but what was sent was not valid JSON. If you have trouble figuring "
            "out how to fix this, please contact us through our help center at "
            "help.openai.com.)"
        ) from None
    record["json"] = await run_in_threadpool(summarize_json, body)
    if isinstance(body, dict) and isinstance(body.get("model"), str):
        record["model"] = body["model"]
    return body


async def _read_generation(request: Request, record: dict[str, Any]) -> RawEdit:
    """A generation body: JSON only, as the real endpoint."""
    content_type = request.headers.get("content-type", "")
    if content_type.split(";", 1)[0].strip().lower() != "application/json":
        raise bad_request(
            f"Invalid Content-Type header ({content_type or 'none'}), expected application/json."
        )
    return parse_generation(await _read_json(request, record))


async def _read(
    request: Request, record: dict[str, Any], check_auth: Callable[[Request], None]
) -> RawEdit:
    """Read and structurally parse the body, recording what arrived even if it is refused."""
    content_type = request.headers.get("content-type", "")
    mime = content_type.split(";", 1)[0].strip().lower()
    if mime == "multipart/form-data":
        try:
            parts = await read_multipart(request.stream(), content_type, max_body=MAX_BODY_BYTES)
        except BodyTooLarge:
            raise openai_error(413, "Request entity too large.") from None
        except MultipartError as exc:
            raise bad_request(f"Could not parse multipart form: {exc}.") from None
        record["fields"] = _form_fields(parts)
        model = record["fields"].get("model")
        record["model"] = model if isinstance(model, str) else None
        try:
            raw = parse_multipart(parts)
        except SimError:
            record["files"] = await run_in_threadpool(_describe_parts, parts)
            raise
        record["files"] = await run_in_threadpool(_describe_raw, raw)
        return raw
    if mime == "application/json":
        body = await _read_json(request, record)
        check_auth(request)  # before fetching any image_url on the caller's behalf
        raw = await parse_json(body)
        record["files"] = await run_in_threadpool(_describe_raw, raw)
        return raw
    raise bad_request(
        f"Invalid Content-Type header ({content_type or 'none'}), expected multipart/form-data "
        "or application/json."
    )


def _pick_fault(ctx: SimContext, edit: Edit) -> Fault | None:
    return ctx.state.take_fault("openai", edit.model) or prompt_directive(edit.prompt)


async def handle_edit(
    request: Request,
    ctx: SimContext,
    record: dict[str, Any],
    check_auth: Callable[[Request], None] = _check_auth,
    *,
    generation: bool = False,
) -> Response:
    """The whole `POST /v1/images/edits` (or, with `generation`, `/v1/images/generations`)
    flow; raises SimError for error answers.

    Faults apply only to requests that passed validation, so strictness errors always show and
    a queued fault is never used up by a request that would have failed anyway.
    """
    try:  # recorded even when refused
        if generation:
            raw = await _read_generation(request, record)
        else:
            raw = await _read(request, record, check_auth)
    except SimError:
        check_auth(request)  # a bad key wins over a bad body, as upstream checks it first
        raise
    check_auth(request)
    edit = await run_in_threadpool(
        lambda: validate(
            raw, dalle2_require_alpha=ctx.state.dalle2_require_alpha, generation=generation
        )
    )
    record["model"] = edit.model
    fault = _pick_fault(ctx, edit)
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
    if fault is not None and kind == "safety" and not (edit.stream and fault.where == "output"):
        raise moderation_error(fault)
    if kind == "timeout":
        if await pause(request, delay):
            return Response(status_code=CLIENT_GONE_STATUS)
        raise openai_error(504, "Gateway timeout.", type="server_error")

    count = edit.n
    if fault is not None and kind == "short":
        count = max(0, edit.n - fault.count)
    elif kind == "text_only":
        count = 0
    if edit.stream:
        rendered = await run_in_threadpool(_render_all, edit, count, edit.partial_images)
        return _stream_response(edit, rendered, fault, delay)
    if await pause(request, delay):
        return Response(status_code=CLIENT_GONE_STATUS)
    rendered = await run_in_threadpool(_render_all, edit, count)
    body = _images_response(edit, rendered, ctx, request)
    if kind == "no_usage":
        body.pop("usage", None)
    return json_response(body)


def routes(ctx: SimContext) -> list[Route]:
    async def edits(request: Request) -> Response:
        return await _serve(request, generation=False)

    async def generations(request: Request) -> Response:
        return await _serve(request, generation=True)

    async def _serve(request: Request, *, generation: bool) -> Response:
        record = begin_record(request, ctx.state, "openai")
        started = time.perf_counter()
        try:
            response = await handle_edit(request, ctx, record, generation=generation)
        except SimError as exc:
            response = exc.to_response()
        record_status(record, response)
        response.headers["x-request-id"] = new_id("req_", 16)
        response.headers["openai-processing-ms"] = str(int((time.perf_counter() - started) * 1000))
        response.headers["openai-version"] = "2020-10-01"
        response.headers["openai-organization"] = "org-imagegate-simulator"
        return response

    async def file(request: Request) -> Response:
        item = ctx.state.files.get(request.path_params["name"])
        if item is None:
            return json_response(openai_body("File not found.", code="not_found"), 404)
        return Response(item[0], media_type=item[1])

    return [
        Route("/v1/images/edits", edits, methods=["POST"]),
        Route("/v1/images/generations", generations, methods=["POST"]),
        Route("/v1/files/{name}", file, methods=["GET"]),
    ]
