"""Pure ASGI middleware (no BaseHTTPMiddleware: no extra task or body copy per request).

Gives every request a trace id (`scope["state"]["trace_id"]`, echoed as `x-request-id` on every
response), turns any exception that escaped the handlers into the error envelope — never a
stack trace — and writes one structured access-log line.
"""

from __future__ import annotations

import time
import uuid
from typing import Any

import orjson
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.core import tracing
from app.core.errors import GatewayError, envelope
from app.core.logging import fields, get_logger

log = get_logger("imagegate.access")


class RequestContextMiddleware:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        trace_id = str(uuid.uuid4())
        scope.setdefault("state", {})["trace_id"] = trace_id
        t0 = time.perf_counter()
        status = 0

        async def send_with_id(message: Message) -> None:
            nonlocal status, trace_id
            if message["type"] == "http.response.start":
                status = message["status"]
                # A handler may answer under another trace id (an idempotent replay answers
                # with the first request's), so the header follows the state, not the start.
                trace_id = scope["state"]["trace_id"]
                message["headers"] = [
                    *message.get("headers", ()),
                    (b"x-request-id", trace_id.encode()),
                ]
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        except Exception:
            log.exception("request.unhandled", extra=fields(trace_id=trace_id))
            if status == 0:
                status = 500
                err = GatewayError("api_error", "internal error")
                await _send_json(send, 500, envelope(err, trace_id), trace_id.encode())
        finally:
            if scope["path"] not in ("/healthz", "/metrics"):
                log.info(
                    "request",
                    extra=fields(
                        trace_id=trace_id,
                        method=scope["method"],
                        path=scope["path"],
                        status=status,
                        ms=round((time.perf_counter() - t0) * 1000, 2),
                    ),
                )


class TracingMiddleware:
    """One OpenTelemetry server span per HTTP request (installed only when tracing is on)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        with tracing.server_span(scope["method"], scope["path"], scope["headers"]) as span:
            trace_id = scope.get("state", {}).get("trace_id")
            if trace_id:
                span.set_attribute("imagegate.trace_id", trace_id)

            async def send_traced(message: Message) -> None:
                if message["type"] == "http.response.start":
                    tracing.set_status(span, message["status"])
                await send(message)

            await self.app(scope, receive, send_traced)


async def _send_json(send: Send, status: int, body: dict[str, Any], rid: bytes) -> None:
    payload = orjson.dumps(body)
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(payload)).encode()),
                (b"x-request-id", rid),
            ],
        }
    )
    await send({"type": "http.response.body", "body": payload})
