"""What each hot-path change saves, one piece at a time, in-process (before vs after code).

    python -m bench.hotpath_micro

Each pair runs interleaved in 5 rounds on uvloop; printed: the median CPU time per call
(`time.process_time`) of the old and the new way. The whole-request effect (instructions per
edit under callgrind, CPU per edit) is `python -m bench.profile_edit --other <old tree>`.
"""

from __future__ import annotations

import asyncio
import io
import logging
import statistics
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import uvloop

from app.core.logging import JsonFormatter, fields
from app.store.base import utc_day

ROUNDS = 5


def per_call(fn: Callable[[int], None], n: int) -> float:
    t0 = time.process_time()
    fn(n)
    return (time.process_time() - t0) / n


def pair(name: str, old: Callable[[int], None], new: Callable[[int], None], n: int) -> None:
    a, b = [], []
    for _ in range(ROUNDS):
        a.append(per_call(old, n))
        b.append(per_call(new, n))
    ma, mb = statistics.median(a) * 1e6, statistics.median(b) * 1e6
    print(f"{name:<52} old {ma:7.2f} us   new {mb:7.2f} us   saved {ma - mb:6.2f} us")


# --- utc_day ------------------------------------------------------------------------------
def utc_day_old(n: int) -> None:
    now = time.time()
    for _ in range(n):
        datetime.fromtimestamp(now, UTC).strftime("%Y-%m-%d")


def utc_day_new(n: int) -> None:
    now = time.time()
    for _ in range(n):
        utc_day(now)


# --- the access log line --------------------------------------------------------------------
def _logger() -> logging.Logger:
    lg = logging.getLogger("bench.micro")
    lg.handlers[:] = []
    h = logging.StreamHandler(io.StringIO())
    h.setFormatter(JsonFormatter())
    lg.addHandler(h)
    lg.propagate = False
    lg.setLevel(logging.INFO)
    return lg


def _log_lines(n: int) -> None:
    lg = _logger()
    for _ in range(n):
        lg.info(
            "request",
            extra=fields(trace_id="x" * 36, method="POST", path="/v1/images/edits", status=200),
        )


def log_old(n: int) -> None:
    saved = (logging._srcfile, logging.logThreads, logging.logMultiprocessing)  # type: ignore[attr-defined]
    logging._srcfile = saved[0] or logging.__file__  # type: ignore[attr-defined]
    logging.logThreads = logging.logMultiprocessing = True
    try:
        _log_lines(n)
    finally:
        logging._srcfile, logging.logThreads, logging.logMultiprocessing = saved  # type: ignore[attr-defined]


def log_new(n: int) -> None:
    saved = (logging._srcfile, logging.logThreads, logging.logMultiprocessing)  # type: ignore[attr-defined]
    logging._srcfile = None  # type: ignore[attr-defined]
    logging.logThreads = logging.logMultiprocessing = False
    try:
        _log_lines(n)
    finally:
        logging._srcfile, logging.logThreads, logging.logMultiprocessing = saved  # type: ignore[attr-defined]


# --- waiting for a reply with a timeout -------------------------------------------------------
def _replies(n: int, wait: Callable[[asyncio.Future[Any]], Any]) -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        for _ in range(n):
            fut = loop.create_future()
            loop.call_soon(fut.set_result, 1)
            await wait(fut)

    uvloop.run(main())


def wait_for_old(n: int) -> None:
    _replies(n, lambda fut: asyncio.wait_for(fut, 2.0))


def wait_for_new(n: int) -> None:
    async def wait(fut: asyncio.Future[Any]) -> Any:
        timer = asyncio.get_running_loop().call_later(2.0, lambda: None)
        try:
            return await fut
        finally:
            timer.cancel()

    _replies(n, wait)


# --- FastAPI's layers in front of the fast route ----------------------------------------------
def _drive(app: Any, n: int) -> None:
    scope_base = {
        "type": "http",
        "method": "POST",
        "path": "/v1/images/edits",
        "headers": [],
        "query_string": b"",
        "root_path": "",
        "http_version": "1.1",
        "scheme": "http",
        "server": ("127.0.0.1", 80),
        "client": ("127.0.0.1", 1),
    }

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        return None

    async def main() -> None:
        for _ in range(n):
            await app(dict(scope_base), receive, send)

    uvloop.run(main())


async def _handler(scope: Any, receive: Any, send: Any) -> None:
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"{}"})


def _apps() -> tuple[Any, Any]:
    from fastapi import FastAPI

    from app.api.app import GatewayApp
    from app.api.middleware import RequestContextMiddleware

    logging.getLogger("imagegate.access").disabled = True  # the log line is measured above

    class FastRoutes:  # the old arrangement: inside FastAPI's middleware stack
        def __init__(self, app: Any, routes: dict[tuple[str, str], Any]) -> None:
            self.app, self.routes = app, routes

        async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
            h = self.routes.get((scope["method"], scope["path"]))
            if h is not None:
                await h(scope, receive, send)
                return
            await self.app(scope, receive, send)

    old = FastAPI()
    old.add_middleware(FastRoutes, routes={("POST", "/v1/images/edits"): _handler})
    old.add_middleware(RequestContextMiddleware)
    new = GatewayApp()
    new.add_middleware(RequestContextMiddleware)
    new.fast_routes = {("POST", "/v1/images/edits"): RequestContextMiddleware(_handler)}
    return old, new


def main() -> None:
    pair("utc_day (admit and settle each call it)", utc_day_old, utc_day_new, 20_000)
    pair("access log line (JSON, one per request)", log_old, log_new, 20_000)
    pair("RESP reply wait with a timeout (admit, settle)", wait_for_old, wait_for_new, 20_000)
    old, new = _apps()
    pair(
        "fast route: inside FastAPI's stack vs before it",
        lambda n: _drive(old, n),
        lambda n: _drive(new, n),
        5_000,
    )


if __name__ == "__main__":
    main()
