"""A lean HTTP/1.1 keep-alive client for one upstream origin (asyncio Protocol + httptools).

Why not httpx for the hot path: every upstream call is one POST of a body that is already fully
built in memory, answered by a JSON body that is read whole. httpx routes that through
httpx -> httpcore -> anyio -> h11, several layers of coroutines, state machines and per-request
objects; profiling put ~35% of the gateway's CPU there. This module does the same job with an
asyncio `Protocol` fed straight by the loop and the C parser `httptools.HttpResponseParser`:

- one future per request, resolved from parser callbacks; body chunks go to a list joined once;
- the request head is one pre-sized string encoded once; the origin's `Host` line is computed
  once per pool; small bodies leave in one `transport.write`, large ones via
  `writelines([head, body])` so the body is not copied (on uvloop: one `writev`);
- a LIFO pool of idle connections (the most recently used socket is the warmest and the least
  likely to have been closed by the server), pruned of expired ones from the old end;
- the race "the server closed an idle keep-alive socket just as we reused it" is retried once
  on a fresh connection, but only when not a single response byte arrived, so a request the
  server may have processed is never silently sent twice on this level.

Errors subclass httpx's (`Http11Timeout` is an `httpx.TimeoutException`, `Http11ConnectionError`
an `httpx.TransportError`) so callers written against httpx keep catching them unchanged.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import ssl
from collections import deque
from collections.abc import Iterator, Mapping, Sequence
from typing import Any, Final, cast
from urllib.parse import urlsplit

import httptools
import httpx

__all__ = [
    "Http11ConnectionError",
    "Http11Headers",
    "Http11InvalidRequest",
    "Http11Pool",
    "Http11Response",
    "Http11Timeout",
]

DEFAULT_USER_AGENT: Final = "imagegate/0.1"

# Above this size the body is written by reference (`writelines`) instead of concatenated to the
# head: a concatenation copies the body, while one extra buffer in a writev costs nothing.
_CONCAT_MAX: Final = 16 * 1024

# RFC 9110 token: what a header name or a method may contain.
_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
# A request target must not contain whitespace or control characters (request splitting).
_BAD_TARGET = re.compile(r"[\x00-\x20\x7f]")
# Names the pool owns: the caller cannot set framing or connection management.
_OWNED: Final = frozenset({"host", "content-length", "connection", "transfer-encoding"})
_BODY_METHODS: Final = frozenset({"POST", "PUT", "PATCH"})
_KNOWN_METHODS: Final = frozenset({"GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"})
_NAME_CACHE_MAX: Final = 512


class Http11Timeout(httpx.TimeoutException):
    """Connect, pool wait or read took longer than allowed (an `httpx.TimeoutException`)."""

    def __init__(self, message: str) -> None:
        super().__init__(message, request=None)


class Http11ConnectionError(httpx.TransportError):
    """Refused, reset, closed mid-response or malformed response (an `httpx.TransportError`)."""

    def __init__(self, message: str) -> None:
        super().__init__(message, request=None)


class Http11InvalidRequest(ValueError):
    """The request itself cannot be sent safely (CR/LF injection, foreign origin, bad method).

    A `ValueError`, not a transport error: retrying it could never help.
    """


class Http11Headers(Mapping[str, str]):
    """Response headers: case-insensitive, read-only, decoded lazily on first access.

    Most answers are only ever asked for their status and body, so the raw `(name, value)` byte
    pairs from the parser are kept as they are and turned into a dict only when someone looks.
    Like `httpx.Headers.get`, repeated headers are joined with ", "; keys iterate lower-cased.
    """

    __slots__ = ("_map", "_raw")

    def __init__(self, raw: list[tuple[bytes, bytes]]) -> None:
        self._raw = raw
        self._map: dict[str, str] | None = None

    def _lookup(self) -> dict[str, str]:
        m = self._map
        if m is None:
            m = {}
            for bname, bvalue in self._raw:
                name = bname.decode("latin-1").lower()
                value = bvalue.decode("latin-1")
                m[name] = f"{m[name]}, {value}" if name in m else value
            self._map = m
        return m

    @property
    def raw(self) -> list[tuple[bytes, bytes]]:
        """The headers as received: name and value bytes, in order, repeats kept."""
        return self._raw

    def multi_items(self) -> list[tuple[str, str]]:
        """Every `(lower-case name, value)` pair, repeats kept (like `httpx.Headers`)."""
        return [(n.decode("latin-1").lower(), v.decode("latin-1")) for n, v in self._raw]

    def __getitem__(self, key: str) -> str:
        return self._lookup()[key.lower()]

    def get(self, key: str, default: Any = None) -> Any:
        return self._lookup().get(key.lower(), default)

    def __contains__(self, key: object) -> bool:
        return isinstance(key, str) and key.lower() in self._lookup()

    def __iter__(self) -> Iterator[str]:
        return iter(self._lookup())

    def __len__(self) -> int:
        return len(self._lookup())

    def __repr__(self) -> str:
        return f"Http11Headers({self.multi_items()!r})"


class Http11Response:
    """A fully read answer: status, case-insensitive headers, body bytes."""

    __slots__ = ("body", "headers", "status")

    def __init__(self, status: int, headers: Http11Headers, body: bytes) -> None:
        self.status = status
        self.headers = headers
        self.body = body

    def __repr__(self) -> str:
        return f"<Http11Response {self.status} {len(self.body)} bytes>"


def _expire(waiter: asyncio.Future[None], timeout_s: float) -> None:
    """Timer callback: the whole exchange overran `timeout_s`."""
    if not waiter.done():
        waiter.set_exception(Http11Timeout(f"no complete response within {timeout_s:g}s"))


class _Connection(asyncio.Protocol):
    """One socket: the loop feeds bytes to httptools, whose callbacks fill in the response.

    At most one request is in flight per connection (no pipelining); `waiter` is that request's
    future, resolved when the message is complete or failed when the exchange breaks.
    """

    __slots__ = (
        "alive",
        "chunks",
        "complete",
        "got_bytes",
        "headers_done",
        "idle_since",
        "in_pool",
        "informational",
        "is_head",
        "keep_alive",
        "parser",
        "pool",
        "raw_headers",
        "status",
        "transport",
        "waiter",
    )

    def __init__(self, pool: Http11Pool) -> None:
        self.pool = pool
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.waiter: asyncio.Future[None] | None = None
        self.alive = True  # False once the transport is lost or we closed it
        self.in_pool = False  # sitting in the idle list
        self.idle_since = 0.0
        self.status = 0
        self._reset(is_head=False)

    # --- request side -------------------------------------------------------------------------

    def start(self, waiter: asyncio.Future[None], is_head: bool) -> None:
        """Reset per-request state; fresh lists because the previous ones were handed out."""
        self.waiter = waiter
        self._reset(is_head)

    def _reset(self, is_head: bool) -> None:
        self.raw_headers: list[tuple[bytes, bytes]] = []
        self.chunks: list[bytes] = []
        self.complete = False
        self.headers_done = False
        self.informational = False
        self.is_head = is_head
        self.keep_alive = False
        self.got_bytes = False

    def close(self) -> None:
        """Graceful close (idle or finished connections)."""
        self.alive = False
        if self.transport is not None:
            self.transport.close()

    def abort(self) -> None:
        """Hard close: the exchange is half done (cancelled, timed out, broken)."""
        self.alive = False
        if self.transport is not None:
            self.transport.abort()

    def _fail(self, exc: BaseException) -> None:
        waiter = self.waiter
        if waiter is not None and not waiter.done():
            waiter.set_exception(exc)

    def _finish(self, keep_alive: bool) -> None:
        self.complete = True
        self.keep_alive = keep_alive
        waiter = self.waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    # --- asyncio.Protocol ---------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        waiter = self.waiter
        if waiter is None or waiter.done():
            # Bytes nobody asked for (after the response, or on an idle socket): the stream is
            # out of step with our requests and must never be reused.
            self.close()
            return
        self.got_bytes = True
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self.keep_alive = False
            self._fail(Http11ConnectionError("upstream switched protocols (unsupported)"))
        except httptools.HttpParserError as exc:
            self.keep_alive = False
            if not self.complete:
                self._fail(Http11ConnectionError(f"malformed response from upstream: {exc}"))

    def eof_received(self) -> bool | None:
        return None  # let the transport close itself; connection_lost settles the request

    def connection_lost(self, exc: Exception | None) -> None:
        self.alive = False
        waiter = self.waiter
        if waiter is not None and not waiter.done():
            if self.headers_done and not self.complete and self._close_delimited():
                self._finish(keep_alive=False)  # a body framed by the end of the connection
            elif exc is not None:
                self._fail(Http11ConnectionError(f"connection to upstream lost: {exc!r}"))
            elif self.got_bytes:
                self._fail(Http11ConnectionError("upstream closed the connection mid-response"))
            else:
                self._fail(Http11ConnectionError("upstream closed the connection before answering"))
        if self.in_pool:
            self.pool._idle_lost(self)

    # --- httptools callbacks ------------------------------------------------------------------

    def on_message_begin(self) -> None:
        if self.complete:  # a second message after ours: never reuse this stream
            self.keep_alive = False

    def on_header(self, name: bytes, value: bytes) -> None:
        self.raw_headers.append((name, value))

    def on_headers_complete(self) -> None:
        status = self.parser.get_status_code()
        if 100 <= status < 200:
            self.informational = True  # 1xx interim answer: the real one follows
            return
        self.status = status
        self.headers_done = True
        if self.is_head:  # no body follows, whatever Content-Length says; parser can't know
            self._finish(keep_alive=False)

    def on_body(self, body: bytes) -> None:
        if not self.complete:
            self.chunks.append(body)

    def on_message_complete(self) -> None:
        if self.informational:
            self.informational = False
            self.raw_headers = []
            return
        if self.complete:
            return
        parser = self.parser
        self._finish(parser.should_keep_alive() and parser.get_http_version() == "1.1")

    def _close_delimited(self) -> bool:
        """No Content-Length and not chunked: the body legitimately ends at EOF."""
        for name, _ in self.raw_headers:
            if len(name) in (14, 17) and name.lower() in (b"content-length", b"transfer-encoding"):
                return False
        return True


class Http11Pool:
    """Keep-alive HTTP/1.1 connections to one origin (scheme, host, port), at most
    `max_connections` at a time; requests beyond that wait (bounded by `timeout_s`).

    `request()` sends a fully built body and reads the whole answer. Timeouts:
    `connect_timeout_s` for TCP (+TLS) setup, and one overall `timeout_s` from the first byte
    written to the last byte read — not per socket read as in httpx.
    """

    def __init__(
        self,
        base_url: str,
        *,
        max_connections: int,
        connect_timeout_s: float,
        timeout_s: float,
        keepalive_expiry_s: float = 60,
        ssl_context: ssl.SSLContext | None = None,
        user_agent: str = DEFAULT_USER_AGENT,
    ) -> None:
        if max_connections < 1:
            raise ValueError("max_connections must be at least 1")
        parts = urlsplit(base_url)
        scheme = parts.scheme.lower()
        if scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"base_url must be an absolute http(s) URL, got {base_url!r}")
        default_port = 443 if scheme == "https" else 80
        self._host = parts.hostname
        self._port = parts.port or default_port
        host_for_header = f"[{self._host}]" if ":" in self._host else self._host
        authority = (
            host_for_header if self._port == default_port else f"{host_for_header}:{self._port}"
        )
        _check_value(authority)
        self._host_line = f"Host: {authority}\r\n"
        self._scheme = scheme
        self._origin = f"{scheme}://{authority}"
        self._origin_as_given = f"{parts.scheme}://{parts.netloc}"
        self._base_path = parts.path.rstrip("/")
        self._ssl: ssl.SSLContext | None = None
        self._server_hostname: str | None = None
        if scheme == "https":
            self._ssl = ssl_context or ssl.create_default_context()
            self._server_hostname = self._host
        _check_value(user_agent)
        self._ua_line = f"User-Agent: {user_agent}\r\n"
        self._max = max_connections
        self._connect_timeout_s = connect_timeout_s
        self._timeout_s = timeout_s
        self._expiry_s = keepalive_expiry_s
        self._idle: list[_Connection] = []  # LIFO: append/pop at the end
        self._waiters: deque[asyncio.Future[_Connection | None]] = deque()
        self._count = 0  # connections open, opening or reserved, in use or idle
        self._loop: asyncio.AbstractEventLoop | None = None
        self._closed = False
        self._names: dict[str, str] = {}  # validated header name -> lower-case name

    def __repr__(self) -> str:
        return f"Http11Pool({self._origin!r}, connections={self._count}/{self._max})"

    @property
    def connections(self) -> int:
        """Connections currently open or being opened (in use or idle)."""
        return self._count

    @property
    def idle_connections(self) -> int:
        return len(self._idle)

    # --- public API ---------------------------------------------------------------------------

    async def request(
        self,
        method: str,
        url: str,
        *,
        headers: Mapping[str, str],
        body: bytes | Sequence[bytes] | None,
    ) -> Http11Response:
        """Send one request and read the whole answer, whatever its status.

        `url` is an absolute URL on this pool's origin, or a path joined to the base URL's path.
        `body` may be a sequence of pieces (a multipart body with its images by reference):
        they go out in one `writelines`, never joined. Raises `Http11Timeout`,
        `Http11ConnectionError` or `Http11InvalidRequest`.
        """
        if self._closed:
            raise RuntimeError("the connection pool has been closed")
        pieces: tuple[bytes, ...]
        if body is None or isinstance(body, bytes):
            pieces = (body,) if body else ()
        else:
            pieces = tuple(body)
        length = sum(len(p) for p in pieces) if body is not None else None
        head = self._head(method, url, headers, length)
        if not pieces:
            data: bytes | None = head
        elif length is not None and length <= _CONCAT_MAX:
            data = head + b"".join(pieces)
        else:
            data = None
        loop = asyncio.get_running_loop()
        if loop is not self._loop:
            self._bind(loop)
        is_head = method == "HEAD"
        fresh = False
        while True:
            conn, reused = await self._acquire(fresh)
            waiter: asyncio.Future[None] = loop.create_future()
            conn.start(waiter, is_head)
            timer = loop.call_later(self._timeout_s, _expire, waiter, self._timeout_s)
            transport = conn.transport
            try:
                assert transport is not None
                if not conn.alive or transport.is_closing():
                    # Lost while handed over between requests: nothing was sent, so it is stale.
                    raise Http11ConnectionError("upstream closed the idle connection")
                try:
                    if data is not None:
                        transport.write(data)
                    else:
                        transport.writelines((head, *pieces))
                except (OSError, RuntimeError) as exc:
                    raise Http11ConnectionError(f"write to upstream failed: {exc!r}") from None
                await waiter
            except Http11ConnectionError:
                timer.cancel()
                self._discard(conn)
                if reused and not fresh and not conn.got_bytes:
                    fresh = True  # a stale keep-alive socket: once more on a new connection
                    continue
                raise
            except BaseException:  # timeout, cancellation: never reuse a half-read stream
                timer.cancel()
                self._discard(conn)
                if waiter.done() and not waiter.cancelled():
                    waiter.exception()  # cancelled as it failed: mark the outcome as seen
                raise
            timer.cancel()
            response = Http11Response(
                conn.status, Http11Headers(conn.raw_headers), b"".join(conn.chunks)
            )
            conn.waiter = None
            self._release(conn)
            return response

    async def aclose(self) -> None:
        """Close idle connections now, in-use ones when their request ends; refuse new ones."""
        self._closed = True
        idle, self._idle = self._idle, []
        for conn in idle:
            conn.in_pool = False
            conn.close()
            self._count -= 1
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_exception(RuntimeError("the connection pool has been closed"))

    # --- request head -------------------------------------------------------------------------

    def _target(self, url: str) -> str:
        """The request target for `url`: fast path for URLs spelled like the base URL."""
        prefix = self._origin_as_given
        if url.startswith(prefix) and url[len(prefix) : len(prefix) + 1] in ("/", "?", ""):
            target = url[len(prefix) :]
        elif url.startswith(("/", "?")):
            target = self._base_path + url if self._base_path else url
        else:
            parts = urlsplit(url)
            scheme = parts.scheme.lower()
            default_port = 443 if scheme == "https" else 80
            try:
                port = parts.port or default_port
            except ValueError:
                port = -1
            if (scheme, parts.hostname, port) != (self._scheme, self._host, self._port):
                raise Http11InvalidRequest(f"{url!r} is not on this pool's origin {self._origin}")
            target = url.split(parts.netloc, 1)[1]
        if not target or target[0] == "?":
            target = "/" + target
        if _BAD_TARGET.search(target):
            raise Http11InvalidRequest("request target contains whitespace or control characters")
        return target

    def _lower_name(self, name: str) -> str:
        """Validate a header name as an HTTP token once, then remember it."""
        lower = self._names.get(name)
        if lower is None:
            if not _TOKEN.fullmatch(name):
                raise Http11InvalidRequest(f"invalid header name {name!r}")
            lower = name.lower()
            if len(self._names) < _NAME_CACHE_MAX:
                self._names[name] = lower
        return lower

    def _head(self, method: str, url: str, headers: Mapping[str, str], length: int | None) -> bytes:
        if method not in _KNOWN_METHODS and not _TOKEN.fullmatch(method):
            raise Http11InvalidRequest(f"invalid method {method!r}")
        parts = [method, " ", self._target(url), " HTTP/1.1\r\n", self._host_line]
        user_agent = False
        for name, value in headers.items():
            lower = self._lower_name(name)
            if lower in _OWNED:
                continue
            if "\r" in value or "\n" in value or "\0" in value:
                raise Http11InvalidRequest(f"header {name!r} value contains CR, LF or NUL")
            if lower == "user-agent":
                user_agent = True
            parts += (name, ": ", value, "\r\n")
        if not user_agent:
            parts.append(self._ua_line)
        if length is not None:
            parts += ("Content-Length: ", str(length), "\r\n")
        elif method in _BODY_METHODS:
            parts.append("Content-Length: 0\r\n")
        parts.append("Connection: keep-alive\r\n\r\n")
        try:
            return "".join(parts).encode("ascii")
        except UnicodeEncodeError:
            raise Http11InvalidRequest("request head must be ASCII") from None

    # --- pool ---------------------------------------------------------------------------------

    def _bind(self, loop: asyncio.AbstractEventLoop) -> None:
        """First use, or use from another event loop: sockets of the old loop are unusable."""
        if self._loop is not None:
            for conn in self._idle:
                conn.in_pool = False
                conn.alive = False
            self._idle = []
            self._waiters.clear()
            self._count = 0
        self._loop = loop

    async def _acquire(self, fresh: bool) -> tuple[_Connection, bool]:
        """A connection to use, and whether it was reused (only those get a stale retry).

        `fresh` (the stale retry) never takes an idle connection: if the server dropped one
        idle socket, it likely dropped its siblings too.
        """
        idle = self._idle
        if not fresh:
            if idle:
                assert self._loop is not None
                conn = idle.pop()
                conn.in_pool = False
                if conn.alive and self._loop.time() - conn.idle_since < self._expiry_s:
                    return conn, True
                conn.close()  # expired: its slot goes to a new connection
                return await self._open(), False
        elif idle and self._count >= self._max:
            conn = idle.pop(0)  # the oldest idle one gives way to the fresh connection
            conn.in_pool = False
            conn.close()
            return await self._open(), False
        if self._count < self._max:
            self._count += 1
            return await self._open(), False
        got = await self._wait()
        if got is None:
            return await self._open(), False  # a slot was handed over
        if fresh:
            got.close()
            return await self._open(), False
        return got, True

    async def _wait(self) -> _Connection | None:
        """Queue for a connection (or a free slot, `None`) released by another request."""
        assert self._loop is not None
        waiter: asyncio.Future[_Connection | None] = self._loop.create_future()
        self._waiters.append(waiter)
        try:
            async with asyncio.timeout(self._timeout_s):
                return await waiter
        except BaseException as exc:
            if waiter.done() and not waiter.cancelled() and waiter.exception() is None:
                got = waiter.result()
                if isinstance(exc, TimeoutError):
                    return got  # handed over just as the deadline hit: use it
                self._give_back(got)
            else:
                waiter.cancel()
                with contextlib.suppress(ValueError):
                    self._waiters.remove(waiter)
            if isinstance(exc, TimeoutError):
                raise Http11Timeout(
                    f"no free connection to {self._origin} within {self._timeout_s:g}s"
                ) from None
            raise

    async def _open(self) -> _Connection:
        """Connect using a slot already counted in `_count`; the slot is freed on failure."""
        assert self._loop is not None
        conn = _Connection(self)
        try:
            async with asyncio.timeout(self._connect_timeout_s):
                await self._loop.create_connection(
                    lambda: conn,
                    self._host,
                    self._port,
                    ssl=self._ssl,
                    server_hostname=self._server_hostname,
                )
        except TimeoutError:
            self._free_slot()
            raise Http11Timeout(
                f"connect to {self._origin} timed out after {self._connect_timeout_s:g}s"
            ) from None
        except OSError as exc:
            self._free_slot()
            raise Http11ConnectionError(f"cannot connect to {self._origin}: {exc!r}") from None
        except BaseException:
            conn.abort()
            self._free_slot()
            raise
        return conn

    def _give_back(self, got: _Connection | None) -> None:
        if got is None:
            self._free_slot()
        else:
            self._release(got)

    def _free_slot(self) -> None:
        """A connection is gone: hand its slot to the first live waiter, else shrink."""
        waiters = self._waiters
        while waiters:
            waiter = waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return
        self._count -= 1

    def _release(self, conn: _Connection) -> None:
        """After a complete response: keep the socket if both sides allow it."""
        if not (conn.keep_alive and conn.alive) or self._closed:
            conn.close()
            self._free_slot()
            return
        waiters = self._waiters
        while waiters:
            waiter = waiters.popleft()
            if not waiter.done():
                waiter.set_result(conn)
                return
        assert self._loop is not None
        now = self._loop.time()
        idle = self._idle
        while idle and now - idle[0].idle_since >= self._expiry_s:  # prune the old end
            old = idle.pop(0)
            old.in_pool = False
            old.close()
            self._count -= 1
        conn.idle_since = now
        conn.in_pool = True
        idle.append(conn)

    def _discard(self, conn: _Connection) -> None:
        """After a failed, timed-out or cancelled exchange: the stream state is unknown."""
        conn.waiter = None
        conn.abort()
        self._free_slot()

    def _idle_lost(self, conn: _Connection) -> None:
        """The server closed an idle connection: forget it and free its slot."""
        conn.in_pool = False
        try:
            self._idle.remove(conn)
        except ValueError:
            return
        self._free_slot()


def _check_value(value: str) -> None:
    if "\r" in value or "\n" in value or "\0" in value:
        raise Http11InvalidRequest(f"{value!r} contains CR, LF or NUL")
