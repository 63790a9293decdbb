"""Fixtures for the task machinery: both queue implementations, a real webhook receiver."""

from __future__ import annotations

import asyncio
import threading
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from app.media.fetch import GuardedFetcher
from app.tasks.base import Task, TaskQueue
from app.tasks.redis_queue import RedisTaskQueue
from app.tasks.sqlite_queue import SQLiteTaskQueue
from tests.support.net import ThreadedServer, serve

QueueFactory = Callable[[], TaskQueue]


@pytest.fixture(params=["redis", "sqlite", "cluster"])
def make_queue_sync(request: pytest.FixtureRequest, tmp_path: Path) -> QueueFactory:
    """A factory for queue instances on one fresh backend (a second instance = a restart)."""
    if request.param in ("redis", "cluster"):
        server = request.getfixturevalue(
            "redis_server" if request.param == "redis" else "redis_cluster"
        )
        server.flushall()
        return lambda: RedisTaskQueue.from_url(server.url)
    db = tmp_path / "tasks.db"
    return lambda: SQLiteTaskQueue(db, poll_s=0.02)


@pytest.fixture
async def make_queue(make_queue_sync: QueueFactory) -> AsyncIterator[QueueFactory]:
    opened: list[TaskQueue] = []

    def factory() -> TaskQueue:
        q = make_queue_sync()
        opened.append(q)
        return q

    yield factory
    for q in opened:
        await q.close()


@pytest.fixture
async def queue(make_queue: QueueFactory) -> TaskQueue:
    return make_queue()


def new_task(callback_url: str | None = None, *, key_id: str = "key_test") -> Task:
    return Task(
        id=str(uuid.uuid4()),
        key_id=key_id,
        trace_id=str(uuid.uuid4()),
        model="gpt-image-1.5",
        created=time.time(),
        callback_url=callback_url,
    )


async def eventually(
    check: Callable[[], Awaitable[bool]], timeout: float = 10.0, interval: float = 0.02
) -> None:
    deadline = time.monotonic() + timeout
    while not await check():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(interval)


@dataclass
class Receiver:
    """A webhook receiver on 127.0.0.1 that answers from a script of status codes."""

    statuses: list[int] = field(default_factory=list)  # consumed in order, then 200
    received: list[tuple[dict[str, str], bytes]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    server: ThreadedServer | None = None

    @property
    def url(self) -> str:
        assert self.server is not None
        return f"{self.server.url}/hook"

    async def hook(self, request: Request) -> Response:
        body = await request.body()
        with self.lock:
            self.received.append((dict(request.headers), body))
            status = self.statuses.pop(0) if self.statuses else 200
        return Response(b"ok" if status < 300 else b"nope", status_code=status)


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    rec = Receiver()
    app = Starlette(routes=[Route("/hook", rec.hook, methods=["POST"])])
    with serve(app) as server:
        rec.server = server
        yield rec


@pytest.fixture
async def fetcher() -> AsyncIterator[GuardedFetcher]:
    f = GuardedFetcher(allow_private=True, timeout_s=5)
    yield f
    await f.aclose()
