"""Streamed answers are read line by line whatever a line's size: an SSE image event carries
a whole base64 image (MBs) on one `data:` line, sent in TCP-sized pieces."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator

import pytest
from aiohttp import web

from app.upstream.transport import AiohttpTransport, ByteStream, TransportFailure


async def _serve(lines: list[bytes], piece: int) -> tuple[web.AppRunner, str]:
    async def handler(request: web.Request) -> web.StreamResponse:
        await request.read()
        resp = web.StreamResponse(headers={"content-type": "text/event-stream"})
        await resp.prepare(request)
        body = b"".join(lines)
        for i in range(0, len(body), piece):
            await resp.write(body[i : i + piece])
            await asyncio.sleep(0)
        await resp.write_eof()
        return resp

    app = web.Application()
    app.router.add_post("/s", handler)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    return runner, f"http://127.0.0.1:{port}/s"


async def _read(url: str) -> list[bytes]:
    transport = AiohttpTransport(max_connections=2, connect_timeout_s=5)
    try:
        async with transport.open("POST", url, {}, b"{}", 10) as opened:
            assert opened.response.status == 200
            stream: ByteStream = opened  # type: ignore[assignment]
            lines: AsyncIterator[bytes] = stream.lines()
            return [line async for line in lines]
    finally:
        await transport.aclose()


@pytest.mark.parametrize("piece", [1, 7, 65_536, 10_000_000])
async def test_lines_of_any_size_arrive_whole(piece: int) -> None:
    big = b"data: " + os.urandom(1_500_000).hex().encode() + b"\n"  # a 3 MB line
    lines = [b"event: image_edit.completed\n", big, b"\n", b"data: [DONE]\n", b"\n", b"tail"]
    if piece < 100:  # tiny pieces: keep it short
        lines = [b"event: x\n", b"data: " + b"a" * 3000 + b"\n", b"\n", b"tail"]
    runner, url = await _serve(lines, piece)
    try:
        assert await _read(url) == lines
    finally:
        await runner.cleanup()


async def test_a_line_over_the_cap_is_a_transport_failure(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("app.upstream.transport.MAX_LINE_BYTES", 100_000)
    runner, url = await _serve([b"data: " + b"x" * 300_000], 65_536)
    try:
        with pytest.raises(TransportFailure, match="line over"):
            await _read(url)
    finally:
        await runner.cleanup()
