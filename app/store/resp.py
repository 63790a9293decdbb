"""A minimal pipelined RESP client for the two store calls on every request (admit, settle).

redis-py's asyncio client costs ~60-85 us of CPU per command (pool checkout, stream reader,
generic argument packing, response callbacks); on an edit that is two commands out of a
~1 ms budget. This client keeps a couple of persistent connections, writes a command as one
`transport.write`, parses replies with hiredis' C reader and hands them to waiting futures
in order (RESP answers in request order), so many concurrent requests share a connection.

Failures are plain `ConnectionError` / `TimeoutError`; a timed-out or broken connection is
closed with every pending call failed (a late reply must never be matched to the wrong
caller), and the next call reconnects. Everything else (admin, sweeps) stays on redis-py.
"""

from __future__ import annotations

import asyncio
import itertools
from collections import deque
from typing import Any
from urllib.parse import unquote, urlparse

import hiredis


class RespError(Exception):
    """An error reply from the server (e.g. NOSCRIPT, WRONGTYPE)."""


def _encode(args: tuple[Any, ...]) -> bytes:
    out = [b"*%d\r\n" % len(args)]
    for a in args:
        b = a if isinstance(a, bytes) else str(a).encode()
        out.append(b"$%d\r\n" % len(b))
        out.append(b)
        out.append(b"\r\n")
    return b"".join(out)


class _Conn(asyncio.Protocol):
    def __init__(self) -> None:
        self.reader = hiredis.Reader(replyError=RespError, encoding="utf-8")
        self.waiters: deque[asyncio.Future[Any]] = deque()
        self.transport: asyncio.Transport | None = None
        self.closed = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.reader.feed(data)
        while True:
            try:
                reply = self.reader.gets()
            except hiredis.ProtocolError as exc:
                self.abort(ConnectionError(f"redis protocol error: {exc}"))
                return
            if reply is False:
                return
            if not self.waiters:  # an answer nobody asked for: the stream is out of step
                self.abort(ConnectionError("unexpected reply from redis"))
                return
            fut = self.waiters.popleft()
            if fut.done():
                continue
            if isinstance(reply, RespError):
                fut.set_exception(reply)
            else:
                fut.set_result(reply)

    def connection_lost(self, exc: Exception | None) -> None:
        self.abort(ConnectionError(f"redis connection lost: {exc or 'closed'}"))

    def abort(self, exc: Exception) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.abort()
        while self.waiters:
            fut = self.waiters.popleft()
            if not fut.done():
                fut.set_exception(exc)

    def send(self, payload: bytes) -> asyncio.Future[Any]:
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self.waiters.append(fut)
        assert self.transport is not None
        self.transport.write(payload)
        return fut


class RespClient:
    def __init__(self, url: str, *, connections: int = 2, timeout_s: float = 2.0) -> None:
        u = urlparse(url)
        if u.scheme not in ("redis", ""):
            raise ValueError("the fast path speaks plain redis:// only")
        self.host = u.hostname or "127.0.0.1"
        self.port = u.port or 6379
        self.db = int((u.path or "/0").lstrip("/") or 0)
        self.username = unquote(u.username) if u.username else None
        self.password = unquote(u.password) if u.password else None
        self.timeout_s = timeout_s
        self._conns: list[_Conn | None] = [None] * max(1, connections)
        self._locks = [asyncio.Lock() for _ in self._conns]
        self._next = itertools.cycle(range(len(self._conns)))

    async def _connect(self) -> _Conn:
        loop = asyncio.get_running_loop()
        _, conn = await asyncio.wait_for(
            loop.create_connection(_Conn, self.host, self.port), self.timeout_s
        )
        setup: list[tuple[Any, ...]] = []
        if self.password is not None:
            auth = (
                ("AUTH", self.username, self.password) if self.username else ("AUTH", self.password)
            )
            setup.append(auth)
        if self.db:
            setup.append(("SELECT", self.db))
        try:
            for cmd in setup:
                await asyncio.wait_for(conn.send(_encode(cmd)), self.timeout_s)
        except BaseException:
            conn.abort(ConnectionError("redis connection setup failed"))
            raise
        return conn

    async def _conn(self) -> _Conn:
        i = next(self._next)
        conn = self._conns[i]
        if conn is not None and not conn.closed:
            return conn
        async with self._locks[i]:  # one reconnect at a time per slot
            conn = self._conns[i]
            if conn is None or conn.closed:
                try:
                    conn = await self._connect()
                except OSError as exc:
                    raise ConnectionError(f"redis unreachable: {exc}") from exc
                self._conns[i] = conn
            return conn

    async def call(self, *args: Any) -> Any:
        conn = await self._conn()
        fut = conn.send(_encode(args))
        try:
            return await asyncio.wait_for(fut, self.timeout_s)
        except TimeoutError:
            # The reply may still come; the connection can no longer be trusted to match it.
            conn.abort(ConnectionError("redis call timed out"))
            raise TimeoutError("redis call timed out") from None

    async def evalsha(self, sha: str, script: str, keys: list[str], args: list[Any]) -> Any:
        """EVALSHA, loading the script once if the server does not know it (a restart)."""
        try:
            return await self.call("EVALSHA", sha, len(keys), *keys, *args)
        except RespError as exc:
            if not str(exc).startswith("NOSCRIPT"):
                raise
        await self.call("SCRIPT", "LOAD", script)
        return await self.call("EVALSHA", sha, len(keys), *keys, *args)

    async def aclose(self) -> None:
        for i, conn in enumerate(self._conns):
            if conn is not None:
                conn.abort(ConnectionError("client closed"))
                self._conns[i] = None
