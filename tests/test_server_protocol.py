"""`imagegate serve`'s HTTP protocol (uvicorn's httptools protocol keeping body pieces unjoined)
delivers every request body byte for byte: large, sent in many writes, chunked, and several
requests one after another on one keep-alive connection."""

from __future__ import annotations

import hashlib
import os
import socket
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from app.server import HttpProtocol, _Body
from tests.support.net import ThreadedServer


async def digest_app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """Answers the sha256 and length of the body it read, and how many messages carried it."""
    if scope["type"] == "lifespan":
        while (await receive())["type"] != "lifespan.shutdown":
            await send({"type": "lifespan.startup.complete"})
        await send({"type": "lifespan.shutdown.complete"})
        return
    h, size, messages = hashlib.sha256(), 0, 0
    while True:
        msg = await receive()
        assert msg["type"] == "http.request"
        assert type(msg["body"]) is bytes  # the ASGI spec: bytes, never our piece holder
        h.update(msg["body"])
        size += len(msg["body"])
        messages += 1
        if not msg.get("more_body"):
            break
    body = f"{h.hexdigest()} {size} {messages}".encode()
    headers = [(b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": body})


@pytest.fixture(scope="module")
def server() -> Iterator[ThreadedServer]:
    srv = ThreadedServer(digest_app, http=HttpProtocol).start()
    try:
        yield srv
    finally:
        srv.stop()


def test_large_body_in_many_writes(server: ThreadedServer) -> None:
    data = os.urandom(9 * 1024 * 1024 + 7)
    head = (
        f"POST /x HTTP/1.1\r\nHost: t\r\nContent-Length: {len(data)}\r\nConnection: close\r\n\r\n"
    ).encode()
    with socket.create_connection(("127.0.0.1", server.port), timeout=30) as sock:
        sock.sendall(head)
        for i in range(0, len(data), 100_003):  # odd-sized writes
            sock.sendall(data[i : i + 100_003])
        reply = b""
        while chunk := sock.recv(65536):
            reply += chunk
    digest, size, messages = reply.split(b"\r\n\r\n", 1)[1].decode().split()
    assert (digest, int(size)) == (hashlib.sha256(data).hexdigest(), len(data))
    assert int(messages) >= 2  # it really came in pieces


def test_chunked_and_keep_alive(server: ThreadedServer) -> None:
    bodies = [os.urandom(n) for n in (0, 1, 65_537, 300_000, 3 * 1024 * 1024)]
    with httpx.Client(base_url=server.url, timeout=30) as client:
        for body in bodies:  # one connection, one request after another
            r = client.post("/x", content=body)
            assert r.text.split()[:2] == [hashlib.sha256(body).hexdigest(), str(len(body))]

            def pieces(b: bytes = body) -> Iterator[bytes]:
                for i in range(0, len(b), 50_000):
                    yield b[i : i + 50_000]

            r = client.post("/x", content=pieces())  # Transfer-Encoding: chunked
            assert r.text.split()[:2] == [hashlib.sha256(body).hexdigest(), str(len(body))]


def test_body_pieces() -> None:
    b = _Body()
    assert len(b) == 0 and bytes(b) == b""
    one = b"x" * 10
    b += one
    assert bytes(b) is one  # a single piece is handed over without a copy
    b += b"yz"
    assert len(b) == 12 and bytes(b) == b"x" * 10 + b"yz"
