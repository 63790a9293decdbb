"""Upstream bodies of pieces over real sockets: spooled images sent from their files (sendfile
on plain TCP under both event loops, bounded reads under TLS), base64 encoded chunk by chunk,
Content-Length always, the same body again on a retry, and memory that does not grow with it."""

from __future__ import annotations

import asyncio
import base64
import os
import ssl
import subprocess
import sys
from collections.abc import Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
import trustme
import uvloop
from aiohttp import web
from hypothesis import given, settings
from hypothesis import strategies as st

from app.adapters.nano_banana import NanoBananaAdapter
from app.domain.blob import SpooledBlob
from app.domain.edit import Image
from app.upstream.body import B64_CHUNK_BYTES, Base64Blob, Piece, body_size
from app.upstream.transport import AiohttpTransport, ssl_context
from tests.adapters import (
    Drop,
    image_bytes,
    make_req,
    model_config,
    openai_error,
    openai_ok,
    parse_multipart,
)
from tests.adapters.test_caller import banana, gemini_ok, gpt
from tests.support.spool import Spooler

Spool = Callable[[bytes], SpooledBlob]


@pytest.fixture
def spool() -> Iterator[Spool]:
    with Spooler() as spooler:
        yield spooler


def joined(pieces: bytes | list[Piece] | Any) -> bytes:
    """What a body puts on the wire, read the slow way."""
    if isinstance(pieces, bytes):
        return pieces
    out = bytearray()
    for p in pieces:
        if isinstance(p, bytes):
            out += p
        elif isinstance(p, SpooledBlob):
            out += p.read_all()
        else:
            out += b"".join(p.chunks())
    return bytes(out)


# -- base64 pieces ---------------------------------------------------------------------------


@settings(max_examples=150, deadline=None)
@given(
    data=st.binary(max_size=3000),
    chunk=st.integers(min_value=1, max_value=400),
    spooled=st.booleans(),
)
def test_base64_chunks_concatenate_to_the_encoding_of_the_whole(
    data: bytes, chunk: int, spooled: bool
) -> None:
    with Spooler() as spool:
        piece = Base64Blob(spool(data) if spooled else data)
        out = b"".join(piece.chunks(3 * chunk))
        assert out == base64.b64encode(data)
        assert len(piece) == len(out)


def test_base64_chunks_must_be_whole_groups_of_three() -> None:
    assert B64_CHUNK_BYTES % 3 == 0
    with pytest.raises(ValueError, match="multiple of 3"):
        next(Base64Blob(b"abcd").chunks(4))


# -- sending over real sockets ---------------------------------------------------------------


async def _serve(seen: list[tuple[dict[str, str], bytes]], ssl_ctx: ssl.SSLContext | None = None):  # type: ignore[no-untyped-def]
    async def handler(request: web.BaseRequest) -> web.Response:
        body = await request.content.read()  # read() stops at 1 MiB
        seen.append((dict(request.headers), body))
        return web.Response(status=200, body=b"{}")

    server = await asyncio.get_running_loop().create_server(
        web.Server(handler), "127.0.0.1", 0, ssl=ssl_ctx
    )
    return server, server.sockets[0].getsockname()[1]


def _mixed_body(spool: Spool) -> list[Piece]:
    big = os.urandom(6 * 1024 * 1024 + 17)  # above the socket buffer: sendfile must wait
    small = os.urandom(1000)
    return [b"head;", spool(big), b";", spool(small), b";", Base64Blob(spool(os.urandom(300_001))),
            b";", Base64Blob(small), b";tail"]  # fmt: skip


async def _send_twice(body: list[Piece], url: str, ssl_ctx: ssl.SSLContext | None) -> None:
    t = AiohttpTransport(max_connections=1, connect_timeout_s=5, ssl_context=ssl_ctx)
    try:
        for _ in range(2):  # the same body again, on the kept-alive connection
            resp = await t.send("POST", url, {"content-type": "application/x-test"}, body, 30)
            assert resp.status == 200
    finally:
        await t.aclose()


@pytest.mark.parametrize("run", [asyncio.run, uvloop.run], ids=["asyncio", "uvloop"])
def test_spooled_pieces_arrive_intact_over_plain_tcp(
    spool: Spool, run: Callable[[Coroutine[Any, Any, None]], None]
) -> None:
    """Plain TCP: the sendfile path, under both loops (the server runs on uvloop)."""
    body = _mixed_body(spool)
    seen: list[tuple[dict[str, str], bytes]] = []

    async def main() -> None:
        server, port = await _serve(seen)
        try:
            await _send_twice(body, f"http://127.0.0.1:{port}/x", None)
        finally:
            server.close()

    run(main())
    expected = joined(body)
    assert [b for _, b in seen] == [expected, expected]
    for headers, _ in seen:
        assert headers["Content-Length"] == str(body_size(body)) == str(len(expected))
        assert "Transfer-Encoding" not in headers


async def test_spooled_pieces_arrive_intact_over_tls(spool: Spool, tmp_path: Path) -> None:
    """TLS: the bytes must pass through the TLS layer, so they go in bounded reads."""
    ca = trustme.CA()
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("localhost").configure_cert(server_ctx)
    ca_file = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    body = _mixed_body(spool)
    seen: list[tuple[dict[str, str], bytes]] = []
    server, port = await _serve(seen, server_ctx)
    try:
        await _send_twice(body, f"https://localhost:{port}/x", ssl_context(str(ca_file)))
    finally:
        server.close()
    expected = joined(body)
    assert [b for _, b in seen] == [expected, expected]
    assert seen[0][0]["Content-Length"] == str(len(expected))


async def test_a_small_all_bytes_body_still_goes_as_one_buffer() -> None:
    seen: list[tuple[dict[str, str], bytes]] = []
    server, port = await _serve(seen)
    try:
        await _send_twice([b"a" * 100, b"b" * 100_000], f"http://127.0.0.1:{port}/x", None)
    finally:
        server.close()
    assert seen[0][1] == b"a" * 100 + b"b" * 100_000
    assert seen[0][0]["Content-Length"] == "100100"


# -- adapters with spooled images, through the production caller -----------------------------


def _spooled_image(spool: Spool, w: int = 300, h: int = 200) -> tuple[Image, bytes]:
    data = image_bytes(w, h)
    return Image(spool(data), "image/png", w, h), data


async def test_openai_multipart_sends_a_spooled_image_again_after_a_dropped_attempt(
    spool: Spool,
) -> None:
    img, data = _spooled_image(spool)
    a, rec = gpt([Drop(), openai_ok()])
    await a.edit(a.check_fields(make_req(images=[img])), "trace-1")
    assert len(rec.requests) == 2
    first, second = (parse_multipart(r) for r in rec.requests)
    assert first == second
    assert [p.data for p in first if p.name == "image"] == [data]


async def test_gemini_body_with_spooled_images_is_the_same_json_on_every_attempt(
    spool: Spool,
) -> None:
    (one, d1), (two, d2) = _spooled_image(spool), _spooled_image(spool, 64, 48)
    a, rec = banana([openai_error(500, "oops"), gemini_ok()])
    req = a.check_fields(make_req(images=[one, two], prompt='a "quoted" prompt\n'))
    await a.edit(req, "trace-1")
    in_memory = make_req(images=[Image(d1, "image/png", 300, 200), Image(d2, "image/png", 64, 48)],
                         prompt='a "quoted" prompt\n')  # fmt: skip
    expected = orjson.dumps(a.body(a.check_fields(in_memory)))
    assert [r.content for r in rec.requests] == [expected, expected]
    sent = orjson.loads(rec.requests[0].content)["contents"][0]["parts"]
    assert [base64.b64decode(p["inlineData"]["data"]) for p in sent[1:]] == [d1, d2]


@pytest.mark.parametrize("prompt", ["plain", "imagegate-inline-", 'esc "\\ \u2028 \x01'])
def test_gemini_pieces_equal_orjson_of_the_in_memory_body(spool: Spool, prompt: str) -> None:
    adapter = NanoBananaAdapter("nano-banana", model_config("nano-banana", "g", "gemini"))
    big = os.urandom(2 * 1024 * 1024)  # in memory but large: encoded chunk by chunk too
    small = image_bytes(8, 8)
    imgs = [Image(spool(small), "image/png", 8, 8), Image(big, "image/png", 1, 1)]
    req = make_req(images=imgs, prompt=prompt)
    body = adapter.encode(req)
    assert isinstance(body, list) and all(
        not isinstance(p, bytes) or len(p) < 1000 for p in body
    )  # no image was encoded whole
    in_memory = make_req(images=[Image(small, "image/png", 8, 8), imgs[1]], prompt=prompt)
    assert joined(body) == orjson.dumps(adapter.body(in_memory))
    assert body_size(body) == len(joined(body))


def test_gemini_small_in_memory_body_is_one_buffer() -> None:
    adapter = NanoBananaAdapter("nano-banana", model_config("nano-banana", "g", "gemini"))
    req = make_req()
    assert adapter.encode(req) == orjson.dumps(adapter.body(req))


# -- memory ----------------------------------------------------------------------------------

_RSS_PROBE = r"""
import asyncio, os, sys, tempfile
from aiohttp import web
from app.domain.blob import SpooledBlob
from app.upstream.transport import AiohttpTransport

SIZE = 32 * 1024 * 1024

def hwm_kib():
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1])

async def main():
    received = 0
    async def handler(request):
        nonlocal received
        async for chunk in request.content.iter_any():  # discard as it arrives
            received += len(chunk)
        return web.Response(body=b"{}")
    server = await asyncio.get_running_loop().create_server(web.Server(handler), "127.0.0.1", 0)
    url = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}/x"
    fd = os.open(tempfile.gettempdir(), os.O_TMPFILE | os.O_RDWR, 0o600)
    block = os.urandom(1024 * 1024)
    for i in range(SIZE // len(block)):
        os.pwrite(fd, block, i * len(block))
    del block
    t = AiohttpTransport(max_connections=1, connect_timeout_s=5)
    await t.send("POST", url, {}, [b"warm-up", SpooledBlob(fd, 1024 * 1024)], 30)
    before = hwm_kib()
    resp = await t.send("POST", url, {}, [b"head", SpooledBlob(fd, SIZE), b"tail"], 60)
    after = hwm_kib()
    await t.aclose()
    server.close()
    assert resp.status == 200 and received == 1024 * 1024 + 7 + SIZE + 8, received
    print(after - before)

asyncio.run(main())
"""


def test_sending_a_32_mb_spooled_blob_does_not_grow_memory_by_the_blob() -> None:
    out = subprocess.run(
        [sys.executable, "-c", _RSS_PROBE], capture_output=True, text=True, timeout=120, check=True
    )
    growth_kib = int(out.stdout.strip())
    assert growth_kib < 8 * 1024, f"peak RSS grew by {growth_kib} KiB sending 32 MiB"
