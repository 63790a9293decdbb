"""The one way the gateway talks HTTP to an upstream: `Transport`, implemented on aiohttp.

Why aiohttp and not a hand-written pool: an A/B in one run (bench/transport_ab.py, results in
bench/results/2026-11-29-transport-ab.md) found the lean HTTP/1.1 pool saved ~10% of the
gateway's CPU per edit, under the 25% that would pay for keeping our own HTTP client; aiohttp
gives TLS, proxies and streaming for free and is what production and tests both run.

A transport knows nothing about keys, channels or retries (the caller owns those): it sends
one request and reports an answer, `TransportTimeout` or `TransportFailure`. Per channel, one
`AiohttpTransport` keeps a keep-alive pool of at most `max_connections` sockets.
"""

from __future__ import annotations

import ssl
import urllib.request
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass
from typing import Any, Protocol
from urllib.parse import urlsplit

import aiohttp
import orjson

USER_AGENT = "imagegate/0.1"

# A request body: one buffer, or pieces sent in order (a multipart body with its images by
# reference). Pieces above JOIN_MAX in all are streamed instead of joined into one copy.
Body = bytes | Sequence[bytes]
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


class _Lines:
    def __init__(self, resp: aiohttp.ClientResponse, summary: UpstreamResponse) -> None:
        self._resp = resp
        self.response = summary

    async def lines(self) -> AsyncIterator[bytes]:
        try:
            async for line in self._resp.content:
                yield line
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
            size = sum(len(p) for p in body)
            if size <= JOIN_MAX:
                data = b"".join(body)
            else:
                data = _pieces(body)
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


async def _pieces(body: Sequence[bytes]) -> AsyncIterator[bytes]:
    for piece in body:
        yield piece


def ssl_context(ca_file: str | None) -> ssl.SSLContext | None:
    """The system trust store plus `ca_file` when a channel names one; else aiohttp's default."""
    if ca_file is None:
        return None
    ctx = ssl.create_default_context()
    ctx.load_verify_locations(cafile=ca_file)
    return ctx
