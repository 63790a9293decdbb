"""stream=true: relay the upstream's server-sent events; charge on the completed image."""

from __future__ import annotations

from collections.abc import AsyncIterable, AsyncIterator
from typing import Any

import orjson

from app.core.errors import GatewayError
from app.domain.metering import Hold
from app.service.context import EditContext, Prepared


async def relay(
    prep: Prepared, hold: Hold, ctx: EditContext, upstream: AsyncIterable[dict[str, Any]]
) -> AsyncIterator[bytes]:
    """Relay the `upstream` events (the caller's stream); charge on `*.completed`, refund
    otherwise (the hold does)."""
    async with hold:
        try:
            async for event in upstream:
                kind = str(event.get("type", "message"))
                if kind.endswith(".completed") and not hold.done:
                    usage = event.get("usage")  # the completed event's usage prices the request
                    await hold.settle(
                        1,
                        usage=usage if isinstance(usage, dict) else None,
                        size=prep.req.size,
                        channel=getattr(upstream, "channel", None),
                    )
                yield b"event: " + kind.encode() + b"\ndata: " + orjson.dumps(event) + b"\n\n"
            if not hold.done:
                raise GatewayError("api_error", "upstream stream ended without a completed image")
        except GatewayError as err:
            if not hold.done:
                await hold.refund(err.code, err.message)
            yield sse_error(err, ctx.trace_id)


def sse_error(err: GatewayError, trace_id: str) -> bytes:
    payload = {"type": "error", "error": err.body(), "trace_id": trace_id}
    return b"event: error\ndata: " + orjson.dumps(payload) + b"\n\n"
