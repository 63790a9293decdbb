"""Plumbing shared by the OpenAI and Gemini handlers: context, body reading, waits, recording."""

from __future__ import annotations

import asyncio
import secrets
from dataclasses import dataclass
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from app.simulator.errors import SimulatedDisconnect
from app.simulator.state import SimulatorState

#: Largest request body the simulator reads (16 images of up to 50 MB would be 800 MB; nobody
#: sends that to a simulator, and buffering it would only hurt the benchmark box).
MAX_BODY_BYTES = 256 * 1024 * 1024


@dataclass(slots=True)
class SimContext:
    state: SimulatorState
    public_base_url: str | None = None

    def base_url(self, request: Request) -> str:
        """Root URL of the simulator as clients reach it (for dall-e-2 `url` results)."""
        if self.public_base_url:
            return self.public_base_url.rstrip("/")
        return str(request.base_url).rstrip("/")


def new_id(prefix: str = "", nbytes: int = 12) -> str:
    return prefix + secrets.token_hex(nbytes)


def begin_record(request: Request, state: SimulatorState, protocol: str) -> dict[str, Any]:
    headers = [(k.decode("latin-1"), v.decode("latin-1")) for k, v in request.scope["headers"]]
    return state.begin_request(
        protocol=protocol,
        path=request.url.path,
        method=request.method,
        headers=headers,
        query=dict(request.query_params),
        content_type=request.headers.get("content-type"),
    )


def record_status(record: dict[str, Any], response: Response) -> None:
    """The status the client saw (None: the connection was dropped without an answer)."""
    record["status"] = None if isinstance(response, DisconnectResponse) else response.status_code


async def read_body(request: Request, limit: int = MAX_BODY_BYTES) -> bytes | None:
    """The whole body, or None when it is larger than ``limit`` (checked while reading)."""
    chunks: list[bytes] = []
    total = 0
    async for chunk in request.stream():
        total += len(chunk)
        if total > limit:
            return None
        chunks.append(chunk)
    return b"".join(chunks)


async def pause(request: Request, seconds: float) -> bool:
    """Sleep ``seconds`` unless the client goes away first; True if it went away.

    Watching for `http.disconnect` means a slow-upstream benchmark or an abandoned timeout test
    does not leave sleeping handlers behind. Only call once the body has been read.
    """
    if seconds <= 0:
        return False

    async def wait_disconnect() -> None:
        while True:
            message = await request.receive()
            if message["type"] == "http.disconnect":
                return

    watcher = asyncio.ensure_future(wait_disconnect())
    try:
        done, _ = await asyncio.wait({watcher}, timeout=seconds)
        return bool(done)
    finally:
        watcher.cancel()


class DisconnectResponse(Response):
    """Sends a response head promising a body, then drops the connection.

    See :class:`SimulatedDisconnect` for how this looks to uvicorn and to ASGITransport clients.
    """

    def __init__(self) -> None:
        super().__init__(status_code=200, media_type="application/json")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"content-type", b"application/json"), (b"content-length", b"4096")],
            }
        )
        raise SimulatedDisconnect()


CLIENT_GONE_STATUS = 499
