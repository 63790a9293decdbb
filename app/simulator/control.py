"""The `/_sim/...` control API: queue faults, set latency, read what the simulator received.

Plain JSON without auth: the simulator only ever listens where its owner put it (tests,
`imagegate simulate`, or the gateway's fallback upstream on loopback).
"""

from __future__ import annotations

from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from app.simulator.common import SimContext
from app.simulator.errors import json_response
from app.simulator.faults import FaultSpecError, parse_fault


def _problem(message: str, status: int = 400) -> Response:
    return json_response({"error": message}, status)


async def _json(request: Request) -> Any:
    data = await request.body()
    if not data.strip():
        return {}
    return orjson.loads(data)


def routes(ctx: SimContext) -> list[Route]:
    state = ctx.state

    async def add_faults(request: Request) -> Response:
        """Body: one fault object or a list of them; answers the queued faults."""
        try:
            spec = await _json(request)
            specs = spec if isinstance(spec, list) else [spec]
            faults = [parse_fault(item) for item in specs]
        except orjson.JSONDecodeError:
            return _problem("body must be JSON")
        except FaultSpecError as exc:
            return _problem(str(exc))
        for fault in faults:
            state.add_fault(fault)
        payload = [f.to_dict() for f in faults]
        return json_response(payload if isinstance(spec, list) else payload[0], 201)

    async def list_faults(request: Request) -> Response:
        return json_response([f.to_dict() for f in state.faults])

    async def clear_faults(request: Request) -> Response:
        return json_response({"cleared": state.clear_faults()})

    async def get_config(request: Request) -> Response:
        return json_response(
            {
                "latency_s": state.latency_s,
                "dalle2_require_alpha": state.dalle2_require_alpha,
                "token_lifetime_s": state.token_lifetime_s,
            }
        )

    async def set_config(request: Request) -> Response:
        try:
            body = await _json(request)
        except orjson.JSONDecodeError:
            return _problem("body must be JSON")
        if not isinstance(body, dict):
            return _problem("body must be a JSON object")
        for key, value in body.items():
            if key == "latency_s":
                if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
                    return _problem("latency_s must be a number >= 0")
                state.latency_s = float(value)
            elif key == "dalle2_require_alpha":
                if not isinstance(value, bool):
                    return _problem("dalle2_require_alpha must be a boolean")
                state.dalle2_require_alpha = value
            elif key == "token_lifetime_s":
                if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                    return _problem("token_lifetime_s must be an integer >= 1")
                state.token_lifetime_s = value
            else:
                return _problem(f"unknown config key {key!r}")
        return await get_config(request)

    async def list_requests(request: Request) -> Response:
        """Recorded requests, newest last; `?protocol=`, `?model=`, `?limit=` filter them."""
        records = state.requests
        protocol = request.query_params.get("protocol")
        model = request.query_params.get("model")
        if protocol:
            records = [r for r in records if r["protocol"] == protocol]
        if model:
            records = [r for r in records if r["model"] == model]
        limit = request.query_params.get("limit")
        if limit and limit.isdigit():
            records = records[-int(limit) :] if int(limit) else []
        return json_response(records)

    async def clear_requests(request: Request) -> Response:
        return json_response({"cleared": state.clear_requests()})

    async def reset(request: Request) -> Response:
        state.reset()
        return json_response({"reset": True})

    async def health(request: Request) -> Response:
        return json_response({"ok": True})

    return [
        Route("/_sim/faults", add_faults, methods=["POST"]),
        Route("/_sim/faults", list_faults, methods=["GET"]),
        Route("/_sim/faults", clear_faults, methods=["DELETE"]),
        Route("/_sim/config", get_config, methods=["GET"]),
        Route("/_sim/config", set_config, methods=["POST"]),
        Route("/_sim/requests", list_requests, methods=["GET"]),
        Route("/_sim/requests", clear_requests, methods=["DELETE"]),
        Route("/_sim/reset", reset, methods=["POST"]),
        Route("/_sim/health", health, methods=["GET"]),
    ]
