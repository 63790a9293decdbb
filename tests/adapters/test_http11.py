"""Http11Pool against real sockets on 127.0.0.1: uvicorn for well-behaved HTTP, raw asyncio
servers for the odd cases (close-delimited bodies, idle closes, deaths mid-body, silence)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

import httpx
import orjson
import pytest

from app.upstream.client import UpstreamClient
from app.upstream.http11 import (
    Http11ConnectionError,
    Http11Headers,
    Http11InvalidRequest,
    Http11Pool,
    Http11Timeout,
)
from tests.adapters import upstream_config
from tests.support.net import ThreadedServer, free_port, serve

MB = 1024 * 1024

# --- servers ------------------------------------------------------------------------------------


async def asgi_app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """Routes: /echo (body back + what the server saw), /chunked, /big?n=, /slow, /status."""
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            else:
                await send({"type": "lifespan.shutdown.complete"})
                return
    chunks = []
    while True:
        message = await receive()
        chunks.append(message.get("body", b""))
        if not message.get("more_body"):
            break
    body = b"".join(chunks)
    path = scope["path"]
    if path == "/chunked":  # no Content-Length: uvicorn frames the answer as chunked
        await send({"type": "http.response.start", "status": 200, "headers": []})
        for part in (b"alpha-", b"beta-", b"gamma"):
            await send({"type": "http.response.body", "body": part, "more_body": True})
        await send({"type": "http.response.body", "body": b""})
        return
    if path == "/slow":
        await asyncio.sleep(2)
    if path == "/echo":
        out = body
    elif path == "/big":
        out = b"z" * int(scope["query_string"].split(b"=")[1])
    else:
        info = {
            "client_port": scope["client"][1],
            "path": path,
            "headers": [[k.decode(), v.decode()] for k, v in scope["headers"]],
            "body_len": len(body),
        }
        out = orjson.dumps(info)
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [
                (b"content-length", str(len(out)).encode()),
                (b"X-Dup", b"a"),
                (b"x-dup", b"b"),
            ],
        }
    )
    await send({"type": "http.response.body", "body": out})


@pytest.fixture(scope="module")
def uv() -> Any:
    with serve(asgi_app) as server:
        yield server


def make_pool(url: str, **kw: Any) -> Http11Pool:
    opts: dict[str, Any] = {"max_connections": 4, "connect_timeout_s": 2, "timeout_s": 5}
    opts.update(kw)
    return Http11Pool(url, **opts)


Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


class RawServer:
    """A bare asyncio server: counts connections (total and peak) and runs `handler` on each."""

    def __init__(self, handler: Handler) -> None:
        self.handler = handler
        self.accepted = 0
        self.active = 0
        self.peak = 0
        self.closed_by_client = asyncio.Event()
        self.port = 0
        self.tasks: set[asyncio.Task[Any]] = set()

    async def __aenter__(self) -> RawServer:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.server.close()
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.accepted += 1
        self.active += 1
        self.peak = max(self.peak, self.active)
        task = asyncio.current_task()
        assert task is not None
        self.tasks.add(task)
        try:
            await self.handler(reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.CancelledError):
            pass  # the client went away, or the test is over
        finally:
            self.active -= 1
            writer.close()


async def read_request(reader: asyncio.StreamReader) -> tuple[bytes, bytes] | None:
    """One request (head, body), or None when the client closed the connection."""
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except (asyncio.IncompleteReadError, ConnectionError):
        return None
    length = 0
    for line in head.split(b"\r\n"):
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    return head, await reader.readexactly(length)


def ok(body: bytes = b'{"ok":true}', extra: bytes = b"") -> bytes:
    return b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n%s\r\n%s" % (len(body), extra, body)


async def keepalive_server(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    while await read_request(reader) is not None:
        writer.write(ok())
        await writer.drain()


async def wait_until(cond: Callable[[], bool], timeout: float = 2.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.01)


# --- bodies -------------------------------------------------------------------------------------


async def test_content_length_body_and_headers(uv: ThreadedServer) -> None:
    pool = make_pool(uv.url + "/v1")
    resp = await pool.request("POST", uv.url + "/v1/info", headers={}, body=b"abc")
    assert resp.status == 200
    info = orjson.loads(resp.body)
    assert info["path"] == "/v1/info" and info["body_len"] == 3
    assert resp.headers["content-length"] == str(len(resp.body))
    assert resp.headers.get("X-DUP") == "a, b"  # case-insensitive, repeats joined like httpx
    assert resp.headers.get("missing", "d") == "d" and "x-dup" in resp.headers
    await pool.aclose()


async def test_chunked_body_is_decoded(uv: ThreadedServer) -> None:
    pool = make_pool(uv.url)
    resp = await pool.request("GET", "/chunked", headers={}, body=None)
    assert resp.headers.get("transfer-encoding") == "chunked"
    assert resp.body == b"alpha-beta-gamma"
    # the connection is reusable after a chunked answer
    resp = await pool.request("GET", "/chunked", headers={}, body=None)
    assert resp.body == b"alpha-beta-gamma" and pool.connections == 1
    await pool.aclose()


async def test_close_delimited_body() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\nuntil the end")
        await writer.drain()
        writer.write(b" of the connection")
        await writer.drain()
        writer.close()

    async with RawServer(handler) as srv:
        pool = make_pool(srv.url)
        resp = await pool.request("GET", "/", headers={}, body=None)
        assert resp.body == b"until the end of the connection"
        assert pool.idle_connections == 0  # a close-delimited stream cannot be reused
        await pool.aclose()


async def test_interim_1xx_answer_is_skipped() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while await read_request(reader) is not None:
            writer.write(b"HTTP/1.1 103 Early Hints\r\nLink: </x>\r\n\r\n" + ok(b"final"))

    async with RawServer(handler) as srv:
        pool = make_pool(srv.url)
        for _ in range(2):
            resp = await pool.request("GET", "/", headers={}, body=None)
            assert resp.status == 200 and resp.body == b"final" and "link" not in resp.headers
        assert srv.accepted == 1
        await pool.aclose()


async def test_8mb_request_and_response_bodies(uv: ThreadedServer) -> None:
    pool = make_pool(uv.url, timeout_s=30)
    payload = bytes(range(256)) * (8 * MB // 256)
    resp = await pool.request("POST", "/echo", headers={}, body=payload)
    assert resp.status == 200 and resp.body == payload
    resp = await pool.request("GET", f"/big?n={8 * MB}", headers={}, body=None)
    assert len(resp.body) == 8 * MB and resp.body.count(b"z") == 8 * MB
    await pool.aclose()


async def test_body_as_pieces_is_sent_in_order(uv: ThreadedServer) -> None:
    """A multipart body by reference: small totals are concatenated, large ones go out through
    `writelines` unjoined; either way the server sees the pieces back to back."""
    pool = make_pool(uv.url, timeout_s=30)
    small = [b"--b\r\n", b"tiny", b"\r\n--b--\r\n"]
    resp = await pool.request("POST", "/echo", headers={}, body=small)
    assert resp.body == b"".join(small)
    big = [b"head-", bytes(range(256)) * 8192, b"", b"-tail"]
    resp = await pool.request("POST", "/echo", headers={}, body=big)
    assert resp.body == b"".join(big)
    resp = await pool.request("POST", "/info", headers={}, body=[])
    assert orjson.loads(resp.body)["body_len"] == 0
    await pool.aclose()


# --- keep-alive ---------------------------------------------------------------------------------


async def test_sequential_requests_reuse_one_connection(uv: ThreadedServer) -> None:
    pool = make_pool(uv.url)
    ports = set()
    for i in range(20):
        resp = await pool.request("POST", "/info", headers={}, body=b"x" * i)
        ports.add(orjson.loads(resp.body)["client_port"])
    assert len(ports) == 1 and pool.connections == 1 and pool.idle_connections == 1
    await pool.aclose()
    assert pool.idle_connections == 0


async def test_server_closing_idle_connection_is_transparent() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(ok())  # keep-alive answer, then the server times the idle socket out
        await writer.drain()
        await asyncio.sleep(0.05)

    async with RawServer(handler) as srv:
        pool = make_pool(srv.url)
        assert (await pool.request("GET", "/", headers={}, body=None)).status == 200
        await wait_until(lambda: srv.active == 0)
        await wait_until(lambda: pool.connections == 0)  # noticed and dropped from the pool
        assert (await pool.request("GET", "/", headers={}, body=None)).status == 200
        assert srv.accepted == 2
        await pool.aclose()


async def test_stale_connection_race_is_retried_once_on_a_fresh_connection() -> None:
    """The server drops a kept-alive socket just as the next request arrives on it (the client
    could not have known): the request goes out again on a new connection."""

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(ok())
        await writer.drain()
        await read_request(reader)  # the second request on this socket: close, no answer
        writer.transport.abort()

    async with RawServer(handler) as srv:
        pool = make_pool(srv.url)
        for _ in range(3):  # requests 2 and 3 each meet a dropped socket first
            resp = await pool.request("POST", "/", headers={}, body=b"payload")
            assert resp.status == 200
        assert srv.accepted == 3 and pool.connections == 1
        await pool.aclose()


async def test_no_retry_once_response_bytes_arrived() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(ok())
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\npartial")
        await writer.drain()
        writer.transport.abort()

    async with RawServer(handler) as srv:
        pool = make_pool(srv.url)
        await pool.request("GET", "/", headers={}, body=None)
        with pytest.raises(Http11ConnectionError):
            await pool.request("GET", "/", headers={}, body=None)
        assert srv.accepted == 1 and pool.connections == 0
        await pool.aclose()


@pytest.mark.parametrize(
    "answer",
    [
        ok(extra=b"Connection: close\r\n"),
        b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nok",
    ],
    ids=["connection-close", "http-1.0"],
)
async def test_connection_close_and_http10_are_not_reused(answer: bytes) -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while await read_request(reader) is not None:  # the server would keep going: we don't
            writer.write(answer)

    async with RawServer(handler) as srv:
        pool = make_pool(srv.url)
        for _ in range(3):
            assert (await pool.request("GET", "/", headers={}, body=None)).status == 200
        assert srv.accepted == 3 and pool.idle_connections == 0
        await wait_until(lambda: srv.active == 0)  # and we closed them
        await pool.aclose()


async def test_expired_idle_connection_is_not_reused() -> None:
    async with RawServer(keepalive_server) as srv:
        pool = make_pool(srv.url, keepalive_expiry_s=0.05)
        await pool.request("GET", "/", headers={}, body=None)
        await asyncio.sleep(0.1)
        await pool.request("GET", "/", headers={}, body=None)
        assert srv.accepted == 2 and pool.connections == 1
        await wait_until(lambda: srv.active == 1)
        await pool.aclose()


async def test_200_concurrent_requests_never_exceed_max_connections() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while await read_request(reader) is not None:
            await asyncio.sleep(0.005)
            writer.write(ok())

    async with RawServer(handler) as srv:
        pool = make_pool(srv.url, max_connections=16)
        results = await asyncio.gather(
            *(pool.request("POST", "/", headers={}, body=b"%d" % i) for i in range(200))
        )
        assert all(r.status == 200 for r in results)
        assert srv.peak <= 16 and srv.accepted <= 16 and pool.connections <= 16
        await pool.aclose()


# --- failures -----------------------------------------------------------------------------------


async def test_connection_refused() -> None:
    pool = make_pool(f"http://127.0.0.1:{free_port()}")
    with pytest.raises(Http11ConnectionError) as ei:
        await pool.request("GET", "/", headers={}, body=None)
    assert isinstance(ei.value, httpx.TransportError)
    assert pool.connections == 0
    await pool.aclose()


async def test_slow_server_times_out_and_the_connection_is_closed() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        await reader.read()  # silent until the client goes away
        srv.closed_by_client.set()

    async with RawServer(handler) as srv:
        pool = make_pool(srv.url, timeout_s=0.2)
        start = time.monotonic()
        with pytest.raises(Http11Timeout) as ei:
            await pool.request("GET", "/", headers={}, body=None)
        assert 0.19 <= time.monotonic() - start < 1.5
        assert isinstance(ei.value, httpx.TimeoutException)
        await asyncio.wait_for(srv.closed_by_client.wait(), 2)
        assert pool.connections == 0
        await pool.aclose()


async def test_server_dying_mid_body() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n" + b"x" * 300)
        await writer.drain()
        writer.close()

    async with RawServer(handler) as srv:
        pool = make_pool(srv.url)
        with pytest.raises(Http11ConnectionError):
            await pool.request("GET", "/", headers={}, body=None)
        assert srv.accepted == 1 and pool.connections == 0  # not retried: bytes had arrived
        await pool.aclose()


async def test_chunked_body_cut_short_is_an_error() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n")
        await writer.drain()
        writer.close()

    async with RawServer(handler) as srv:
        pool = make_pool(srv.url)
        with pytest.raises(Http11ConnectionError):
            await pool.request("GET", "/", headers={}, body=None)
        await pool.aclose()


async def test_malformed_response() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"SMTP ready\r\n\r\n")
        await reader.read()

    async with RawServer(handler) as srv:
        pool = make_pool(srv.url)
        with pytest.raises(Http11ConnectionError, match="malformed"):
            await pool.request("GET", "/", headers={}, body=None)
        assert pool.connections == 0
        await pool.aclose()


async def test_cancellation_closes_the_connection() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while await read_request(reader) is not None:
            if srv.accepted == 1:
                await reader.read()  # hold the first connection until the client drops it
                srv.closed_by_client.set()
                return
            writer.write(ok())

    async with RawServer(handler) as srv:
        pool = make_pool(srv.url)
        task = asyncio.ensure_future(pool.request("POST", "/", headers={}, body=b"x"))
        await wait_until(lambda: srv.accepted == 1)
        await asyncio.sleep(0.05)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await asyncio.wait_for(srv.closed_by_client.wait(), 2)
        assert pool.connections == 0 and pool.idle_connections == 0
        assert (await pool.request("GET", "/", headers={}, body=None)).status == 200
        assert srv.accepted == 2
        await pool.aclose()


async def test_cancelled_waiter_gives_its_turn_away() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while await read_request(reader) is not None:
            await asyncio.sleep(0.05)
            writer.write(ok())

    async with RawServer(handler) as srv:
        pool = make_pool(srv.url, max_connections=1)
        first = asyncio.ensure_future(pool.request("GET", "/", headers={}, body=None))
        queued = asyncio.ensure_future(pool.request("GET", "/", headers={}, body=None))
        third = asyncio.ensure_future(pool.request("GET", "/", headers={}, body=None))
        await asyncio.sleep(0.01)
        queued.cancel()
        assert (await first).status == 200 and (await third).status == 200
        assert queued.cancelled() and srv.accepted == 1 and pool.connections == 1
        await pool.aclose()


# --- the request head ---------------------------------------------------------------------------


async def test_request_head_fields() -> None:
    heads: list[bytes] = []

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while (req := await read_request(reader)) is not None:
            heads.append(req[0])
            writer.write(ok())

    async with RawServer(handler) as srv:
        pool = make_pool(srv.url + "/v1")
        await pool.request(
            "POST",
            srv.url + "/v1/images/edits?x=1",
            headers={"Content-Type": "a/b", "Host": "evil", "content-length": "999"},
            body=b"12345",
        )
        await pool.request("GET", "/models", headers={"User-Agent": "mine"}, body=None)
        await pool.request("POST", "/empty", headers={}, body=None)
        await pool.aclose()
    first = heads[0].decode().split("\r\n")
    assert first[0] == "POST /v1/images/edits?x=1 HTTP/1.1"
    lines = {line.split(": ", 1)[0].lower(): line.split(": ", 1)[1] for line in first[1:] if line}
    assert lines == {
        "host": f"127.0.0.1:{srv.port}",
        "content-type": "a/b",
        "user-agent": "imagegate/0.1",
        "content-length": "5",
        "connection": "keep-alive",
    }
    second = heads[1].decode()
    assert second.startswith("GET /v1/models HTTP/1.1\r\n")
    assert "User-Agent: mine\r\n" in second and "imagegate" not in second
    assert "content-length" not in second.lower()
    assert "Content-Length: 0\r\n" in heads[2].decode()


def test_default_ports_are_left_out_of_host() -> None:
    assert make_pool("http://example.test/v1")._host_line == "Host: example.test\r\n"
    assert make_pool("https://example.test:8443")._host_line == "Host: example.test:8443\r\n"
    assert make_pool("http://[::1]:81/")._host_line == "Host: [::1]:81\r\n"


@pytest.mark.parametrize(
    ("method", "url", "headers"),
    [
        ("GET", "/", {"x-a": "ok\r\nX-Injected: 1"}),
        ("GET", "/", {"x-a": "line\nfeed"}),
        ("GET", "/", {"x-a\r\nX-Injected": "1"}),
        ("GET", "/", {"bad name": "1"}),
        ("GET", "/ HTTP/1.1\r\nX-Injected: 1\r\n\r\nGET /", {}),
        ("GET", "/a b", {}),
        ("GET", "/", {"x-a": "caf\u00e9"}),
        ("GE T", "/", {}),
        ("GET", "http://elsewhere.test/", {}),
    ],
)
async def test_injection_and_foreign_urls_are_refused(
    method: str, url: str, headers: dict[str, str]
) -> None:
    async with RawServer(keepalive_server) as srv:
        pool = make_pool(srv.url)
        with pytest.raises(Http11InvalidRequest):
            await pool.request(method, url, headers=headers, body=None)
        assert srv.accepted == 0  # refused before anything was sent
        await pool.aclose()


def test_headers_mapping() -> None:
    h = Http11Headers([(b"Content-Type", b"application/json"), (b"Set-X", b"1"), (b"set-x", b"2")])
    assert h["content-type"] == "application/json" and h.get("CONTENT-TYPE") == "application/json"
    assert h.get("set-x") == "1, 2" and len(h) == 2 and sorted(h) == ["content-type", "set-x"]
    assert h.multi_items()[1:] == [("set-x", "1"), ("set-x", "2")]
    assert 5 not in h  # type: ignore[comparison-overlap]
    with pytest.raises(KeyError):
        h["nope"]


async def test_closed_pool_refuses_requests(uv: ThreadedServer) -> None:
    pool = make_pool(uv.url)
    await pool.aclose()
    with pytest.raises(RuntimeError):
        await pool.request("GET", "/info", headers={}, body=None)


# --- under uvloop (the gateway's loop), and through UpstreamClient -------------------------------


def test_under_uvloop(uv: ThreadedServer) -> None:
    import uvloop

    async def main() -> None:
        pool = make_pool(uv.url, timeout_s=30)
        payload = b"q" * (3 * MB)  # large enough for the writelines path
        assert (await pool.request("POST", "/echo", headers={}, body=payload)).body == payload
        assert (await pool.request("GET", "/chunked", headers={}, body=None)).body.endswith(
            b"gamma"
        )
        results = await asyncio.gather(
            *(pool.request("POST", "/info", headers={}, body=b"x") for _ in range(50))
        )
        assert {r.status for r in results} == {200} and pool.connections <= 4
        await pool.aclose()

    uvloop.run(main())


async def test_upstream_client_goes_through_the_pool(uv: ThreadedServer) -> None:
    client = UpstreamClient("openai", upstream_config(base_url=uv.url + "/v1"))
    assert client._pool is not None
    resp = await client.request("POST", "/info", json={"a": 1}, headers={"X-Trace": "t1"})
    info = orjson.loads(resp.body)
    sent = dict(info["headers"])
    assert info["path"] == "/v1/info" and sent["authorization"].startswith("Bearer sk-")
    assert sent["content-type"] == "application/json" and sent["x-trace"] == "t1"
    assert resp.headers.get("X-Dup") == "a, b" and resp.retry_after() is None
    assert client._pool.connections == 1
    await client.aclose()
    assert client._pool.idle_connections == 0
