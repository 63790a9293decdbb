"""A minimal pipelined RESP client for the two store calls on every request (admit, settle).

redis-py's asyncio client costs ~60-85 us of CPU per command (pool checkout, stream reader,
generic argument packing, response callbacks); on an edit that is two commands out of a
~1 ms budget. This client keeps a couple of persistent connections, writes a command as one
`transport.write`, parses replies with hiredis' C reader and hands them to waiting futures
in order (RESP answers in request order), so many concurrent requests share a connection.

Failures are plain `ConnectionError` / `TimeoutError`; a timed-out or broken connection is
closed with every pending call failed (a late reply must never be matched to the wrong
caller), and the next call reconnects. Everything else (admin, sweeps) stays on redis-py.

`RespCluster` is the same for a Redis Cluster: it learns the slot map (CLUSTER SLOTS) once,
sends each call straight to the master of its key's slot -- still one round trip -- and
follows MOVED (the slot moved: remember the new owner, refresh the map) and ASK (the slot is
migrating: ASKING + the call, one write). A node that cannot be reached fails the call (the
store answers 503) and makes the next call refresh the map, which finds a promoted replica.
"""

from __future__ import annotations

import asyncio
import itertools
import ssl
import time
from collections import deque
from typing import Any

import hiredis
from redis.crc import key_slot

from app.store.redis_url import RedisTarget, parse_redis_url


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


_ASKING = _encode(("ASKING",))


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

    def send(self, payload: bytes, replies: int = 1) -> asyncio.Future[Any]:
        """Write `payload` (holding `replies` commands); the future gets the last reply."""
        loop = asyncio.get_running_loop()
        futs = [loop.create_future() for _ in range(replies)]
        self.waiters.extend(futs)
        assert self.transport is not None
        self.transport.write(payload)
        for early in futs[:-1]:  # e.g. ASKING's +OK; its error would show in the last reply
            early.add_done_callback(_consume)
        return futs[-1]


def _expire(fut: asyncio.Future[Any]) -> None:
    if not fut.done():
        fut.set_exception(TimeoutError())


def _consume(fut: asyncio.Future[Any]) -> None:
    if not fut.cancelled():
        fut.exception()


class RespClient:
    """One server (`redis://` or `rediss://`)."""

    def __init__(
        self,
        url: str | RedisTarget,
        *,
        connections: int = 2,
        timeout_s: float = 2.0,
        node: tuple[str, int] | None = None,
    ) -> None:
        target = parse_redis_url(url) if isinstance(url, str) else url
        self.host, self.port = node or target.nodes[0]
        self.db = target.db
        self.username = target.username
        self.password = target.password
        self.ssl: ssl.SSLContext | None = target.ssl_context()
        self.timeout_s = timeout_s
        self._conns: list[_Conn | None] = [None] * max(1, connections)
        self._locks = [asyncio.Lock() for _ in self._conns]
        self._next = itertools.cycle(range(len(self._conns)))

    async def _connect(self) -> _Conn:
        loop = asyncio.get_running_loop()
        _, conn = await asyncio.wait_for(
            loop.create_connection(
                _Conn, self.host, self.port, ssl=self.ssl,
                server_hostname=self.host if self.ssl is not None else None,
            ),
            self.timeout_s,
        )  # fmt: skip
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

    async def call(self, *args: Any, asking: bool = False) -> Any:
        """One command; with `asking`, preceded by ASKING in the same write (cluster ASK)."""
        conn = await self._conn()
        payload = _encode(args)
        fut = conn.send(_ASKING + payload, replies=2) if asking else conn.send(payload)
        # A timer on the reply's future, not `asyncio.wait_for` (which wraps it in another
        # future and callback on every call): on expiry the future fails with TimeoutError.
        timer = asyncio.get_running_loop().call_later(self.timeout_s, _expire, fut)
        try:
            return await fut
        except TimeoutError:
            # The reply may still come; the connection can no longer be trusted to match it.
            conn.abort(ConnectionError("redis call timed out"))
            raise TimeoutError("redis call timed out") from None
        finally:
            timer.cancel()

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


_SLOTS = 16384
_MAX_REDIRECTS = 5
_REFRESH_EVERY_S = 1.0  # at most one slot-map refresh per second after errors


class RespCluster:
    """A Redis Cluster (`redis+cluster://` / `rediss+cluster://`): one `RespClient` per master,
    each call routed by its first key's hash slot."""

    def __init__(self, url: str | RedisTarget, *, connections: int = 2, timeout_s: float = 2.0):
        self.target = parse_redis_url(url) if isinstance(url, str) else url
        if not self.target.cluster:
            raise ValueError("RespCluster needs a redis+cluster:// URL")
        self.timeout_s = timeout_s
        self.connections = connections
        self._slots: list[tuple[str, int] | None] = [None] * _SLOTS
        self._nodes: dict[tuple[str, int], RespClient] = {}
        self._known: list[tuple[str, int]] = list(self.target.nodes)
        self._refresh_lock = asyncio.Lock()
        self._stale = True
        self._refreshed_at = 0.0

    def _node(self, addr: tuple[str, int]) -> RespClient:
        node = self._nodes.get(addr)
        if node is None:
            node = self._nodes[addr] = RespClient(
                self.target, connections=self.connections, timeout_s=self.timeout_s, node=addr
            )
        return node

    async def refresh(self) -> None:
        """Read the slot map from the first node that answers (known masters, then URL nodes)."""
        async with self._refresh_lock:
            if not self._stale and self._refreshed_at:
                return
            errors: list[str] = []
            for addr in dict.fromkeys([*self._known, *self.target.nodes]):
                try:
                    ranges = await self._node(addr).call("CLUSTER", "SLOTS")
                except (ConnectionError, TimeoutError, OSError, RespError) as exc:
                    errors.append(f"{addr[0]}:{addr[1]}: {exc}")
                    continue
                slots: list[tuple[str, int] | None] = [None] * _SLOTS
                masters: list[tuple[str, int]] = []
                for lo, hi, primary, *_replicas in ranges:
                    host = primary[0] or addr[0]  # an empty host means "the one you asked"
                    owner = (str(host), int(primary[1]))
                    masters.append(owner)
                    for slot in range(int(lo), int(hi) + 1):
                        slots[slot] = owner
                self._slots = slots
                self._known = list(dict.fromkeys(masters)) or self._known
                self._stale = False
                self._refreshed_at = time.monotonic()
                return
            self._refreshed_at = time.monotonic()
            raise ConnectionError("no Redis Cluster node answered: " + "; ".join(errors))

    async def _owner(self, slot: int) -> tuple[str, int]:
        if self._stale and (
            self._slots[slot] is None or time.monotonic() - self._refreshed_at > _REFRESH_EVERY_S
        ):
            await self.refresh()
        addr = self._slots[slot]
        if addr is None:
            raise ConnectionError(f"hash slot {slot} is not served by any node")
        return addr

    async def call_keyed(self, key: str, *args: Any) -> Any:
        """`args` sent to the master of `key`'s slot, following MOVED/ASK redirects."""
        slot = key_slot(key.encode())
        addr = await self._owner(slot)
        asking = False
        for _ in range(_MAX_REDIRECTS):
            try:
                return await self._node(addr).call(*args, asking=asking)
            except (ConnectionError, TimeoutError, OSError):
                self._stale = True  # the owner may have failed over: re-learn on next call
                raise
            except RespError as exc:
                kind, _, rest = str(exc).partition(" ")
                if kind not in ("MOVED", "ASK"):
                    raise
                _slot, _, where = rest.partition(" ")
                host, _, port = where.rpartition(":")
                target = (host or addr[0], int(port))
                if kind == "MOVED":
                    self._slots[slot] = target
                    self._stale = True
                    asking = False
                else:
                    asking = True
                addr = target
        raise ConnectionError(f"too many cluster redirects for slot {slot}")

    async def evalsha(self, sha: str, script: str, keys: list[str], args: list[Any]) -> Any:
        """EVALSHA on the slot's master, loading the script there if it does not know it."""
        try:
            return await self.call_keyed(keys[0], "EVALSHA", sha, len(keys), *keys, *args)
        except RespError as exc:
            if not str(exc).startswith("NOSCRIPT"):
                raise
        await self.call_keyed(keys[0], "SCRIPT", "LOAD", script)
        return await self.call_keyed(keys[0], "EVALSHA", sha, len(keys), *keys, *args)

    async def aclose(self) -> None:
        for node in self._nodes.values():
            await node.aclose()
        self._nodes.clear()


def fast_client(url: str, *, timeout_s: float = 2.0) -> RespClient | RespCluster:
    target = parse_redis_url(url)
    if target.cluster:
        return RespCluster(target, timeout_s=timeout_s)
    return RespClient(target, timeout_s=timeout_s)
