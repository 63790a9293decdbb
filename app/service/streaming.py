"""stream=true: relay the upstream's server-sent events; charge on the completed image."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterable, AsyncIterator
from typing import Any

import orjson

from app.core.errors import GatewayError
from app.core.metrics import Metrics
from app.domain.metering import Hold, Meter
from app.service.context import EditContext, Prepared


async def relay(
    prep: Prepared,
    hold: Hold,
    task_id: str,
    ctx: EditContext,
    meter: Meter,
    metrics: Metrics,
    upstream: AsyncIterable[dict[str, Any]],
) -> AsyncIterator[bytes]:
    """Relay the `upstream` events (the caller's stream); charge on `image_edit.completed`,
    refund otherwise."""
    settled = False
    model = prep.req.model
    try:
        async for event in upstream:
            kind = str(event.get("type", "message"))
            if kind.endswith(".completed") and not settled:
                settled = True
                usage = event.get("usage")  # the completed event's usage prices the request
                charge = await meter.settle(
                    hold,
                    images=1,
                    task_id=task_id,
                    usage=usage if isinstance(usage, dict) else None,
                    size=prep.req.size,
                    channel=getattr(upstream, "channel", None),
                )
                metrics.requests.inc(model=model, status="ok")
                metrics.credits.inc(charge / 1e6, model=model)
            yield b"event: " + kind.encode() + b"\ndata: " + orjson.dumps(event) + b"\n\n"
        if not settled:
            settled = True
            await meter.settle(hold, images=0, task_id=task_id, error_code="api_error")
            err = GatewayError("api_error", "upstream stream ended without a completed image")
            yield sse_error(err, ctx.trace_id)
    except GatewayError as err:
        if not settled:
            settled = True
            await meter.settle(hold, images=0, task_id=task_id, error_code=err.code)
        metrics.requests.inc(model=model, status=err.code)
        yield sse_error(err, ctx.trace_id)
    except BaseException:
        if not settled:
            await asyncio.shield(
                meter.settle(hold, images=0, task_id=task_id, error_code="api_error")
            )
        raise


def sse_error(err: GatewayError, trace_id: str) -> bytes:
    payload = {"type": "error", "error": err.body(), "trace_id": trace_id}
    return b"event: error\ndata: " + orjson.dumps(payload) + b"\n\n"
