"""The slow mock upstream, for the in-flight memory scenario: reads each request, then waits.

nginx cannot delay a response cheaply, so this is a tiny asyncio HTTP/1.1 server of our own.
It reads every request body completely (Content-Length or chunked, so the gateway's upload
really finishes), then holds the response until released by the harness or until `--delay`
seconds have passed, whichever is first, and answers the same fixed OpenAI JSON as nginx.
Being released on demand keeps the scenario short and makes "during" a well-defined moment:
the harness samples the gateway's memory once the server reports all requests held.

Control endpoints (plain HTTP on the same port):
  GET  /_stats    -> {"received", "held", "body_bytes", "hold"}
  POST /_hold     -> hold new requests from now on (until released or the delay passes)
  POST /_release  -> answer every held request now and stop holding new ones

Run: python -m bench.slow --port P [--delay 30]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import http.client
import json
from dataclasses import dataclass, field

from bench.images import tiny_png_b64
from bench.mock import gemini_response, openai_response

MAX_HEAD = 64 * 1024


@dataclass
class State:
    delay_s: float
    hold: bool = True
    received: int = 0
    held: int = 0
    body_bytes: int = 0
    release: asyncio.Event = field(default_factory=asyncio.Event)


async def _read_body(reader: asyncio.StreamReader, headers: dict[str, str]) -> int:
    """Read and drop the body; return its length."""
    if "chunked" in headers.get("transfer-encoding", "").lower():
        total = 0
        while True:
            size_line = await reader.readuntil(b"\r\n")
            size = int(size_line.split(b";")[0].strip(), 16)
            if size == 0:
                while (await reader.readuntil(b"\r\n")) != b"\r\n":  # trailers
                    pass
                return total
            await reader.readexactly(size + 2)
            total += size
    length = int(headers.get("content-length", "0") or 0)
    left = length
    while left > 0:
        chunk = await reader.read(min(left, 1 << 20))
        if not chunk:
            raise asyncio.IncompleteReadError(b"", left)
        left -= len(chunk)
    return length


def _response(status: str, payload: bytes) -> bytes:
    head = (
        f"HTTP/1.1 {status}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(payload)}\r\nConnection: keep-alive\r\n\r\n"
    )
    return head.encode() + payload


async def _handle(
    state: State, answers: dict[str, bytes], r: asyncio.StreamReader, w: asyncio.StreamWriter
) -> None:
    try:
        while True:
            head = await r.readuntil(b"\r\n\r\n")
            lines = head.decode("latin-1").split("\r\n")
            method, path, _ = lines[0].split(" ", 2)
            headers = {}
            for line in lines[1:]:
                if ":" in line:
                    k, v = line.split(":", 1)
                    headers[k.strip().lower()] = v.strip()
            size = await _read_body(r, headers)
            if path == "/_stats":
                stats = {
                    "received": state.received,
                    "held": state.held,
                    "body_bytes": state.body_bytes,
                    "hold": state.hold,
                }
                w.write(_response("200 OK", json.dumps(stats).encode()))
            elif path == "/_hold" and method == "POST":
                state.hold, state.release = True, asyncio.Event()
                w.write(_response("200 OK", b"{}"))
            elif path == "/_release" and method == "POST":
                state.hold = False
                state.release.set()
                w.write(_response("200 OK", b"{}"))
            else:
                state.received += 1
                state.body_bytes += size
                if state.hold:
                    state.held += 1
                    try:
                        with contextlib.suppress(TimeoutError):
                            await asyncio.wait_for(state.release.wait(), state.delay_s)
                    finally:
                        state.held -= 1
                answer = answers["gemini" if ":generateContent" in path else "openai"]
                w.write(_response("200 OK", answer))
            await w.drain()
            if headers.get("connection", "").lower() == "close":
                break
    except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError, ValueError):
        pass
    finally:
        w.close()
        with contextlib.suppress(Exception):
            await w.wait_closed()


async def serve(port: int, delay_s: float) -> None:
    state = State(delay_s)
    b64 = tiny_png_b64()
    answers = {
        "openai": json.dumps(openai_response(b64)).encode(),
        "gemini": json.dumps(gemini_response(b64)).encode(),
    }
    server = await asyncio.start_server(
        lambda r, w: _handle(state, answers, r, w),
        "127.0.0.1",
        port,
        backlog=4096,
        limit=MAX_HEAD,
    )
    async with server:
        await server.serve_forever()


class SlowControl:
    """The harness's handle on a running slow upstream."""

    def __init__(self, port: int) -> None:
        self.port = port

    def _call(self, method: str, path: str) -> dict[str, object]:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        try:
            conn.request(method, path, body=b"" if method == "POST" else None)
            data: dict[str, object] = json.loads(conn.getresponse().read() or b"{}")
            return data
        finally:
            conn.close()

    def stats(self) -> dict[str, object]:
        return self._call("GET", "/_stats")

    def held(self) -> int:
        return int(str(self.stats()["held"]))

    def hold(self) -> None:
        self._call("POST", "/_hold")

    def release(self) -> None:
        self._call("POST", "/_release")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--delay", type=float, default=30.0, help="longest hold, seconds")
    args = parser.parse_args()
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve(args.port, args.delay))


if __name__ == "__main__":
    main()
