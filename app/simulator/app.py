"""Assembles the simulator ASGI app and runs it under uvicorn."""

from __future__ import annotations

import logging

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from app.simulator import cloud_api, control, gemini_api, openai_api
from app.simulator.common import SimContext
from app.simulator.errors import SimulatedDisconnect, google_body, json_response, openai_body
from app.simulator.state import SimulatorState


class _DropSimulatedDisconnects(logging.Filter):
    """Keep uvicorn from logging a traceback for every injected `disconnect` fault."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        return not isinstance(exc, SimulatedDisconnect)


def _install_log_filter() -> None:
    logger = logging.getLogger("uvicorn.error")
    if not any(isinstance(f, _DropSimulatedDisconnects) for f in logger.filters):
        logger.addFilter(_DropSimulatedDisconnects())


def create_simulator_app(
    state: SimulatorState | None = None, *, public_base_url: str | None = None
) -> Starlette:
    """The simulated upstream as an ASGI app.

    Clients configure OpenAI as ``http://HOST:PORT/v1`` and Gemini as ``http://HOST:PORT/v1beta``;
    ``/_sim/...`` is the control API. ``public_base_url`` is the root URL clients reach the app
    at (used for dall-e-2 ``url`` results); by default the request's own base URL.
    """
    _install_log_filter()
    ctx = SimContext(state=state or SimulatorState(), public_base_url=public_base_url)

    async def index(request: Request) -> Response:
        base = ctx.base_url(request)
        return json_response(
            {
                "service": "imagegate simulated upstream",
                "openai_base_url": f"{base}/v1",
                "gemini_base_url": f"{base}/v1beta",
                "azure_openai_base_url": base,
                "vertex_base_url": f"{base}/v1",
                "endpoints": [
                    "POST /v1/images/edits",
                    "POST /v1/images/generations",
                    "POST /v1beta/models/{model}:generateContent",
                    "POST /openai/deployments/{deployment}/images/edits?api-version=...",
                    "POST /openai/deployments/{deployment}/images/generations?api-version=...",
                    "POST /v1/publishers/google/models/{model}:generateContent",
                    "POST /v1/projects/{p}/locations/{l}/publishers/google/models/{model}:"
                    "generateContent",
                    "POST /token",
                ],
                "control": [
                    "POST|GET|DELETE /_sim/faults",
                    "GET|POST /_sim/config",
                    "GET|DELETE /_sim/requests",
                    "POST /_sim/reset",
                ],
                "keys": "any non-empty key works; sk-sim-invalid / sim-invalid are refused",
            }
        )

    async def openai_not_found(request: Request) -> Response:
        message = f"Invalid URL ({request.method} {request.url.path})"
        return json_response(openai_body(message), 404)

    async def google_not_found(request: Request) -> Response:
        return json_response(google_body(404, "Requested entity was not found."), 404)

    methods = ["GET", "POST", "PUT", "PATCH", "DELETE"]
    routes = [
        Route("/", index, methods=["GET"]),
        *openai_api.routes(ctx),
        *gemini_api.routes(ctx),
        *cloud_api.routes(ctx),
        *control.routes(ctx),
        Route("/v1/{rest:path}", openai_not_found, methods=methods),
        Route("/v1beta/{rest:path}", google_not_found, methods=methods),
    ]
    app = Starlette(routes=routes)
    app.state.simulator = ctx.state
    return app


def run(host: str = "127.0.0.1", port: int = 8090, *, public_base_url: str | None = None) -> None:
    """Serve the simulator until interrupted (`imagegate simulate --port P`)."""
    app = create_simulator_app(public_base_url=public_base_url)
    shown = public_base_url or f"http://{host}:{port}"
    print(
        f"imagegate simulated upstream on {shown}\n"
        f"  OpenAI base URL: {shown}/v1    Gemini base URL: {shown}/v1beta\n"
        f"  control API:     {shown}/_sim/faults, /_sim/requests, /_sim/config",
        flush=True,
    )
    uvicorn.run(app, host=host, port=port, log_level="info")
