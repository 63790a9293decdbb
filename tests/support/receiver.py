"""A callback receiver: a real HTTP server on 127.0.0.1 that records what it is sent."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from tests.support.net import ThreadedServer


@dataclass
class Delivery:
    body: bytes
    headers: dict[str, str]
    at: float


@dataclass
class Receiver:
    server: ThreadedServer
    deliveries: list[Delivery] = field(default_factory=list)
    answers: list[int] = field(default_factory=list)  # statuses to answer, then 200
    lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def url(self) -> str:
        return self.server.url + "/hook"

    def wait_for(self, count: int, timeout: float = 30) -> list[Delivery]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self.lock:
                if len(self.deliveries) >= count:
                    return list(self.deliveries)
            time.sleep(0.05)
        raise TimeoutError(f"got {len(self.deliveries)} deliveries, wanted {count}")


@contextmanager
def receiver(answers: list[int] | None = None) -> Iterator[Receiver]:
    holder: dict[str, Any] = {}

    async def hook(request: Request) -> Response:
        rec: Receiver = holder["r"]
        body = await request.body()
        with rec.lock:
            rec.deliveries.append(Delivery(body, dict(request.headers), time.time()))
            status = rec.answers.pop(0) if rec.answers else 200
        return Response(status_code=status)

    server = ThreadedServer(Starlette(routes=[Route("/hook", hook, methods=["POST"])])).start()
    rec = Receiver(server=server, answers=list(answers or []))
    holder["r"] = rec
    try:
        yield rec
    finally:
        server.stop()
