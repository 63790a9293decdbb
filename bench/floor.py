"""The floor of this design: what one request costs in the parts the gateway is built on.

    python -m bench.floor [--seconds 5] [--rounds 3] [--out bench/results/<date>-floor.md]
    python -m bench.floor serve <stage> --port N [--upstream URL] [--redis URL] [--spool-dir D]

No gateway logic at all: each stage is a tiny server of its own (one process, uvloop) that
adds one of the gateway's parts to the stage before it, so the difference between two rows is
what that part costs per request, and a stage's CPU per request is a floor the gateway cannot
go under while it is built on those parts.

  S0        uvicorn (httptools, uvloop, access log off, lifespan off) + a bare ASGI app that
            drains the request body and answers the mock's fixed 358 B OpenAI JSON
  S1        S0 + the gateway's multipart parser (app/api/multipart.py FastMultipartParser),
            callbacks that keep the parts (slices of the chunks, joined per part at its end)
  S2        S0 + relay: the body joined into one bytes and POSTed with aiohttp (one shared
            ClientSession/TCPConnector, keep-alive) to the nginx mock; its JSON is the answer
  S3        S2 + two Redis round trips (EVALSHA of `return 1` before and after the relay)
            through app.store.resp.RespClient, against the redis-server this bench starts
  S4        no uvicorn: an asyncio.Protocol on httptools directly (parse, keep the body
            chunks, answer the same JSON): what uvicorn/ASGI itself costs over the raw parts
  S2-spool  S2, but every received chunk is os.write()n to an anonymous temp file (O_TMPFILE)
            and the upstream POST sends that file with os.sendfile (an aiohttp payload doing
            what the gateway's transport does for spooled bodies): the copies any spooling
            gateway pays (8 MB only)

wrk (1 thread, bench/edit.lua: the same multipart edit the main bench sends) drives each
stage and the nginx mock directly ("direct"), at c=1 (p50/p99) and c=32 (req/s): the 100 KB
edit through direct, S4, S0-S3; the 8 MB one through direct, S4, S0, S2, S2-spool;
each round runs every target once, in a rotated order. CPU per request is the
server process's utime+stime over the run / requests answered: on a shared 2-core machine it
is the more robust number (wall-clock numbers move with the neighbours; CPU still moved up
to ~1.6x between quiet and disturbed rounds here, so compare minima too; load is noted).
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import http.client
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

from bench.images import make_images, multipart_body, tiny_png_b64
from bench.loadgen import Body, WrkResult, run_wrk
from bench.mock import openai_response
from bench.procs import (
    CLK_TCK,
    HarnessError,
    Managed,
    Supervisor,
    cpu_seconds,
    ensure_tools,
    free_port,
    loaded_libraries,
    port_open,
    wait_until,
)
from bench.report import cpu_model

REPO = Path(__file__).resolve().parent.parent
WORK = Path(__file__).resolve().parent / ".work"
EDIT_PATH = "/v1/images/edits"

STAGES = ("S0", "S1", "S2", "S3", "S4", "S2-spool")
SMALL_TARGETS = ("direct", "S4", "S0", "S1", "S2", "S3")
LARGE_TARGETS = ("direct", "S4", "S0", "S2", "S2-spool")
WHAT = {
    "direct": "wrk -> nginx mock (no server in between)",
    "S4": "httptools + asyncio.Protocol, no uvicorn (raw floor)",
    "S0": "uvicorn + bare ASGI app (drain body, fixed JSON)",
    "S1": "S0 + FastMultipartParser keeping the parts",
    "S2": "S0 + aiohttp relay to the mock (body as one bytes)",
    "S3": "S2 + 2 Redis EVALSHA round trips (RespClient)",
    "S2-spool": "S2 + body os.write to O_TMPFILE, sent with os.sendfile",
}

# The gateway's numbers this floor is compared with (bench/results/2026-11-29-151ae72.md).
GATEWAY = {
    "100 KB c=1 added p50 ms": 1.89,
    "100 KB c=32 req/s": 860.0,
    "100 KB CPU ms": 1.16,
    "8 MB c=1 added p50 ms": 15.0,
    "8 MB c=32 req/s": 55.0,
}
TARGETS = {
    "100 KB c=1 added p50 ms": 0.6,
    "100 KB c=32 req/s": 1500.0,
    "100 KB CPU ms": 0.45,
    "8 MB c=1 added p50 ms": 5.0,
    "8 MB c=32 req/s": 150.0,
}

Message = dict[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]


# === the servers (run as `python -m bench.floor serve <stage>`) ===============================
def answer_json() -> bytes:
    return json.dumps(openai_response(tiny_png_b64()), separators=(",", ":")).encode()


class Floor:
    """The ASGI app of stages S0-S3 and S2-spool; clients are made on first use (no lifespan)."""

    def __init__(self, stage: str, upstream: str, redis_url: str, spool_dir: str) -> None:
        self.stage = stage
        self.upstream = upstream
        self.redis_url = redis_url
        self.spool_dir = spool_dir
        self.answer = answer_json()
        self.headers = [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(self.answer)).encode()),
        ]
        self.session: Any = None  # aiohttp.ClientSession
        self.redis: Any = None  # app.store.resp.RespClient
        self.sha = ""
        self.setup_lock = asyncio.Lock()

    async def setup(self) -> None:
        async with self.setup_lock:
            if self.session is not None:
                return
            import aiohttp

            if self.stage == "S3":
                from app.store.resp import RespClient

                self.redis = RespClient(self.redis_url)
                self.sha = await self.redis.call("SCRIPT", "LOAD", "return 1")
            connector = aiohttp.TCPConnector(limit=64, keepalive_timeout=60)
            self.session = aiohttp.ClientSession(
                connector=connector, headers={"user-agent": "imagegate-floor"}, trust_env=False
            )

    async def __call__(self, scope: Message, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        stage = self.stage
        if stage in ("S0", "S1"):
            await self.local(scope, receive, send)
            return
        if self.session is None:
            await self.setup()
        extra: list[tuple[bytes, bytes]] = []
        if stage == "S3":
            r1 = await self.redis.evalsha(self.sha, "return 1", ["floor:k"], [])
        ctype = _header(scope, b"content-type")
        headers = {"content-type": ctype, "authorization": "Bearer sk-floor"}
        if stage == "S2-spool":
            status, answer = await self.relay_spooled(receive, headers)
        else:
            chunks = []
            more = True
            while more:
                msg = await receive()
                chunks.append(msg.get("body", b""))
                more = msg.get("more_body", False)
            body = b"".join(chunks)
            async with self.session.post(self.upstream, data=body, headers=headers) as resp:
                answer = await resp.read()
                status = resp.status
        extra.append((b"x-upstream-status", str(status).encode()))
        if stage == "S3":
            r2 = await self.redis.evalsha(self.sha, "return 1", ["floor:k"], [])
            extra.append((b"x-redis", f"{r1},{r2}".encode()))
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(answer)).encode()),
                    *extra,
                ],
            }
        )
        await send({"type": "http.response.body", "body": answer})

    async def local(self, scope: Message, receive: Receive, send: Send) -> None:
        """S0 (drain, keep the chunks) and S1 (the same chunks through the multipart parser)."""
        chunks: list[bytes] = []
        parser = None
        if self.stage == "S1":
            from app.api.multipart import FastMultipartParser, parse_options_header

            _, opts = parse_options_header(_header(scope, b"content-type"))
            parts: list[bytes] = []
            pieces: list[bytes] = []

            def on_part_data(data: bytes, start: int, end: int) -> None:
                pieces.append(data if start == 0 and end == len(data) else data[start:end])

            def on_part_end() -> None:
                parts.append(b"".join(pieces))
                pieces.clear()

            parser = FastMultipartParser(
                opts[b"boundary"], {"on_part_data": on_part_data, "on_part_end": on_part_end}
            )
        more = True
        while more:
            msg = await receive()
            chunk = msg.get("body", b"")
            chunks.append(chunk)
            if parser is not None:
                parser.write(chunk)
            more = msg.get("more_body", False)
        headers = self.headers
        if parser is not None:
            parser.finalize()
            headers = [*headers, (b"x-parts", str(len(parts)).encode())]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": self.answer})

    async def relay_spooled(self, receive: Receive, headers: dict[str, str]) -> tuple[int, bytes]:
        fd = os.open(self.spool_dir, os.O_TMPFILE | os.O_RDWR, 0o600)
        try:
            size = 0
            more = True
            while more:
                msg = await receive()
                chunk = msg.get("body", b"")
                if chunk:
                    size += os.write(fd, chunk)  # a regular file: one write takes it all
                more = msg.get("more_body", False)
            headers = headers | {"content-length": str(size)}
            payload = sendfile_payload(fd, size)
            async with self.session.post(self.upstream, data=payload, headers=headers) as resp:
                return resp.status, await resp.read()
        finally:
            os.close(fd)


def _header(scope: Message, name: bytes) -> str:
    for k, v in scope["headers"]:
        if k == name:
            return str(v.decode("latin-1"))
    return ""


def sendfile_payload(fd: int, size: int) -> Any:
    """An aiohttp payload that sends `size` bytes of file `fd` with os.sendfile, the way the
    gateway's transport sends a spooled body (app/upstream/transport.py `_sendfile`): flush
    the request head, wait until the transport's buffer is empty, then sendfile on a dup of
    the socket (uvloop has no loop.sendfile), waiting for writability when the socket is full."""
    from aiohttp.abc import AbstractStreamWriter
    from aiohttp.payload import Payload

    class SendfilePayload(Payload):
        _size: int

        def __init__(self) -> None:
            super().__init__(fd, content_type=None)
            self._size = size

        def decode(self, encoding: str = "utf-8", errors: str = "strict") -> str:
            return os.pread(fd, size, 0).decode(encoding, errors)

        async def write(self, writer: AbstractStreamWriter) -> None:
            transport: Any = getattr(writer, "transport", None)
            sock = transport.get_extra_info("socket")
            writer.send_headers()
            if transport.get_write_buffer_size():
                transport.set_write_buffer_limits(high=0, low=0)
                while transport.get_write_buffer_size():
                    await writer.drain()
                    await asyncio.sleep(0)
                transport.set_write_buffer_limits()
            loop = asyncio.get_running_loop()
            out = os.dup(sock.fileno())
            try:
                sent = 0
                while sent < size:
                    try:
                        n = os.sendfile(out, fd, sent, size - sent)
                    except BlockingIOError:
                        writable = loop.create_future()
                        loop.add_writer(out, writable.set_result, None)
                        try:
                            await writable
                        finally:
                            loop.remove_writer(out)
                        continue
                    if n == 0:
                        raise OSError(f"spool file ended at {sent} of {size} bytes")
                    sent += n
            finally:
                os.close(out)
            writer.output_size += size

    return SendfilePayload()


class RawHttp(asyncio.Protocol):
    """S4: httptools parses, the body chunks are kept, the fixed JSON answers (keep-alive)."""

    def __init__(self, response: bytes) -> None:
        import httptools

        self.parser = httptools.HttpRequestParser(self)
        self.error = httptools.HttpParserError
        self.response = response
        self.chunks: list[bytes] = []
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except self.error:
            if self.transport is not None:
                self.transport.close()

    def on_body(self, body: bytes) -> None:
        self.chunks.append(body)

    def on_message_complete(self) -> None:
        self.chunks = []
        if self.transport is not None:
            self.transport.write(self.response)


async def raw_server(port: int) -> None:
    answer = answer_json()
    date = time.strftime("%a, %d %b %Y %H:%M:%S GMT", time.gmtime()).encode()
    response = (
        b"HTTP/1.1 200 OK\r\ndate: %s\r\ncontent-type: application/json\r\n"
        b"content-length: %d\r\n\r\n%s" % (date, len(answer), answer)
    )
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: RawHttp(response), "127.0.0.1", port, backlog=4096)
    async with server:
        await server.serve_forever()


def serve(args: argparse.Namespace) -> int:
    import uvloop

    if args.malloc == "tuned":  # what `imagegate serve` does by default (app/core/memory.py)
        from app.core.memory import tune_malloc

        if not tune_malloc():
            raise SystemExit("malloc tuning failed (not glibc?)")

    if args.stage == "S4":
        uvloop.run(raw_server(args.port))
        return 0
    import uvicorn

    app = Floor(args.stage, args.upstream, args.redis, args.spool_dir)
    config = uvicorn.Config(
        app,
        host="127.0.0.1",
        port=args.port,
        loop="uvloop",
        http="httptools",
        lifespan="off",
        access_log=False,
        log_level="warning",
        interface="asgi3",
        backlog=4096,
    )
    uvicorn.Server(config).run()
    return 0


# === the harness ===============================================================================
@dataclass
class Target:
    name: str
    port: int
    managed: Managed

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}{EDIT_PATH}"

    @property
    def pid(self) -> int:
        return self.managed.pid


@dataclass
class Cell:
    runs: list[WrkResult] = field(default_factory=list)
    cpu_ms: list[float] = field(default_factory=list)  # server CPU per request
    side_ms: list[float] = field(default_factory=list)  # nginx + redis CPU per request
    sys_ms: list[float] = field(default_factory=list)  # the kernel part of cpu_ms


def post(port: int, body: bytes, ctype: str) -> tuple[int, dict[str, str], bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.request("POST", EDIT_PATH, body=body, headers={"Content-Type": ctype})
        resp = conn.getresponse()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()
    finally:
        conn.close()


def verify(t: Target, bodies: list[tuple[bytes, str]]) -> None:
    """One real request per body: 200, the mock's JSON, and proof the stage did its part."""
    for body, ctype in bodies:
        status, headers, data = post(t.port, body, ctype)
        if status != 200 or "data" not in json.loads(data):
            raise HarnessError(f"{t.name} answered {status}: {data[:200]!r}")
        need = {"S1": "x-parts", "S2": "x-upstream-status", "S3": "x-redis"}.get(t.name)
        if t.name == "S2-spool":
            need = "x-upstream-status"
        if need and need not in headers:
            raise HarnessError(f"{t.name} did not do its part (no {need}): {headers}")
        if t.name == "S1" and headers["x-parts"] != "3":
            raise HarnessError(f"S1 parsed {headers['x-parts']} parts, not 3")
        if t.name == "S3" and headers["x-redis"] != "1,1":
            raise HarnessError(f"S3 redis replies {headers['x-redis']}")
    if t.name not in ("direct",):
        libs = " ".join(loaded_libraries(t.pid))
        for lib in ("uvloop", "httptools"):
            if lib not in libs:
                raise HarnessError(f"{t.name}: {lib} is not loaded")


def start_stage(
    sup: Supervisor, stage: str, upstream: str, redis_url: str, spool: Path, malloc: str
) -> Target:
    port = free_port()
    argv = [sys.executable, "-m", "bench.floor", "serve", stage, "--port", str(port),
            "--upstream", upstream, "--redis", redis_url, "--spool-dir", str(spool),
            "--malloc", malloc]  # fmt: skip
    env = os.environ | {"PYTHONPATH": str(REPO)}
    managed = sup.start(f"floor-{stage}", argv, env=env, cwd=REPO)
    wait_until(lambda: port_open(port) or not managed.alive(), 30, f"{stage} to listen")
    if not managed.alive():
        raise HarnessError(f"{stage} exited: {managed.log_tail()}")
    return Target(stage, port, managed)


def sys_seconds(pid: int) -> float:
    """stime of one process (the kernel's share of its CPU: socket copies, page faults)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0.0
    return int(stat[stat.rindex(")") + 2 :].split()[12]) / CLK_TCK


def measure(
    wrk: str, t: Target, image: Path, conns: int, seconds: float, side: list[int]
) -> tuple[WrkResult, float, float, float]:
    """One wrk run; (result, server CPU ms/request, its kernel part, nginx+redis ms/request)."""
    cpu0, sys0, side0 = cpu_seconds([t.pid]), sys_seconds(t.pid), cpu_seconds(side)
    res = run_wrk(wrk, t.url, Body("multipart", image), connections=conns, duration_s=seconds)
    cpu, side_cpu = cpu_seconds([t.pid]) - cpu0, cpu_seconds(side) - side0
    n = max(res.requests, 1)
    return res, cpu / n * 1e3, (sys_seconds(t.pid) - sys0) / n * 1e3, side_cpu / n * 1e3


def run(args: argparse.Namespace) -> int:
    started = dt.datetime.now(dt.UTC)
    from bench.gateway import start_redis
    from bench.mock import start_nginx

    WORK.mkdir(parents=True, exist_ok=True)
    run_dir = WORK / f"floor-{started:%Y%m%d-%H%M%S}"
    spool = run_dir / "spool"
    spool.mkdir(parents=True)
    tools = ensure_tools(["nginx", "wrk", "redis-server"], sys.stdout)
    small, large = make_images(WORK)
    sizes = {"100 KB": small.path, "8 MB": large.path}
    if args.sizes:
        sizes = {k: v for k, v in sizes.items() if k.replace(" ", "") in args.sizes.split(",")}
    cells: dict[tuple[str, int, str], Cell] = {}
    loads: list[tuple[float, float, float]] = [os.getloadavg()]
    only = set(args.only.split(",")) if args.only else None
    sup = Supervisor(run_dir / "logs")
    with sup.running():
        mock = start_nginx(sup, tools["nginx"], run_dir, WORK)
        redis = start_redis(sup, tools["redis-server"], run_dir)
        side = [p for p in (mock.managed.tree() + redis.managed.tree())]
        targets = {"direct": Target("direct", mock.port, mock.managed)}
        for stage in STAGES:
            if only is None or stage in only:
                targets[stage] = start_stage(
                    sup, stage, mock.base + EDIT_PATH, redis.url, spool, args.malloc
                )
        bodies = [multipart_body(p.read_bytes(), "gpt-image-1.5") for p in sizes.values()]
        for t in targets.values():
            verify(t, bodies)
        print(f"all {len(targets)} targets answer; side pids {side}", flush=True)
        for label, image in sizes.items():
            names = [n for n in (SMALL_TARGETS if label == "100 KB" else LARGE_TARGETS)
                     if n in targets]  # fmt: skip
            for conns in (1, 32):
                for n in names:  # warm-up, not recorded
                    measure(tools["wrk"], targets[n], image, conns, 1.0, side)
                for i in range(args.rounds):
                    order = names[i % len(names) :] + names[: i % len(names)]
                    for n in order:
                        res, cpu, sys_cpu, side_cpu = measure(
                            tools["wrk"], targets[n], image, conns, args.seconds, side
                        )
                        cell = cells.setdefault((label, conns, n), Cell())
                        cell.runs.append(res)
                        cell.cpu_ms.append(cpu)
                        cell.side_ms.append(side_cpu)
                        cell.sys_ms.append(sys_cpu)
                        print(
                            f"{label:>6} c={conns:<2} r{i + 1} {n:<8} {res.rps:9,.0f} req/s "
                            f"p50 {res.ms('p50'):7.3f} p99 {res.ms('p99'):8.3f} ms  "
                            f"cpu {cpu:6.3f} (sys {sys_cpu:6.3f}) ms/req  "
                            f"nginx+redis {side_cpu:6.3f}  "
                            f"err {res.error_count}  load {os.getloadavg()[0]:.2f}",
                            flush=True,
                        )
                loads.append(os.getloadavg())
    text = report(cells, args, started, loads)
    print(text)
    if args.out:
        Path(args.out).write_text(text)
        print(f"saved {args.out}")
    return 0


# === the report =================================================================================
def _med(vals: list[float]) -> float:
    return statistics.median(vals) if vals else float("nan")


def _rng(vals: list[float], fmt: str) -> str:
    return f"{format(_med(vals), fmt)} ({format(min(vals), fmt)}-{format(max(vals), fmt)})"


def _kernel(c32: Cell, c1: Cell, name: str, fmt: str) -> str:
    if name == "direct":
        return "—"
    return f"{format(_med(c32.sys_ms), fmt)} / {format(_med(c1.sys_ms), fmt)}"


def versions() -> str:
    names = ("uvicorn", "uvloop", "httptools", "aiohttp", "hiredis")
    pkgs = ", ".join(f"{n} {metadata.version(n)}" for n in names)
    tools = []
    for argv in (["nginx", "-v"], ["redis-server", "--version"], ["wrk", "-v"]):
        try:
            done = subprocess.run(argv, capture_output=True, text=True, timeout=10)
            tools.append(((done.stdout or done.stderr).splitlines() or [""])[0].strip())
        except OSError:
            continue
    return f"Python {platform.python_version()}; {pkgs}; " + "; ".join(tools)


def report(
    cells: dict[tuple[str, int, str], Cell],
    args: argparse.Namespace,
    started: dt.datetime,
    loads: list[tuple[float, float, float]],
) -> str:
    def get(label: str, conns: int, name: str) -> Cell:
        return cells.get((label, conns, name), Cell())

    def p50(label: str, conns: int, name: str) -> float:
        return _med([r.ms("p50") for r in get(label, conns, name).runs])

    def errors(label: str, name: str) -> int:
        return sum(r.error_count for c in (1, 32) for r in get(label, c, name).runs)

    load_txt = ", ".join(f"{a:.2f}" for a, _, _ in loads)
    out = [
        f"# The floor: what one request costs in the parts imagegate is built on — "
        f"{started:%Y-%m-%d %H:%M} UTC",
        "",
        f"- command: `python -m bench.floor --seconds {args.seconds:g} --rounds {args.rounds}"
        f" --malloc {args.malloc}`",
        f"- malloc: {args.malloc} ("
        + (
            "each server applies the gateway's `tune_malloc()`: mmap and trim thresholds 64 MiB, "
            "as `imagegate serve` does by default)"
            if args.malloc == "tuned"
            else "glibc defaults: blocks above the dynamic mmap threshold are fresh mmaps)"
        ),
        f"- machine: {cpu_model()}, nproc {os.cpu_count()}, {platform.machine()}, "
        f"Linux {platform.release()}; shared with other work: 1-min load average at the start "
        f"and after each block of runs: {load_txt}",
        f"- software: {versions()}",
        "- each stage is its own server process (one process, uvloop); wrk 1 thread with "
        "bench/edit.lua (the main bench's multipart edit); nginx mock and redis-server as in "
        "the main bench. Values: median (min-max) of the rounds; each round runs every target "
        "once, in a rotated order. CPU = utime+stime of the stage's process / requests.",
        "",
        "## 100 KB multipart edit",
        "",
        "| stage | what | c=1 p50 ms (added vs direct) | c=1 p99 ms | c=32 req/s | "
        "CPU ms/request c=32 | CPU ms/request c=1 | kernel part c=32 / c=1 | "
        "nginx+redis CPU ms/req c=32 |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    d50 = p50("100 KB", 1, "direct")
    for name in SMALL_TARGETS:
        c1, c32 = get("100 KB", 1, name), get("100 KB", 32, name)
        if not c1.runs or not c32.runs:
            continue
        added = "" if name == "direct" else f" (+{p50('100 KB', 1, name) - d50:.3f})"
        cpu32 = "—" if name == "direct" else _rng(c32.cpu_ms, ".3f")
        cpu1 = "—" if name == "direct" else _rng(c1.cpu_ms, ".3f")
        err = f" **{errors('100 KB', name)} errors**" if errors("100 KB", name) else ""
        out.append(
            f"| {name}{err} | {WHAT[name]} | {_rng([r.ms('p50') for r in c1.runs], '.3f')}"
            f"{added} | {_rng([r.ms('p99') for r in c1.runs], '.3f')} | "
            f"{_rng([r.rps for r in c32.runs], ',.0f')} | {cpu32} | {cpu1} | "
            f"{_kernel(c32, c1, name, '.3f')} | {_rng(c32.side_ms, '.3f')} |"
        )
    out += [
        "",
        "## 8 MB multipart edit",
        "",
        "| stage | what | c=1 p50 ms (added vs direct) | c=32 req/s | CPU ms/request c=32 | "
        "CPU ms/request c=1 | kernel part c=32 / c=1 |",
        "|---|---|---|---|---|---|---|",
    ]
    d50l = p50("8 MB", 1, "direct")
    for name in LARGE_TARGETS:
        c1, c32 = get("8 MB", 1, name), get("8 MB", 32, name)
        if not c1.runs or not c32.runs:
            continue
        added = "" if name == "direct" else f" (+{p50('8 MB', 1, name) - d50l:.2f})"
        cpu32 = "—" if name == "direct" else _rng(c32.cpu_ms, ".2f")
        cpu1 = "—" if name == "direct" else _rng(c1.cpu_ms, ".2f")
        err = f" **{errors('8 MB', name)} errors**" if errors("8 MB", name) else ""
        out.append(
            f"| {name}{err} | {WHAT[name]} | {_rng([r.ms('p50') for r in c1.runs], '.2f')}"
            f"{added} | {_rng([r.rps for r in c32.runs], ',.0f')} | {cpu32} | {cpu1} | "
            f"{_kernel(c32, c1, name, '.2f')} |"
        )
    out += ["", "## What each part costs (differences of medians, 100 KB, c=32 CPU)", ""]

    def cpu(name: str, label: str = "100 KB") -> float:
        return _med(get(label, 32, name).cpu_ms)

    for a, b, what in (
        ("S0", "S4", "uvicorn + ASGI over raw httptools"),
        ("S1", "S0", "multipart parse (FastMultipartParser)"),
        ("S2", "S0", "aiohttp relay (one POST, read the answer)"),
        ("S3", "S2", "two Redis round trips (RespClient EVALSHA)"),
    ):
        if get("100 KB", 32, a).runs and get("100 KB", 32, b).runs:
            out.append(f"- {what}: {a} - {b} = {cpu(a) - cpu(b):+.3f} ms CPU per request")
    if get("8 MB", 32, "S2-spool").runs and get("8 MB", 32, "S2").runs:
        out.append(
            f"- 8 MB spool to O_TMPFILE + sendfile vs relay from memory: S2-spool - S2 = "
            f"{cpu('S2-spool', '8 MB') - cpu('S2', '8 MB'):+.2f} ms CPU per request"
        )
    out += [
        "",
        f"Gateway (bench/results/2026-11-29-151ae72.md, quiet machine): 100 KB c=1 "
        f"+{GATEWAY['100 KB c=1 added p50 ms']} ms, c=32 {GATEWAY['100 KB c=32 req/s']:,.0f} "
        f"req/s, {GATEWAY['100 KB CPU ms']} ms CPU per edit; 8 MB c=1 "
        f"+{GATEWAY['8 MB c=1 added p50 ms']} ms, c=32 {GATEWAY['8 MB c=32 req/s']:,.0f} req/s. "
        f"Targets: CPU ≤ {TARGETS['100 KB CPU ms']} ms, c=1 added ≤ "
        f"{TARGETS['100 KB c=1 added p50 ms']} ms, c=32 ≥ {TARGETS['100 KB c=32 req/s']:,.0f} "
        f"req/s; 8 MB c=1 added ≤ {TARGETS['8 MB c=1 added p50 ms']} ms, c=32 ≥ "
        f"{TARGETS['8 MB c=32 req/s']:,.0f} req/s.",
    ]
    return "\n".join(out) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.floor")
    sub = p.add_subparsers(dest="cmd")
    s = sub.add_parser("serve", help="run one stage's server (the harness starts these)")
    s.add_argument("stage", choices=STAGES)
    s.add_argument("--port", type=int, required=True)
    s.add_argument("--upstream", default="")
    s.add_argument("--redis", default="")
    s.add_argument("--spool-dir", default="/tmp")
    s.add_argument("--malloc", choices=("tuned", "default"), default="tuned")
    p.add_argument("--seconds", type=float, default=5.0)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--only", default="", help="comma-separated stages (direct always runs)")
    p.add_argument("--sizes", default="", help="100KB,8MB (default both)")
    p.add_argument(
        "--malloc",
        choices=("tuned", "default"),
        default="tuned",
        help="tuned: the servers apply the gateway's glibc malloc thresholds (app/core/memory.py "
        "tune_malloc, on by default in `imagegate serve`); default: glibc's own",
    )
    p.add_argument("--out", default=f"bench/results/{dt.date.today():%Y-%m-%d}-floor.md")
    args = p.parse_args(argv)
    if args.cmd == "serve":
        return serve(args)
    return run(args)


if __name__ == "__main__":
    sys.exit(main())
