"""A/B of the upstream transport: the hand-written HTTP/1.1 pool against aiohttp's client.

    python -m bench.transport_ab [--rounds 6] [--requests 300] [--out bench/results/x.md]

The pool itself is gone from the tree (aiohttp won, see bench/results/2026-11-29-transport-ab.md);
this script loads it from the last commit that had it (`git show`), so the A/B stays repeatable.

What it measures, on the client side only (the upstream runs in its own process, so its CPU is
not counted): an edit-shaped exchange — a multipart POST with a 100 KB image answered by the
mock's fixed OpenAI JSON — and the 8 MB pass-through (an 8 MB multipart body, sent as pieces).
For each: CPU seconds of this process per request (`time.process_time`), and the p50 latency at
concurrency 1. Rounds alternate A, B, A, B ... in one run so a noisy neighbour hits both alike.
Both run on uvloop, as `imagegate serve` does.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

import orjson

from bench.images import tiny_png_b64
from bench.mock import openai_response
from bench.procs import free_port

SERVER = r"""
import asyncio, sys
import uvloop
from aiohttp import web
body = sys.stdin.buffer.read()
async def edit(request):
    await request.read()
    return web.Response(body=body, content_type="application/json")
app = web.Application(client_max_size=64 * 1024 * 1024)
app.router.add_post("/v1/images/edits", edit)
web.run_app(app, host="127.0.0.1", port=int(sys.argv[1]), print=None, access_log=None)
"""

# aiohttp sends bytes in one write; pieces go through an async iterator (one write each), which
# only pays off when it saves a large copy.
JOIN_MAX = int(os.environ.get("AB_JOIN_MAX", 1024 * 1024))
# trust_env=True makes aiohttp look the proxy up in the environment on every request (~240 µs
# CPU measured here); the gateway resolves the proxy once per channel instead, so the A/B runs
# aiohttp as the gateway uses it. AB_TRUST_ENV=1 shows the per-request lookup's cost.
TRUST_ENV = os.environ.get("AB_TRUST_ENV", "0") == "1"

Send = Callable[[Sequence[bytes], str], Awaitable[bytes]]


def multipart(image: bytes) -> tuple[list[bytes], str]:
    from app.upstream.multipart import FilePart, encode_multipart_parts

    pieces, content_type = encode_multipart_parts(
        [("model", "gpt-image-1.5"), ("prompt", "benchmark: add a small red hat")],
        [FilePart("image", "image_0.png", "image/png", image)],
    )
    out = [p for p in pieces if isinstance(p, bytes)]
    assert len(out) == len(pieces), "every file part here is in memory: all pieces are bytes"
    return out, content_type


# The hand-written pool was deleted after this A/B; it is loaded from the last commit that had it.
POOL_COMMIT = "e979e3d"


def load_pool() -> Any:
    import importlib.util
    import tempfile

    source = subprocess.run(
        ["git", "show", f"{POOL_COMMIT}:app/upstream/http11.py"],
        check=True, capture_output=True, cwd=Path(__file__).parent,
    ).stdout  # fmt: skip
    path = Path(tempfile.mkdtemp()) / "http11_pool.py"
    path.write_bytes(source)
    spec = importlib.util.spec_from_file_location("http11_pool", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.Http11Pool


async def pool_sender(base: str) -> tuple[Send, Callable[[], Awaitable[None]]]:
    Http11Pool = load_pool()

    pool = Http11Pool(base, max_connections=8, connect_timeout_s=5, timeout_s=60)
    url = base + "/images/edits"

    async def send(body: Sequence[bytes], ctype: str) -> bytes:
        headers = {"content-type": ctype, "authorization": "Bearer sk-bench"}
        resp = await pool.request("POST", url, headers=headers, body=body)
        assert resp.status == 200, resp.status
        return resp.body

    return send, pool.aclose


async def aiohttp_sender(base: str) -> tuple[Send, Callable[[], Awaitable[None]]]:
    import aiohttp

    session = aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=8, keepalive_timeout=60),
        timeout=aiohttp.ClientTimeout(total=60, connect=5),
        auto_decompress=False,
        trust_env=TRUST_ENV,
    )
    url = base + "/images/edits"

    async def pieces(body: Sequence[bytes]) -> Any:
        for piece in body:
            yield piece

    async def send(body: Sequence[bytes], ctype: str) -> bytes:
        headers = {"content-type": ctype, "authorization": "Bearer sk-bench"}
        size = sum(len(p) for p in body)
        data: Any = b"".join(body) if size <= JOIN_MAX else pieces(body)
        if size > JOIN_MAX:
            headers["content-length"] = str(size)
        async with session.post(url, data=data, headers=headers) as resp:
            raw = await resp.read()
            assert resp.status == 200, resp.status
            return raw

    return send, session.close


async def measure(send: Send, body: Sequence[bytes], ctype: str, n: int) -> tuple[float, float]:
    """(CPU seconds per request, p50 wall seconds) over n sequential requests."""
    for _ in range(3):  # warm the connection
        await send(body, ctype)
    lat: list[float] = []
    cpu0 = time.process_time()
    for _ in range(n):
        t = time.perf_counter()
        await send(body, ctype)
        lat.append(time.perf_counter() - t)
    return (time.process_time() - cpu0) / n, statistics.median(lat)


async def run(rounds: int, n: int, n_big: int, port: int) -> dict[str, dict[str, list[float]]]:
    base = f"http://127.0.0.1:{port}/v1"
    from bench.images import _noise_png

    small = multipart(_noise_png(180, 1))  # ~100 KB of incompressible PNG
    big = multipart(_noise_png(1672, 2))  # ~8 MB
    senders = {"http11-pool": await pool_sender(base), "aiohttp": await aiohttp_sender(base)}
    out: dict[str, dict[str, list[float]]] = {
        name: {"cpu_edit": [], "p50_edit": [], "cpu_8mb": [], "p50_8mb": []} for name in senders
    }
    for r in range(rounds):
        order = list(senders) if r % 2 == 0 else list(reversed(senders))
        for name in order:
            send = senders[name][0]
            cpu, p50 = await measure(send, *small, n)
            out[name]["cpu_edit"].append(cpu)
            out[name]["p50_edit"].append(p50)
            cpu, p50 = await measure(send, *big, n_big)
            out[name]["cpu_8mb"].append(cpu)
            out[name]["p50_8mb"].append(p50)
    for _, close in senders.values():
        await close()
    return out


def report(data: dict[str, dict[str, list[float]]], args: argparse.Namespace) -> str:
    med = {k: {m: statistics.median(v) for m, v in d.items()} for k, d in data.items()}
    a, b = med["http11-pool"], med["aiohttp"]
    lines = [
        "# Upstream transport A/B: hand-written HTTP/1.1 pool vs aiohttp client",
        "",
        f"- date: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}",
        f"- machine: {platform.machine()}, {os.cpu_count()} cores,"
        f" Python {platform.python_version()}, uvloop; **shared with other work during the"
        " run** (up to 8 concurrent jobs), so"
        " absolute numbers are noisy — the A/B rounds were interleaved in one process so the"
        " ratio is fair",
        f"- {args.rounds} rounds (A,B then B,A ...), {args.requests} edit requests and"
        f" {args.big} 8 MB requests per transport per round, concurrency 1, medians of rounds",
        "- edit = multipart POST with a ~100 KB PNG, answered by the mock's OpenAI JSON; 8 MB ="
        " an 8 MB PNG sent as body pieces. Client-process CPU only (upstream in its own process)",
        "",
        "| metric | http11-pool | aiohttp | aiohttp vs pool |",
        "|---|---|---|---|",
    ]
    for m, label, scale, unit in (
        ("cpu_edit", "CPU per edit", 1e6, "µs"),
        ("p50_edit", "p50 per edit (c=1)", 1e3, "ms"),
        ("cpu_8mb", "CPU per 8 MB pass-through", 1e6, "µs"),
        ("p50_8mb", "p50 per 8 MB pass-through", 1e3, "ms"),
    ):
        ratio = b[m] / a[m] - 1
        lines.append(
            f"| {label} | {a[m] * scale:.1f} {unit} | {b[m] * scale:.1f} {unit} | {ratio:+.0%} |"
        )
    gw = args.gateway_cpu_us
    extra = (b["cpu_edit"] - a["cpu_edit"]) * 1e6
    lines += [
        "",
        f"The gateway's whole CPU per 100 KB edit with the pool was {gw:.0f} µs (bench/results/"
        "2026-11-21-9c51207.md, scenario c). Swapping the transport adds the difference above to"
        f" it: {gw:.0f} + {extra:.0f} = {gw + extra:.0f} µs, i.e. the pool wins by"
        f" {extra / (gw + extra):.0%} of CPU per edit.",
    ]
    lines += ["", "Raw per-round values (seconds):", "", "```", orjson.dumps(data).decode(), "```"]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--requests", type=int, default=300)
    parser.add_argument("--big", type=int, default=20)
    parser.add_argument("--out", type=Path)
    parser.add_argument("--gateway-cpu-us", type=float, default=593.0)
    args = parser.parse_args()
    port = free_port()
    payload = orjson.dumps(openai_response(tiny_png_b64()))
    server = subprocess.Popen([sys.executable, "-c", SERVER, str(port)], stdin=subprocess.PIPE)
    assert server.stdin is not None
    server.stdin.write(payload)
    server.stdin.close()
    try:
        import socket

        deadline = time.time() + 10
        while time.time() < deadline:
            try:
                socket.create_connection(("127.0.0.1", port), 0.2).close()
                break
            except OSError:
                time.sleep(0.05)
        import uvloop

        data = uvloop.run(run(args.rounds, args.requests, args.big, port))
    finally:
        server.terminate()
        server.wait()
    text = report(data, args)
    print(text)
    if args.out:
        args.out.write_text(text)


if __name__ == "__main__":
    main()
