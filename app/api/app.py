"""The ASGI application: routes, the error envelope for every failure, and the lifespan that
builds the `Gateway` once per process."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Receive, Scope, Send

from app import __version__
from app.api.middleware import RequestContextMiddleware, TracingMiddleware
from app.api.responses import JSONResponse, error_response
from app.api.routes import (
    admin,
    admin_tasks,
    audit,
    channels,
    edits,
    files,
    health,
    me,
    reload,
    tasks,
)
from app.api.views import ErrorEnvelope
from app.console import routes as console
from app.core import tracing
from app.core.config import GatewayConfig, Settings
from app.core.errors import GatewayError
from app.gateway import Gateway

_HTTP_CODES = {404: "not_found", 405: "method_not_allowed", 413: "payload_too_large"}


class GatewayApp(FastAPI):
    """FastAPI, with the hottest endpoints (`edits.FAST_ROUTES`) answered before its layers.

    A request for one of `fast_routes` goes straight to its handler wrapped in our two
    middlewares (request context, and tracing when on): FastAPI's error, telemetry and body
    limit layers and its router would only pass it through (the handler turns every error into
    the envelope itself; measured in bench/results/2026-11-29-hotpath.md). Every other request
    takes FastAPI's full stack, which has the same two middlewares.
    """

    fast_routes: dict[tuple[str, str], ASGIApp]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            handler = self.fast_routes.get((scope["method"], scope["path"]))
            if handler is not None:
                scope["app"] = self  # what Starlette sets: `request.app` finds the gateway
                await handler(scope, receive, send)
                return
        await super().__call__(scope, receive, send)


def create_app(
    settings: Settings | None = None,
    config: GatewayConfig | None = None,
    gateway: Gateway | None = None,
) -> FastAPI:
    """Build the app. A ready `gateway` may be passed (tests); else the lifespan builds one."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        gw = gateway or Gateway(settings or Settings(), config)
        app.state.gateway = gw
        await gw.start()
        try:
            yield
        finally:
            await gw.aclose()

    app = GatewayApp(
        title="imagegate",
        version=__version__,
        description="OpenAI-compatible image-edit gateway",
        lifespan=lifespan,
        docs_url=None,  # served by app/console with assets from this package (works offline)
        redoc_url=None,
        # Every failure, on every route, is the one error envelope (docs/API.md, "Errors").
        responses={
            "4XX": {"model": ErrorEnvelope, "description": "Client error"},
            "5XX": {"model": ErrorEnvelope, "description": "Server or upstream error"},
        },
    )

    @app.exception_handler(GatewayError)
    async def on_gateway_error(request: Request, exc: GatewayError) -> JSONResponse:
        return error_response(request, exc)

    @app.exception_handler(RequestValidationError)
    async def on_validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {}
        if first.get("type") == "json_invalid":
            return error_response(request, GatewayError("bad_request", "malformed JSON body"))
        loc = [p for p in first.get("loc", ()) if isinstance(p, str)]
        loc = [p for p in loc if p not in ("body", "query", "path")]
        msg = first.get("msg", "invalid request")
        param = ".".join(loc) or None
        text = f"{param}: {msg}" if param else msg
        return error_response(request, GatewayError("bad_request", text, param=param))

    @app.exception_handler(HTTPException)
    async def on_http(request: Request, exc: HTTPException) -> JSONResponse:
        code = _HTTP_CODES.get(
            exc.status_code, "bad_request" if exc.status_code < 500 else "api_error"
        )
        return error_response(request, GatewayError(code, str(exc.detail), status=exc.status_code))

    for module in (edits, files, health, me, tasks, admin, audit, admin_tasks, channels, reload):
        app.include_router(module.router)
    console.install(app)
    if tracing.enabled():  # off: not even a pass-through layer
        app.add_middleware(TracingMiddleware)
    app.add_middleware(RequestContextMiddleware)  # added last: outermost of the two
    app.fast_routes = {route: _wrapped(handler) for route, handler in edits.FAST_ROUTES.items()}
    return app


def _wrapped(handler: ASGIApp) -> ASGIApp:
    """A fast route's handler inside the same two middlewares every other request passes."""
    if tracing.enabled():
        handler = TracingMiddleware(handler)
    return RequestContextMiddleware(handler)
