"""CPU per edit of ONE gateway worker, and a profile of it: the hot-path driver.

    python -m bench.profile_edit [--server uvicorn|granian] [--image small|large]
        [-c 1] [--seconds 5] [--rounds 3] [--pyspy out.svg|out.json|out.txt] [--keep]
    python -m bench.profile_edit --other <another checkout> [--callgrind] ...   (A/B)

Starts the bench's own nginx mock, redis-server and the gateway (one worker; `imagegate serve
--workers 1`, or the same app under granian, see bench/asgi_ab.py), creates a key, checks one
edit, then runs wrk `--rounds` times and prints per round: requests, req/s, p50/p99 and the
gateway's CPU per request (utime+stime of its process tree from /proc, so a noisy neighbour
costs wall time, not this number). `--pyspy` records a py-spy profile (native frames with
PYSPY_NATIVE=1) of the gateway during one more run of the same load (`pip install py-spy`;
not a project dependency). `--callgrind` needs valgrind (Debian `valgrind`).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import os
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from bench import gateway as gwmod
from bench.images import make_images
from bench.loadgen import Body, WrkResult, run_wrk
from bench.mock import NginxMock, start_nginx
from bench.procs import Supervisor, cpu_seconds, ensure_tools, free_port, port_open

WORK = Path(__file__).resolve().parent / ".work"


@dataclass
class Rig:
    """nginx mock + redis + one gateway under one server, stopped together."""

    sup: Supervisor
    tools: dict[str, str]
    mock: NginxMock
    gw: gwmod.Gateway
    small: Path
    large: Path
    run_dir: Path
    redis_pid: int = 0
    extra: dict[str, str] = field(default_factory=dict)


def granian_argv(port: int) -> list[str]:
    """The same gateway app under granian: one worker, uvloop, HTTP/1, as `serve` runs it."""
    exe = shutil.which("granian") or str(Path(sys.executable).with_name("granian"))
    return [
        exe,
        "--interface", "asgi",
        "--factory", "bench.asgi_ab:granian_app",
        "--host", "127.0.0.1",
        "--port", str(port),
        "--workers", "1",
        "--loop", "uvloop",
        "--http", "1",
        "--no-ws",
        "--log-level", "warning",
    ]  # fmt: skip


def start_server(rig: Rig, server: str) -> None:
    """(Re)start the gateway under `server` on a fresh port, same env and config."""
    if rig.gw.managed is not None:
        rig.sup.stop(rig.gw.managed)
        rig.gw.managed = None
    rig.gw.port = free_port()
    if server == "uvicorn":
        gwmod.start_gateway(rig.sup, rig.gw)
    else:
        rig.gw.managed = rig.sup.start(
            "granian", granian_argv(rig.gw.port), env=rig.gw.env, cwd=gwmod.REPO
        )
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if not rig.gw.managed.alive():
                raise RuntimeError(f"granian exited:\n{rig.gw.managed.log_tail()}")
            if port_open(rig.gw.port) and gwmod.get_status(rig.gw.port, "/readyz") == 200:
                break
            time.sleep(0.1)
        else:
            raise RuntimeError(f"granian not ready:\n{rig.gw.managed.log_tail()}")
    if not rig.gw.token:
        gwmod.create_key(rig.gw)
    gwmod.verify_multipart(rig.gw, rig.small.read_bytes())
    gwmod.verify_multipart(rig.gw, rig.large.read_bytes())


@contextlib.contextmanager
def rig(server: str = "uvicorn", keep: bool = False) -> Iterator[Rig]:
    WORK.mkdir(parents=True, exist_ok=True)
    run_dir = WORK / f"hotpath-{dt.datetime.now(dt.UTC):%Y%m%d-%H%M%S-%f}"
    run_dir.mkdir(parents=True)
    tools = ensure_tools(["nginx", "wrk", "redis-server"], sys.stdout)
    small, large = make_images(WORK)
    sup = Supervisor(run_dir / "logs", keep=keep)
    with sup.running():
        mock = start_nginx(sup, tools["nginx"], run_dir, WORK)
        slow_port = free_port()  # no slow mock: the bench-slow model is never called here
        redis = gwmod.start_redis(sup, tools["redis-server"], run_dir)
        config = gwmod.write_config(run_dir, mock.base, f"http://127.0.0.1:{slow_port}")
        env = gwmod.gateway_env(run_dir, config, redis, mock.base)
        gw = gwmod.Gateway(0, env, config, workers=1)
        r = Rig(sup, tools, mock, gw, small.path, large.path, run_dir, redis.managed.pid)
        start_server(r, server)
        yield r


def gateway_pids(r: Rig) -> list[int]:
    return r.gw.tree()


def run_once(r: Rig, image: Path, connections: int, seconds: float) -> WrkResult:
    pids = gateway_pids(r)
    cpu0, rcpu0 = cpu_seconds(pids), cpu_seconds([r.redis_pid])
    res = run_wrk(
        r.tools["wrk"],
        f"{r.gw.base}/v1/images/edits",
        Body("multipart", image),
        connections=connections,
        duration_s=seconds,
        token=r.gw.token,
    )
    res.extra["gw_cpu_s"] = cpu_seconds(pids) - cpu0
    res.extra["redis_cpu_s"] = cpu_seconds([r.redis_pid]) - rcpu0
    return res


def line(label: str, res: WrkResult) -> str:
    n = max(res.requests, 1)
    return (
        f"{label}: {res.requests} req, {res.rps:,.0f} req/s, p50 {res.ms('p50'):.3f} ms, "
        f"p99 {res.ms('p99'):.3f} ms, gateway CPU {res.extra['gw_cpu_s'] * 1000 / n:.3f} ms/req,"
        f" redis {res.extra['redis_cpu_s'] * 1000 / n:.3f} ms/req, errors {res.error_count}"
    )


def cpu_ms(res: WrkResult) -> float:
    return res.extra["gw_cpu_s"] * 1000 / max(res.requests, 1)


def pyspy(r: Rig, image: Path, connections: int, seconds: float, out: str) -> None:
    exe = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    pid = gateway_pids(r)[-1]  # the worker (granian forks one; uvicorn runs in the root)
    fmt = "speedscope" if out.endswith(".json") else "flamegraph"
    if out.endswith(".txt"):
        fmt = "raw"
    spy = subprocess.Popen(
        [
            exe,
            "record",
            "-r",
            "500",
            "-p",
            str(pid),
            "-o",
            out,
            "-f",
            fmt,
            "-d",
            str(int(seconds) + 1),
            *(["--native"] if os.environ.get("PYSPY_NATIVE") else []),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.STDOUT,
    )
    time.sleep(0.5)
    print(line("profiled run", run_once(r, image, connections, seconds)))
    spy.wait(timeout=seconds + 60)


def start_plain(r: Rig, gw: gwmod.Gateway, tree: Path, name: str, callgrind: bool) -> None:
    """`imagegate serve --workers 1` from `tree` (see `start_argv`)."""
    argv = [sys.executable, "-c", "import sys; from app.cli import main; sys.exit(main())"]
    argv += ["serve", "--host", "127.0.0.1", "--port", str(gw.port), "--workers", "1"]
    start_argv(r, gw, argv, tree, name, callgrind)


def start_argv(
    r: Rig, gw: gwmod.Gateway, argv: list[str], tree: Path, name: str, callgrind: bool
) -> None:
    """Start a gateway server command and wait until it answers an edit; with `callgrind`,
    under valgrind with instrumentation off until `callgrind_run` turns it on (start-up and
    warm-up are not counted; a forked worker stays under valgrind too)."""
    if callgrind:
        # The task workers' queue polling is a cost per second, not per edit: off here, so the
        # few requests a run under valgrind manages are not buried under it.
        gw.env = gw.env | {"IMAGEGATE_WORKERS": "0"}
        out = r.run_dir / f"callgrind.{name}.%p"
        argv = ["valgrind", "--tool=callgrind", "--instr-atstart=no",
                f"--callgrind-out-file={out}", *argv]  # fmt: skip
    gw.managed = r.sup.start(name, argv, env=gw.env, cwd=tree)
    deadline = time.monotonic() + (600 if callgrind else 60)
    while not (port_open(gw.port) and gwmod.get_status(gw.port, "/readyz", 30) == 200):
        if time.monotonic() > deadline or not gw.managed.alive():
            raise RuntimeError(f"{name} did not start:\n{gw.managed.log_tail()}")
        time.sleep(0.5)
    gwmod.verify_multipart(gw, r.small.read_bytes())


def callgrind_run(
    r: Rig, image: Path, connections: int, seconds: float, idle: bool = False
) -> tuple[WrkResult, int]:
    """Instructions the gateway ran during one wrk run (callgrind_control on, run, dump);
    with `idle`, during `seconds` without requests (its background loops)."""
    assert r.gw.managed is not None
    pid = str(r.gw.tree()[-1])  # the worker: granian forks one, uvicorn serves in the root
    subprocess.run(["callgrind_control", "--zero", pid], capture_output=True, check=True)
    subprocess.run(["callgrind_control", "-i", "on", pid], capture_output=True, check=True)
    t0 = time.monotonic()
    if idle:
        time.sleep(seconds)
        res = WrkResult(0, seconds, 0, {}, {})
    else:
        res = run_wrk(
            r.tools["wrk"], f"{r.gw.base}/v1/images/edits", Body("multipart", image),
            connections=connections, duration_s=seconds, token=r.gw.token, timeout_s=60,
        )  # fmt: skip
    subprocess.run(["callgrind_control", "-i", "off", pid], capture_output=True, check=True)
    res.extra["window_s"] = time.monotonic() - t0
    done = subprocess.run(
        ["callgrind_control", "--dump", pid], capture_output=True, text=True, check=True
    )
    del done
    newest = max(r.run_dir.glob(f"callgrind.*.{pid}*"), key=lambda p: p.stat().st_mtime)
    for text in newest.read_text(errors="replace").splitlines():
        if text.startswith("totals:"):
            return res, int(text.split()[1])
    raise RuntimeError(f"no totals in {newest}")


def ab(args: argparse.Namespace) -> int:
    """Two gateways (this tree = A, `--other` = B) on one nginx + redis, runs alternating."""
    with rig(args.server, keep=False) as r:
        other = Path(args.other).resolve()
        sides = {"A": (gwmod.REPO, r.gw.env), "B": (other, r.gw.env | {"PYTHONPATH": str(other)})}
        if r.gw.managed is not None:
            r.sup.stop(r.gw.managed)
        gws = {}
        for name, (tree, env) in sides.items():
            gw = gwmod.Gateway(free_port(), env, r.gw.config, workers=1, token=r.gw.token)
            start_plain(r, gw, tree, f"gateway-{name}", args.callgrind)
            gws[name] = gw
        gw_a = r.gw
        image = r.small if args.image == "small" else r.large
        cpus: dict[str, list[float]] = {"A": [], "B": []}
        p50s: dict[str, list[float]] = {"A": [], "B": []}
        instr: dict[str, list[float]] = {"A": [], "B": []}
        for gw in gws.values():
            r.gw = gw
            run_once(r, image, args.connections, 1.0 if not args.callgrind else 5.0)
        idle_rate = {}
        if args.callgrind:  # background loops (task polling, sweeps) per second, subtracted
            for name, gw in gws.items():
                r.gw = gw
                res, ir = callgrind_run(r, image, 0, args.seconds, idle=True)
                idle_rate[name] = ir / res.extra["window_s"]
                print(f"{name} idle: {idle_rate[name] / 1e6:.2f} M instr/s", flush=True)
        for i in range(args.rounds):
            for name in ("A", "B") if i % 2 == 0 else ("B", "A"):
                r.gw = gws[name]
                if args.callgrind:
                    res, ir = callgrind_run(r, image, args.connections, args.seconds)
                    ir -= int(idle_rate[name] * res.extra["window_s"])
                    instr[name].append(ir / max(res.requests, 1))
                    print(
                        f"round {i + 1} {name}: {instr[name][-1] / 1e6:.2f} M instr/edit "
                        f"({res.requests} req)",
                        flush=True,
                    )
                    continue
                res = run_once(r, image, args.connections, args.seconds)
                cpus[name].append(cpu_ms(res))
                p50s[name].append(res.ms("p50"))
                print(line(f"round {i + 1} {name}", res), flush=True)
        r.gw = gw_a
        if args.callgrind:
            ia, ib = statistics.median(instr["A"]), statistics.median(instr["B"])
            print(
                f"median instructions per edit: A {ia / 1e6:.3f} M, B {ib / 1e6:.3f} M, "
                f"A-B {(ia - ib) / 1e6:+.3f} M ({(ia - ib) / ib * 100:+.1f}%)"
            )
            return 0
        ma, mb = statistics.median(cpus["A"]), statistics.median(cpus["B"])
        print(
            f"median CPU per edit: A {ma:.3f} ms, B {mb:.3f} ms, A-B {ma - mb:+.3f} ms "
            f"({(ma - mb) / mb * 100:+.1f}%); p50 A {statistics.median(p50s['A']):.3f} "
            f"B {statistics.median(p50s['B']):.3f} ms"
        )
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.profile_edit")
    p.add_argument("--server", choices=["uvicorn", "granian"], default="uvicorn")
    p.add_argument("--image", choices=["small", "large"], default="small")
    p.add_argument("-c", "--connections", type=int, default=1)
    p.add_argument("--seconds", type=float, default=5.0)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--pyspy", default="", help="record a py-spy profile to this file")
    p.add_argument("--keep", action="store_true", help="leave the servers running")
    p.add_argument("--callgrind", action="store_true", help="A/B in instructions (valgrind)")
    p.add_argument(
        "--other", default="", help="A/B: another checkout of the repo, run alternating with this"
    )
    args = p.parse_args(argv)
    if args.other:
        return ab(args)
    os.environ.setdefault("PYTHONHASHSEED", "0")
    with rig(args.server, keep=args.keep) as r:
        image = r.small if args.image == "small" else r.large
        run_once(r, image, args.connections, 1.0)  # warm-up
        cpus = []
        for i in range(args.rounds):
            res = run_once(r, image, args.connections, args.seconds)
            cpus.append(cpu_ms(res))
            print(line(f"round {i + 1}", res), flush=True)
        print(f"median gateway CPU per edit: {statistics.median(cpus):.3f} ms")
        if args.pyspy:
            pyspy(r, image, args.connections, args.seconds, args.pyspy)
        if args.keep:
            print(f"gateway {r.gw.base} token {r.gw.token} pids {gateway_pids(r)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
