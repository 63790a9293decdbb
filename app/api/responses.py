"""orjson-backed responses and the one error envelope."""

from __future__ import annotations

from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response

from app.core.errors import GatewayError, envelope


class JSONResponse(Response):
    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        return orjson.dumps(content)


def trace_id_of(request: Request) -> str:
    """The request's trace id (set by RequestContextMiddleware in `scope["state"]`)."""
    return str(request.scope.get("state", {}).get("trace_id", ""))


def error_response(request: Request, err: GatewayError) -> JSONResponse:
    return JSONResponse(envelope(err, trace_id_of(request)), err.status, headers=err.headers)
