"""What each hot-path change saves, one piece at a time, in-process (before vs after code).

    python -m bench.hotpath_micro

Each pair runs interleaved in 5 rounds on uvloop; printed: the median CPU time per call
(`time.process_time`) of the old and the new way. The whole-request effect (instructions per
edit under callgrind, CPU per edit) is `python -m bench.profile_edit --other <old tree>`.
"""

from __future__ import annotations

import asyncio
import atexit
import importlib.util
import io
import logging
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from pathlib import Path
from types import ModuleType
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
    saved = (logging._srcfile, logging.logThreads, logging.logMultiprocessing)
    logging._srcfile = saved[0] or logging.__file__
    logging.logThreads = logging.logMultiprocessing = True
    try:
        _log_lines(n)
    finally:
        logging._srcfile, logging.logThreads, logging.logMultiprocessing = saved


def log_new(n: int) -> None:
    saved = (logging._srcfile, logging.logThreads, logging.logMultiprocessing)
    logging._srcfile = None
    logging.logThreads = logging.logMultiprocessing = False
    try:
        _log_lines(n)
    finally:
        logging._srcfile, logging.logThreads, logging.logMultiprocessing = saved


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


# --- the multipart edit body: parse_edit_body before vs after the on_part collector ------------
# The old parser and collector are read from git (the commit before the change), so both run
# in this process on the same bodies; the 8 MB body spools (declared length over 1 MiB).
MULTIPART_BASE = "59b813f"
REPO = Path(__file__).resolve().parent.parent


def _old_body(commit: str) -> ModuleType:
    """app/api/body.py and app/api/multipart.py of `commit`, imported as private modules."""
    tmp = Path(tempfile.mkdtemp(prefix="imagegate-oldbody-"))
    atexit.register(shutil.rmtree, tmp, True)

    def show(path: str) -> str:
        return subprocess.run(
            ["git", "-C", str(REPO), "show", f"{commit}:{path}"],
            capture_output=True, text=True, check=True,
        ).stdout  # fmt: skip

    (tmp / "old_multipart.py").write_text(show("app/api/multipart.py"))
    body = show("app/api/body.py").replace(
        "from app.api.multipart import", "from old_multipart import"
    )
    (tmp / "old_body.py").write_text(body)
    sys.path.insert(0, str(tmp))
    spec = importlib.util.spec_from_file_location("old_body", tmp / "old_body.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _edit_body(image_bytes: int) -> tuple[str, bytes]:
    """What openai-python (httpx) sends for `images.edit(model, image, prompt, n, size)`."""
    from app.media.sniff import HEAD_BYTES

    boundary = os.urandom(16).hex().encode()
    # a PNG signature and IHDR of 1024x1024 RGBA, then noise: sniffs as a PNG, no CR pattern
    head = bytes.fromhex("89504e470d0a1a0a0000000d49484452000004000000040008060000007f1df8")
    head += b"\x00" * (HEAD_BYTES - len(head))
    out = b""
    for name, value in (("model", b"gpt-image-1"), ("prompt", b"A sea otter in a beret"),
                        ("n", b"1"), ("size", b"1024x1024")):  # fmt: skip
        out += b"--" + boundary + b'\r\nContent-Disposition: form-data; name="'
        out += name.encode() + b'"\r\n\r\n' + value + b"\r\n"
    out += b"--" + boundary + b'\r\nContent-Disposition: form-data; name="image"; '
    out += b'filename="otter.png"\r\nContent-Type: image/png\r\n\r\n'
    out += head + os.urandom(image_bytes - len(head)) + b"\r\n--" + boundary + b"--\r\n"
    return "multipart/form-data; boundary=" + boundary.decode(), out


def _parses(module: ModuleType, content_type: str, body: bytes) -> Callable[[int], None]:
    from app.core.config import LimitsConfig
    from app.media.spool import Spool

    limits = LimitsConfig()
    chunks = [body[i : i + 65536] for i in range(0, len(body), 65536)]  # as uvicorn hands them
    spool_dir = tempfile.mkdtemp(prefix="imagegate-micro-spool-")
    atexit.register(shutil.rmtree, spool_dir, True)

    async def stream() -> AsyncIterator[bytes]:
        for chunk in chunks:
            yield chunk

    async def many(n: int) -> None:
        for _ in range(n):
            with Spool(spool_dir) as spool:
                await module.parse_edit_body(
                    content_type, stream(), limits, default_model=None, spool=spool,
                    declared=len(body),
                )  # fmt: skip

    return lambda n: uvloop.run(many(n))


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
    import app.api.body as new_body

    old_body = _old_body(MULTIPART_BASE)
    for label, size, n in (("100 KB", 100_000, 2_000), ("8 MB", 8_000_000, 20)):
        content_type, body = _edit_body(size)
        pair(
            f"parse_edit_body, SDK-shaped {label} edit",
            _parses(old_body, content_type, body),
            _parses(new_body, content_type, body),
            n,
        )


if __name__ == "__main__":
    main()
