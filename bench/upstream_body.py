"""CPU per upstream send by body shape: the 100 KB edit's joined-bytes fast path, and an 8 MB
image sent from memory, from a spool file with sendfile, from a spool file in bounded reads
(the TLS path, forced here on plain TCP), and Gemini's base64 whole vs chunk by chunk.

Client-side process CPU (utime+stime) per send, the sink upstream in another process, both on
uvloop like the gateway. Run: `python -m bench.upstream_body [--sends N]`; for an A/B of the
100 KB row against another tree, run it with `PYTHONPATH=<tree>` (rows whose code that tree
lacks are skipped). Results: bench/results/2026-11-29-upstream-body.md.
"""

from __future__ import annotations

import argparse
import base64
import os
import subprocess
import sys
import tempfile
from collections.abc import Callable
from typing import Any

import orjson
import uvloop

from app.upstream.multipart import FilePart, encode_multipart_parts
from app.upstream.transport import AiohttpTransport

_SINK = r"""
import sys, uvloop
from aiohttp import web
async def handler(request):
    await request.content.read()
    return web.Response(body=b"{}")
async def main():
    import asyncio
    server = await asyncio.get_running_loop().create_server(web.Server(handler), "127.0.0.1", 0)
    print(server.sockets[0].getsockname()[1], flush=True)
    await asyncio.Event().wait()
uvloop.run(main())
"""

Build = Callable[[], tuple[Any, dict[str, str]]]


def _cpu() -> float:
    t = os.times()
    return t.user + t.system


def scenarios(image_100k: bytes, image_8m: bytes, fd: int) -> dict[str, Build]:
    def multipart(data: Any) -> Build:
        def build() -> tuple[Any, dict[str, str]]:
            pieces, ctype = encode_multipart_parts(
                [("model", "gpt-image-1.5"), ("prompt", "make it blue")],
                [FilePart("image", "image_0.png", "image/png", data)],
            )
            return pieces, {"content-type": ctype}

        return build

    out: dict[str, Build] = {
        "100 KB edit, in memory (joined fast path)": multipart(image_100k),
        "8 MB edit, in memory (bytes pieces)": multipart(image_8m),
    }
    try:
        from app.domain.blob import SpooledBlob
        from app.upstream.body import Base64Blob
    except ImportError:  # a tree without spooled bodies: the in-memory rows only
        return out
    blob = SpooledBlob(fd, len(image_8m))
    out["8 MB edit, spooled (sendfile)"] = multipart(blob)
    out["8 MB edit, spooled (bounded reads)"] = multipart(blob)

    def gemini_whole() -> tuple[Any, dict[str, str]]:
        data = base64.b64encode(image_8m).decode("ascii")
        body = {"contents": [{"role": "user", "parts": [{"inlineData": {"data": data}}]}]}
        return orjson.dumps(body), {"content-type": "application/json"}

    def gemini_pieces() -> tuple[Any, dict[str, str]]:
        head, tail = b'{"contents":[{"role":"user","parts":[{"inlineData":{"data":"', b'"}}]}]}'
        return [head, Base64Blob(blob), tail], {"content-type": "application/json"}

    out["8 MB Gemini, base64 whole in memory"] = gemini_whole
    out["8 MB Gemini, base64 chunk by chunk from the spool"] = gemini_pieces
    return out


async def measure(url: str, build: Build, sends: int, chunked: bool) -> float:
    import app.upstream.transport as transport

    original = getattr(transport, "_sendfile", None)
    if chunked and original is not None:

        async def no_sendfile(*_: Any) -> bool:
            return False

        transport._sendfile = no_sendfile  # type: ignore[assignment]
    t = AiohttpTransport(max_connections=1, connect_timeout_s=5)
    try:
        for _ in range(3):  # warm the connection and the code
            body, headers = build()
            await t.send("POST", url, headers, body, 60)
        start = _cpu()
        for _ in range(sends):
            body, headers = build()
            resp = await t.send("POST", url, headers, body, 60)
            assert resp.status == 200
        return (_cpu() - start) / sends * 1000
    finally:
        await t.aclose()
        if original is not None:
            transport._sendfile = original


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sends", type=int, default=200)
    args = parser.parse_args()
    sink = subprocess.Popen([sys.executable, "-c", _SINK], stdout=subprocess.PIPE, text=True)
    try:
        assert sink.stdout is not None
        url = f"http://127.0.0.1:{int(sink.stdout.readline())}/x"
        image_100k, image_8m = os.urandom(100_000), os.urandom(8 * 1024 * 1024)
        fd = os.open(tempfile.gettempdir(), os.O_TMPFILE | os.O_RDWR, 0o600)
        os.write(fd, image_8m)
        for name, build in scenarios(image_100k, image_8m, fd).items():
            sends = args.sends if name.startswith("100 KB") else max(20, args.sends // 10)
            ms = uvloop.run(measure(url, build, sends, chunked="bounded reads" in name))
            print(f"| {name} | {ms:.3f} ms |", flush=True)
    finally:
        sink.terminate()
        sink.wait()


if __name__ == "__main__":
    main()
