"""`imagegate serve`: the gateway under uvicorn (uvloop + httptools), with the simulated
upstream started beside it for every upstream that has no API key configured.

The simulator runs in the same process and event loop on its own loopback port, so the
gateway still talks to it over real HTTP exactly as it would to OpenAI or Gemini.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import sys
import threading
from collections.abc import Callable, Coroutine, Iterator
from typing import Any

import uvicorn
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from app.core import tracing
from app.core.config import ConfigError, GatewayConfig, Settings, load_config
from app.core.logging import fields, get_logger, quiet_info, setup_logging
from app.core.memory import raise_open_files_limit, tune_malloc

log = get_logger("imagegate")

SIM_PATHS = {"openai": "/v1", "gemini": "/v1beta"}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def simulated_upstreams(config: GatewayConfig) -> list[str]:
    return [name for name, up in config.upstreams.items() if not up.api_key]


def point_at_simulator(config: GatewayConfig, names: list[str], sim_url: str) -> GatewayConfig:
    upstreams = dict(config.upstreams)
    for name in names:
        up = upstreams[name]
        upstreams[name] = up.model_copy(
            update={"base_url": sim_url + SIM_PATHS[up.kind], "api_key": "sk-simulated"}
        )
    return config.model_copy(update={"upstreams": upstreams})


def _run(coro: Any) -> None:
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency via uvicorn[standard]
        asyncio.run(coro)
        return
    uvloop.run(coro)


def _start_process(settings: Settings, explicit_config: str | None) -> GatewayConfig | None:
    """Logging set up and config loaded, as every long-running command starts; None (and a
    message naming the file and field) when the config is invalid."""
    try:
        setup_logging(settings.log_level, settings.log_format)
    except ValueError as exc:
        print(f"config error: {exc}", file=sys.stderr)
        return None
    try:
        return load_config(settings, explicit_config)
    except ConfigError as exc:
        print(f"config error: {exc}", file=sys.stderr)
        return None


def serve(
    settings: Settings,
    *,
    host: str,
    port: int,
    explicit_config: str | None = None,
    workers: int = 1,
) -> int:
    config = _start_process(settings, explicit_config)
    if config is None:
        return 2
    if settings.malloc_tuning:
        tune_malloc()
    raise_open_files_limit()  # ~3 descriptors per edit in flight (app/core/memory.py)
    if workers <= 1:
        if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):  # an operator's choice: start it clean
            from app.core.metrics import multiprocess_dir_for_group

            multiprocess_dir_for_group()
        _run(_main(settings, config, host, port, explicit_config=explicit_config))
        return 0
    return _serve_forked(settings, config, host, port, workers, explicit_config)


def _serve_forked(
    settings: Settings,
    config: GatewayConfig,
    host: str,
    port: int,
    workers: int,
    explicit_config: str | None = None,
) -> int:
    """N gateway processes accepting on one shared socket (one per core): the same
    multi-replica layout as several machines sharing a store, on one machine.

    Signals to the parent go to the gateway processes: SIGHUP reloads each one's config,
    SIGTERM/SIGINT drain them; the simulator (if any) is stopped only after they have exited,
    so requests in flight to it still get their answers."""
    from app.core.metrics import multiprocess_dir_for_group, process_exited, remove_group_dir
    from app.gateway import ensure_admin_key

    # Decided once, before forking, so the workers don't race to generate it.
    settings.admin_key = ensure_admin_key(settings)
    # One metrics directory for the group, so any process's /metrics answers the group's totals.
    metrics_dir, owned_metrics_dir = multiprocess_dir_for_group()
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(2048)
    sock.set_inheritable(True)
    children: list[int] = []
    sim_pid: int | None = None
    sim_url: str | None = None
    simulated = simulated_upstreams(config)
    if simulated:
        sim_port = _free_port()
        sim_url = f"http://127.0.0.1:{sim_port}"
        config = point_at_simulator(config, simulated, sim_url)
        _announce_simulator(simulated, sim_url)
        sim_pid = _fork(lambda: _run(_quietly(_sim_server(sim_port).serve())))
    for _ in range(workers):
        children.append(_fork(lambda: _run(_main(
            settings, config, host, port, sockets=[sock], simulate=False,
            explicit_config=explicit_config, sim_url=sim_url,
        ))))  # fmt: skip
    log.info("gateway.workers", extra=fields(workers=workers, pids=children))

    def forward(signum: int, _frame: Any) -> None:
        for pid in children:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signum)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    signal.signal(signal.SIGHUP, forward)
    status = 0
    remaining = set(children)
    while remaining:
        try:
            pid, code = os.waitpid(-1, 0)
        except ChildProcessError:
            break
        if pid not in remaining:
            continue
        remaining.discard(pid)
        process_exited(pid)
        if os.waitstatus_to_exitcode(code) not in (0, -signal.SIGTERM, -signal.SIGINT):
            status = 1
    if sim_pid is not None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(sim_pid, signal.SIGTERM)
        with contextlib.suppress(ChildProcessError):
            os.waitpid(sim_pid, 0)
    sock.close()
    if owned_metrics_dir:
        remove_group_dir(metrics_dir)
    return status


def _fork(target: Any) -> int:
    pid = os.fork()
    if pid == 0:  # child
        code = 0
        try:
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            signal.signal(signal.SIGINT, signal.SIG_DFL)
            signal.signal(signal.SIGHUP, signal.SIG_IGN)  # until the gateway handles it
            target()
        except BaseException:
            log.exception("worker.crashed")
            code = 1
        finally:
            os._exit(code)
    return pid


async def _quietly(coro: Coroutine[Any, Any, None]) -> None:
    """Run the simulator without its uvicorn start-up lines: they would repeat the gateway's
    ("Started server process", "Uvicorn running on"); our own banner announces it."""
    with quiet_info():
        await coro


class _Body:
    """A request body's pieces as the parser hands them over, not yet joined.

    uvicorn keeps the pieces that arrived between two `receive()` calls in a bytearray
    (`body += piece`) and gives the app `bytes(body)`: two copies of every upload before the
    app sees it. This keeps the pieces instead: `bytes()` returns the piece itself when one
    arrived (the usual case: the app reads as the data comes), else joins them once
    (bench/results/2026-11-29-hotpath.md)."""

    __slots__ = ("parts", "size")

    def __init__(self) -> None:
        self.parts: list[bytes] = []
        self.size = 0

    def __iadd__(self, piece: bytes) -> _Body:
        self.parts.append(piece)
        self.size += len(piece)
        return self

    def __len__(self) -> int:
        return self.size

    def __bytes__(self) -> bytes:
        return self.parts[0] if len(self.parts) == 1 else b"".join(self.parts)


class HttpProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol, with the request body kept as `_Body` pieces. Everything
    else (flow control, keep-alive, limits) is uvicorn's own."""

    def on_body(self, body: bytes) -> None:
        cycle: Any = self.cycle
        if type(cycle.body) is not _Body:  # a fresh bytearray: uvicorn's, after each receive
            pending = bytes(cycle.body)
            cycle.body = _Body()
            if pending:
                cycle.body += pending
        super().on_body(body)


class _Server(uvicorn.Server):
    """uvicorn's server, with the shutdown imagegate promises.

    SIGTERM/SIGINT start the graceful drain (uvicorn stops accepting and waits for in-flight
    requests up to `timeout_graceful_shutdown`) and call `on_exit` at once, so task workers
    drain at the same time; afterwards the process exits 0 -- uvicorn's own handler re-raises
    the signal, which ends the process as killed by SIGTERM. With `handles_signals=False`
    (the simulator beside the gateway) signals are left to the gateway's server."""

    def __init__(
        self,
        config: uvicorn.Config,
        *,
        handles_signals: bool = True,
        on_exit: Callable[[], None] | None = None,
    ) -> None:
        super().__init__(config)
        self.handles_signals = handles_signals
        self.on_exit = on_exit

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        if not self.handles_signals or threading.current_thread() is not threading.main_thread():
            yield
            return
        loop = asyncio.get_running_loop()

        def handle(sig: int, frame: Any) -> None:
            self.handle_exit(sig, frame)
            if self.on_exit is not None:
                loop.call_soon_threadsafe(self.on_exit)

        originals = {sig: signal.signal(sig, handle) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield
        finally:
            for sig, original in originals.items():
                signal.signal(sig, original)


def _sim_server(port: int) -> uvicorn.Server:
    from app.simulator import create_simulator_app

    return _Server(
        uvicorn.Config(
            create_simulator_app(), host="127.0.0.1", port=port, log_level="warning",
            http="httptools", lifespan="off", access_log=False, log_config=None,
        ),
        handles_signals=False,
    )  # fmt: skip


def _announce_simulator(simulated: list[str], sim_url: str) -> None:
    banner = (
        f"NO UPSTREAM CREDENTIALS for {', '.join(simulated)}: relaying to the built-in "
        f"SIMULATED upstream at {sim_url} (fake images). Set IMAGEGATE_OPENAI_API_KEY / "
        "IMAGEGATE_GEMINI_API_KEY for real edits."
    )
    log.warning("upstream.simulated", extra=fields(upstreams=simulated, url=sim_url))
    print("\n" + "!" * 78 + f"\n{banner}\n" + "!" * 78 + "\n", file=sys.stderr, flush=True)


async def _main(
    settings: Settings,
    config: GatewayConfig,
    host: str,
    port: int,
    *,
    sockets: list[socket.socket] | None = None,
    simulate: bool = True,
    explicit_config: str | None = None,
    sim_url: str | None = None,
) -> None:
    """One gateway process. `sim_url`: a simulator already running (forked mode) that
    credential-less upstreams point at, also after a reload."""
    from app.api.app import create_app
    from app.gateway import Gateway

    servers: list[uvicorn.Server] = []
    simulated = simulated_upstreams(config) if simulate else []
    if simulated:
        sim_port = _free_port()
        sim_url = f"http://127.0.0.1:{sim_port}"
        config = point_at_simulator(config, simulated, sim_url)
        servers.append(_sim_server(sim_port))
        _announce_simulator(simulated, sim_url)

    _dump_tasks_on_sigusr1()
    tracing.setup()
    gateway = Gateway(settings, config)

    def load() -> GatewayConfig:
        fresh = load_config(settings, explicit_config)
        if sim_url is None:
            return fresh
        return point_at_simulator(fresh, simulated_upstreams(fresh), sim_url)

    gateway.config_loader = load
    _reload_on_sighup(gateway)
    store_kind = "redis" if settings.redis_url else f"sqlite at {gateway.data_dir}/imagegate.db"
    log.info("gateway.start", extra=fields(host=host, port=port, store=store_kind,
                                           models=list(config.models)))  # fmt: skip
    if not settings.admin_key:
        print(f"admin key: stored in {(gateway.data_dir / 'admin_key').resolve()}", file=sys.stderr)
    app = create_app(settings, config, gateway=gateway)
    main = _Server(
        uvicorn.Config(
            app, host=host, port=port, log_level=settings.log_level, http=HttpProtocol,
            lifespan="on", access_log=False, log_config=None, timeout_keep_alive=30,
            timeout_graceful_shutdown=config.server.shutdown_grace_s,  # type: ignore[arg-type]
        ),
        on_exit=gateway.begin_shutdown,
    )  # fmt: skip
    servers.append(main)
    tasks = [asyncio.create_task(_quietly(s.serve())) for s in servers[:-1]]
    tasks.append(asyncio.create_task(main.serve(sockets=sockets)))
    try:
        await tasks[-1]
    finally:
        for s in servers:
            s.should_exit = True
        for t in tasks:
            with contextlib.suppress(BaseException):
                await t
        tracing.shutdown()


def _reload_on_sighup(gateway: Any) -> None:
    """`kill -HUP <pid>` reloads the YAML config; a bad file is logged with the start-up
    message and the running config stays."""
    loop = asyncio.get_running_loop()

    def reload() -> None:
        try:
            gateway.reload()
        except ConfigError as exc:
            log.error("config.reload.refused", extra=fields(error=str(exc)))
            print(f"config error: {exc} (running config kept)", file=sys.stderr, flush=True)

    with contextlib.suppress(NotImplementedError, RuntimeError):
        loop.add_signal_handler(signal.SIGHUP, reload)


def _dump_tasks_on_sigusr1() -> None:
    """`kill -USR1 <pid>` logs every asyncio task's stack: what a stuck request waits on."""
    loop = asyncio.get_running_loop()

    def dump() -> None:
        import io

        for task in asyncio.all_tasks(loop):
            buf = io.StringIO()
            task.print_stack(limit=30, file=buf)
            log.warning("task.stack", extra=fields(task=task.get_name(), stack=buf.getvalue()))

    with contextlib.suppress(NotImplementedError, RuntimeError):
        loop.add_signal_handler(signal.SIGUSR1, dump)


def work(settings: Settings, *, explicit_config: str | None = None) -> int:
    """`imagegate worker`: task workers and callback deliveries without an HTTP server."""
    config = _start_process(settings, explicit_config)
    if config is None:
        return 2
    if simulated_upstreams(config):
        print(
            "imagegate worker needs upstream credentials (the simulated upstream runs only "
            "inside `imagegate serve`)",
            file=sys.stderr,
        )
        return 2
    _run(_work(settings, config))
    return 0


async def _work(settings: Settings, config: GatewayConfig) -> None:
    import signal

    from app.gateway import Gateway

    tracing.setup()
    gateway = Gateway(settings, config)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await gateway.start()
    log.info("worker.start", extra=fields(workers=config.tasks.workers))
    try:
        await stop.wait()
    finally:
        await gateway.aclose()
        tracing.shutdown()
