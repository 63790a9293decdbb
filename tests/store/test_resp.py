"""The lean RESP client's timeout: a server that stops answering fails the call within
`timeout_s`, the connection is dropped (a late reply can never reach the wrong caller) and the
next call gets a fresh connection."""

from __future__ import annotations

import asyncio
import contextlib
import time

from app.store.resp import RespClient
from tests.support.redis_server import RedisServer


async def test_silent_server_times_out_and_the_connection_is_replaced() -> None:
    accepted: list[asyncio.StreamWriter] = []

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        accepted.append(writer)
        await reader.read()  # reads the commands, answers nothing, until the client leaves

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    client = RespClient(f"redis://127.0.0.1:{port}/0", connections=1, timeout_s=0.2)
    try:
        started = time.monotonic()
        try:
            await client.call("PING")
        except TimeoutError as exc:
            assert "timed out" in str(exc)
        else:
            raise AssertionError("a silent server must time out")
        assert 0.15 < time.monotonic() - started < 2
        first = client._conns[0]
        assert first is not None and first.closed and not first.waiters
        with contextlib.suppress(TimeoutError):
            await client.call("PING")
        assert len(accepted) == 2  # the second call connected again
    finally:
        await client.aclose()
        server.close()
        await server.wait_closed()


async def test_answers_arrive_in_order_and_leave_no_timers(redis_server: RedisServer) -> None:
    client = RespClient(redis_server.url, connections=1, timeout_s=0.5)
    try:
        replies = await asyncio.gather(*(client.call("ECHO", str(i)) for i in range(50)))
        assert replies == [str(i) for i in range(50)]
        await asyncio.sleep(0.7)  # past the timeout: no timer fires on a finished call
        assert await client.call("PING") == "PONG"
        conn = client._conns[0]
        assert conn is not None and not conn.closed
    finally:
        await client.aclose()
