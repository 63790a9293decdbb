"""POST /v1/images/edits and /v1/images/generations (and their /v1/openai/... twins) — one
thin handler for every path; only the body parser differs per operation.

Authenticate from the header before reading the body (an unknown caller never makes the
gateway read 200 MB or fetch a URL), normalize the body, hand over to the edit service.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from fastapi import APIRouter, Request
from starlette.responses import Response, StreamingResponse
from starlette.types import Receive, Scope, Send

from app.api.body import parse_edit_body, parse_generation_body
from app.api.deps import base_url, gateway
from app.api.responses import JSONResponse, error_response, trace_id_of
from app.core.errors import GatewayError, too_large
from app.gateway import Gateway
from app.media.spool import Spool
from app.service import EditContext

router = APIRouter(tags=["images"])

_FIELDS = {
    "model": {"type": "string", "example": "gpt-image-2"},
    "prompt": {"type": "string"},
    "image": {"description": "file part(s) `image`, `image[]`, or image URL(s)"},
    "mask": {"description": "PNG file part or URL"},
    "n": {"type": "integer"},
    "size": {"type": "string", "example": "1024x1024"},
    "quality": {"type": "string"},
    "response_format": {"type": "string", "enum": ["url", "b64_json"]},
    "background": {"type": "string"},
    "output_format": {"type": "string"},
    "output_compression": {"type": "integer"},
    "input_fidelity": {"type": "string"},
    "moderation": {"type": "string"},
    "user": {"type": "string"},
    "stream": {"type": "boolean"},
    "partial_images": {"type": "integer"},
    "callback_url": {"type": "string"},
}
_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {"schema": {"type": "object", "properties": _FIELDS}},
            "application/json": {"schema": {"type": "object", "properties": _FIELDS}},
        },
    }
}
_GEN_FIELDS = {k: v for k, v in _FIELDS.items() if k not in ("image", "mask", "input_fidelity")}
_GEN_BODY = {
    "requestBody": {
        "required": True,
        "content": {"application/json": {"schema": {"type": "object", "properties": _GEN_FIELDS}}},
    }
}
_PARSERS = {"edit": parse_edit_body, "generate": parse_generation_body}


async def edit_image(request: Request) -> Response:
    return _Delegate(edit_asgi)


async def generate_image(request: Request) -> Response:
    return _Delegate(generate_asgi)


class _Delegate(Response):
    """What the FastAPI-registered twins return: sending it runs the pure ASGI handler, so
    both paths share one spool lifetime (the router twins exist for `/openapi.json`)."""

    def __init__(self, app: Callable[[Scope, Receive, Send], Awaitable[None]]) -> None:
        super().__init__()
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self.app(scope, receive, send)


async def _handle(request: Request, operation: str, gw: Gateway, spool: Spool) -> Response:
    key = await gw.meter.authenticate(request.headers.get("authorization"))
    header = request.headers.get("content-length")
    declared = int(header) if header is not None and header.isdigit() else None
    limit = gw.config.limits.max_body_bytes
    if declared is not None and declared > limit:
        # Refuse before reading: the parser would stop at the limit anyway, but later.
        raise too_large(f"request body is larger than {limit} bytes")
    req = await _PARSERS[operation](
        request.headers.get("content-type"),
        request.stream(),
        gw.config.limits,
        default_model=gw.config.default_model,
        spool=spool,
        declared=declared,
    )
    if declared is not None and declared >= gw.config.limits.spool_threshold_bytes:
        gw.heap.soon()  # the upload's socket buffers are free now: trim the heap shortly
    ctx = EditContext(trace_id=trace_id_of(request), base_url=base_url(request, gw), spool=spool)
    reply = await gw.service.edit(key, req, ctx, request.headers.get("idempotency-key"))
    if reply.raw is not None:
        if reply.trace_id:  # x-request-id must equal the body's trace_id
            request.state.trace_id = reply.trace_id
        return Response(reply.raw, media_type="application/json", headers=reply.headers)
    if reply.events is not None:
        return StreamingResponse(
            reply.events, media_type="text/event-stream", headers=reply.headers
        )
    return JSONResponse(reply.body, headers=reply.headers)


def _asgi(operation: str) -> Callable[[Scope, Receive, Send], Awaitable[None]]:
    """The handler as a pure ASGI app, for `GatewayApp.fast_routes` (no framework layers).

    It owns the request's spool (app/media/spool.py): large image bytes live in its files
    until the response has been sent -- streamed or not, on success, error, disconnect or
    cancellation -- and are closed here, never earlier (the upstream reads them).
    """

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        request = Request(scope, receive)
        gw = gateway(request)
        spool = Spool(gw.spool_dir, anonymous=gw.config.limits.spool_anonymous)
        try:
            try:
                response = await _handle(request, operation, gw, spool)
            except GatewayError as exc:
                response = error_response(request, exc)
            await response(scope, receive, send)
        finally:
            spool.close()

    return app


edit_asgi = _asgi("edit")
generate_asgi = _asgi("generate")

PATHS = ("/v1/images/edits", "/v1/openai/images/edits")
GENERATION_PATHS = ("/v1/images/generations", "/v1/openai/images/generations")
FAST_ROUTES = {("POST", path): edit_asgi for path in PATHS} | {
    ("POST", path): generate_asgi for path in GENERATION_PATHS
}

for _path in PATHS:
    router.add_api_route(
        _path,
        edit_image,
        methods=["POST"],
        summary="Edit images (OpenAI-compatible)",
        openapi_extra=_BODY,
        include_in_schema=True,
    )
for _path in GENERATION_PATHS:
    router.add_api_route(
        _path,
        generate_image,
        methods=["POST"],
        summary="Generate images (OpenAI-compatible)",
        openapi_extra=_GEN_BODY,
        include_in_schema=True,
    )
