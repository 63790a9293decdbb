"""The ASGI application: routes, the error envelope for every failure, and the lifespan that
builds the `Gateway` once per process."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException

from app import __version__
from app.api.middleware import FastRoutes, RequestContextMiddleware, TracingMiddleware
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

    app = FastAPI(
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
    app.add_middleware(FastRoutes, routes=edits.FAST_ROUTES)
    if tracing.enabled():  # off: not even a pass-through layer
        app.add_middleware(TracingMiddleware)
    app.add_middleware(RequestContextMiddleware)  # added last: outermost of the two
    return app
