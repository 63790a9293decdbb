"""The one way the gateway talks HTTP to an upstream: `Transport`, implemented on aiohttp.

Why aiohttp and not a hand-written pool: an A/B in one run (bench/transport_ab.py, results in
bench/results/2026-11-29-transport-ab.md) found the lean HTTP/1.1 pool saved ~10% of the
gateway's CPU per edit, under the 25% that would pay for keeping our own HTTP client; aiohttp
gives TLS, proxies and streaming for free and is what production and tests both run.

A transport knows nothing about keys, channels or retries (the caller owns those): it sends
one request and reports an answer, `TransportTimeout` or `TransportFailure`. Per channel, one
`AiohttpTransport` keeps a keep-alive pool of at most `max_connections` sockets.

Bodies (app/upstream/body.py): a small body of bytes pieces is joined and sent as one buffer
(the fast path); anything else goes out as a `PiecesPayload` with its exact Content-Length,
spooled images straight from their files (docs/ARCHITECTURE.md, "Upstream bodies").
"""

from __future__ import annotations

import asyncio
import os
import ssl
import urllib.request
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass
from typing import Any, Protocol
from urllib.parse import urlsplit

import aiohttp
import orjson
from aiohttp.abc import AbstractStreamWriter
from aiohttp.payload import Payload

from app.domain.blob import SpooledBlob
from app.upstream.body import Body, Piece

__all__ = [
    "JOIN_MAX", "AiohttpTransport", "Body", "ByteStream", "PiecesPayload", "Transport",
    "TransportFailure", "TransportTimeout", "UpstreamResponse", "proxy_for", "ssl_context",
]  # fmt: skip

USER_AGENT = "imagegate/0.1"

# Bytes pieces up to JOIN_MAX in all are joined into one buffer (one write, aiohttp's own bytes
# path); above it, or with any spooled piece, the body is sent piece by piece.
JOIN_MAX = 1024 * 1024


class TransportFailure(Exception):
    """No answer: connection refused or reset, TLS failure, the peer closed mid-answer."""


class TransportTimeout(TransportFailure):
    """No (complete) answer within the attempt's time."""


@dataclass(slots=True)
class UpstreamResponse:
    """A fully read upstream answer; the adapter decides what its status means."""

    status: int
    headers: Mapping[str, str]  # case-insensitive
    body: bytes

    @property
    def ok(self) -> bool:
        return 200 <= self.status < 300

    def json(self) -> Any:
        """Parse the body; raises `orjson.JSONDecodeError` (a `ValueError`) if it is not JSON."""
        return orjson.loads(self.body)


class ByteStream(Protocol):
    """An open 2xx answer whose body is read line by line (server-sent events)."""

    response: UpstreamResponse  # status and headers; body empty

    def lines(self) -> AsyncIterator[bytes]: ...


class Transport(Protocol):
    async def send(
        self, method: str, url: str, headers: Mapping[str, str], body: Body | None,
        timeout_s: float,
    ) -> UpstreamResponse:  # fmt: skip
        """One exchange, the answer read whole whatever its status."""
        ...

    def open(
        self, method: str, url: str, headers: Mapping[str, str], body: Body | None,
        timeout_s: float,
    ) -> AbstractAsyncContextManager[UpstreamResponse | ByteStream]:  # fmt: skip
        """One streamed exchange: a non-2xx answer comes back read whole (an
        `UpstreamResponse`), a 2xx one open (`ByteStream`); `timeout_s` bounds each read."""
        ...

    async def aclose(self) -> None: ...


def proxy_for(url: str) -> str | None:
    """The proxy the environment (HTTPS_PROXY, NO_PROXY ...) names for `url`, looked up once
    per channel rather than on every request."""
    parts = urlsplit(url)
    proxies = urllib.request.getproxies()
    if not proxies or urllib.request.proxy_bypass(parts.hostname or ""):
        return None
    return proxies.get(parts.scheme) or proxies.get("all")


# An SSE line carries a whole event; an image event's base64 is a few MB, so lines are split
# here rather than by aiohttp's readline (which refuses lines over its 512 KiB buffer). The
# cap keeps a stream that never sends a newline from growing without bound.
MAX_LINE_BYTES = 96 * 1024 * 1024


class _Lines:
    def __init__(self, resp: aiohttp.ClientResponse, summary: UpstreamResponse) -> None:
        self._resp = resp
        self.response = summary

    async def lines(self) -> AsyncIterator[bytes]:
        """The body's lines, each with its b"\n" (the last one may lack it)."""
        pending: list[bytes] = []  # the start of a line that spans chunks
        size = 0
        try:
            async for chunk in self._resp.content.iter_any():
                start = 0
                while (end := chunk.find(b"\n", start)) >= 0:
                    piece = chunk[start : end + 1]
                    if pending:
                        pending.append(piece)
                        piece = b"".join(pending)
                        pending.clear()
                        size = 0
                    yield piece
                    start = end + 1
                if start < len(chunk):
                    pending.append(chunk[start:] if start else chunk)
                    size += len(chunk) - start
                    if size > MAX_LINE_BYTES:
                        raise TransportFailure(f"stream line over {MAX_LINE_BYTES} bytes")
            if pending:
                yield b"".join(pending)
        except (TimeoutError, aiohttp.ServerTimeoutError) as exc:
            raise TransportTimeout("timed out mid-stream") from exc
        except (aiohttp.ClientError, OSError) as exc:
            raise TransportFailure(f"stream interrupted: {type(exc).__name__}") from exc


class AiohttpTransport:
    """A keep-alive pool to one upstream origin; the session is made on first use (it needs
    the running loop)."""

    def __init__(
        self,
        *,
        max_connections: int,
        connect_timeout_s: float,
        proxy: str | None = None,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        self._limit = max_connections
        self._connect_timeout_s = connect_timeout_s
        self._proxy = proxy
        self._ssl = ssl_context
        self._session: aiohttp.ClientSession | None = None

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            connector = aiohttp.TCPConnector(
                limit=self._limit, keepalive_timeout=60, ssl=self._ssl or True
            )
            self._session = aiohttp.ClientSession(
                connector=connector, headers={"user-agent": USER_AGENT}, trust_env=False
            )
        return self._session

    def _kwargs(
        self, headers: Mapping[str, str], body: Body | None, timeout: aiohttp.ClientTimeout
    ) -> dict[str, Any]:
        data: Any = body
        out = dict(headers)
        if body is not None and not isinstance(body, bytes):
            size, joinable = 0, True
            for piece in body:  # one plain loop: this runs for every small edit
                size += len(piece)
                if type(piece) is not bytes:
                    joinable = False
            if joinable and size <= JOIN_MAX:
                data = b"".join(body)  # type: ignore[arg-type]  # all bytes: checked above
            else:
                data = PiecesPayload(body, size)
                out["content-length"] = str(size)
        return {
            "headers": out, "data": data, "timeout": timeout, "proxy": self._proxy,
            "allow_redirects": False,
        }  # fmt: skip

    async def send(
        self, method: str, url: str, headers: Mapping[str, str], body: Body | None,
        timeout_s: float,
    ) -> UpstreamResponse:  # fmt: skip
        timeout = aiohttp.ClientTimeout(total=timeout_s, connect=self._connect_timeout_s)
        try:
            async with self._client().request(
                method, url, **self._kwargs(headers, body, timeout)
            ) as resp:
                raw = await resp.read()
                return UpstreamResponse(resp.status, resp.headers, raw)
        except (TimeoutError, aiohttp.ServerTimeoutError) as exc:
            raise TransportTimeout(f"no answer within {timeout_s:g} s") from exc
        except (aiohttp.ClientError, OSError) as exc:
            raise TransportFailure(type(exc).__name__) from exc

    @asynccontextmanager
    async def open(
        self, method: str, url: str, headers: Mapping[str, str], body: Body | None,
        timeout_s: float,
    ) -> AsyncIterator[UpstreamResponse | ByteStream]:  # fmt: skip
        timeout = aiohttp.ClientTimeout(
            total=None, connect=self._connect_timeout_s, sock_read=timeout_s
        )
        try:
            resp = await self._client().request(method, url, **self._kwargs(headers, body, timeout))
        except (TimeoutError, aiohttp.ServerTimeoutError) as exc:
            raise TransportTimeout(f"no answer within {timeout_s:g} s") from exc
        except (aiohttp.ClientError, OSError) as exc:
            raise TransportFailure(type(exc).__name__) from exc
        try:
            if 200 <= resp.status < 300:
                yield _Lines(resp, UpstreamResponse(resp.status, resp.headers, b""))
                return
            try:
                raw = await resp.read()
            except (TimeoutError, aiohttp.ServerTimeoutError) as exc:
                raise TransportTimeout("timed out reading the error") from exc
            except (aiohttp.ClientError, OSError) as exc:
                raise TransportFailure(type(exc).__name__) from exc
            yield UpstreamResponse(resp.status, resp.headers, raw)
        finally:
            resp.release()

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()


class PiecesPayload(Payload):
    """A body of pieces (app/upstream/body.py) as an aiohttp payload of known size.

    Made afresh for every attempt and never consumed: the pieces are read by offset, so a
    retry sends the same bytes. `bytes` pieces are written as they are; a `SpooledBlob` goes
    with `sendfile(2)` when the connection is a plain TCP socket, else (TLS, where the bytes
    must pass through the TLS layer) in bounded `pread`s; a `Base64Blob` is encoded chunk by
    chunk. At most one chunk (256 KiB, or its base64) of a spooled image is in memory at once.
    """

    _autoclose = True  # nothing to close: the spool owns the files
    _size: int  # always known: every piece has an exact length

    def __init__(self, pieces: Sequence[Piece], size: int) -> None:
        super().__init__(pieces, content_type=None)
        self._pieces = pieces
        self._size = size

    def decode(self, encoding: str = "utf-8", errors: str = "strict") -> str:
        """The whole body as text: for debugging only (reads every piece into memory)."""
        return b"".join(bytes(c) for c in _chunks(self._pieces)).decode(encoding, errors)

    async def write(self, writer: AbstractStreamWriter) -> None:
        await self.write_with_length(writer, None)

    async def write_with_length(
        self, writer: AbstractStreamWriter, content_length: int | None
    ) -> None:
        left = self._size if content_length is None else min(content_length, self._size)
        for piece in self._pieces:
            if left <= 0:
                return
            if isinstance(piece, SpooledBlob):
                count = min(len(piece), left)
                if not await _sendfile(writer, piece, count):
                    for chunk in _file_range(piece, count):
                        await writer.write(chunk)
                left -= count
                continue
            for chunk in _chunks((piece,)):
                if len(chunk) > left:
                    chunk = chunk[:left]
                await writer.write(chunk)
                left -= len(chunk)


def _chunks(pieces: Sequence[Piece]) -> Iterator[bytes]:
    """The bytes of `pieces` in order, a spooled or encoded piece in bounded chunks."""
    for piece in pieces:
        if isinstance(piece, bytes):
            yield piece
        else:
            yield from piece.chunks()


def _file_range(blob: SpooledBlob, count: int) -> Iterator[bytes]:
    """The first `count` bytes of `blob` in bounded `pread`s."""
    for chunk in blob.chunks():
        if len(chunk) >= count:
            yield chunk[:count]
            return
        yield chunk
        count -= len(chunk)


async def _sendfile(writer: AbstractStreamWriter, blob: SpooledBlob, count: int) -> bool:
    """Send the first `count` bytes of `blob` with `sendfile(2)` straight from the spool file
    to the socket, or return False when the connection cannot take it (TLS, chunked).

    asyncio's `loop.sendfile` would do this, but uvloop (the server's loop) does not implement
    it, so the loop is ours: aiohttp buffers the request head in its `StreamWriter` and writes
    earlier pieces through the transport, so first the head is flushed and the transport's
    buffer drained (the kernel then has every earlier byte, in order); then `sendfile` runs on
    a duplicate of the socket's descriptor (the loop refuses a writer callback on a descriptor
    its transport owns) and waits for writability when the socket is full. The writer's byte
    count is kept right for aiohttp's upload accounting. A failure (peer reset, cancel) leaves
    a half-sent body: aiohttp closes that connection, as for any failed write.
    """
    transport = getattr(writer, "transport", None)
    if (
        transport is None
        or transport.is_closing()
        or getattr(writer, "chunked", True)
        or transport.get_extra_info("ssl_object") is not None
    ):
        return False
    sock = transport.get_extra_info("socket")
    if sock is None:
        return False
    writer.send_headers()
    await _drained(writer, transport)
    loop = asyncio.get_running_loop()
    fd = os.dup(sock.fileno())
    try:
        sent = 0
        while sent < count:
            try:
                n = os.sendfile(fd, blob.fd, sent, count - sent)
            except BlockingIOError:  # the socket's buffer is full: wait until it drains
                writable = loop.create_future()
                loop.add_writer(fd, writable.set_result, None)
                try:
                    await writable
                finally:
                    loop.remove_writer(fd)
                continue
            if n == 0:
                raise OSError(f"spool file ended at {sent} of {count} bytes")
            sent += n
    finally:
        os.close(fd)
    writer.output_size += count
    notify = getattr(writer, "on_body_write", None)
    if notify is not None:
        notify(count, writer.output_size)
    return True


async def _drained(writer: AbstractStreamWriter, transport: asyncio.Transport) -> None:
    """Wait until `transport` has handed every buffered byte to the kernel: its high-water
    mark goes to 0 for the wait, so aiohttp's `drain()` returns only once the buffer is empty."""
    if not transport.get_write_buffer_size():
        return
    low, high = transport.get_write_buffer_limits()
    transport.set_write_buffer_limits(high=0, low=0)
    try:
        while transport.get_write_buffer_size():
            if transport.is_closing():
                raise ConnectionResetError("the upstream closed the connection")
            await writer.drain()
            await asyncio.sleep(0)
    finally:
        transport.set_write_buffer_limits(high=high, low=low)


def ssl_context(ca_file: str | None) -> ssl.SSLContext | None:
    """The system trust store plus `ca_file` when a channel names one; else aiohttp's default."""
    if ca_file is None:
        return None
    ctx = ssl.create_default_context()
    ctx.load_verify_locations(cafile=ca_file)
    return ctx
