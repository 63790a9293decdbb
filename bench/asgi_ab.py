"""A/B of the ASGI server: the same gateway app under uvicorn+httptools and under granian.

    python -m bench.asgi_ab [--seconds 5] [--rounds 3] [--out bench/results/x.md]

One nginx mock, one redis-server, one API key; two gateway processes run side by side, each
ONE worker with the same config and environment: `imagegate serve --workers 1` (uvicorn with
uvloop + httptools, as shipped) and granian (`--interface asgi --workers 1 --loop uvloop
--http 1`) serving the app `granian_app()` builds -- the same `create_app` with the same
Gateway, lifespan on. wrk drives each scenario; runs alternate A B / B A so a noisy neighbour
hits both alike. Per run: req/s, p50/p99 latency and the server's CPU per request (utime+stime
of its whole process tree from /proc, so granian's Rust threads count too).

Scenarios: 100 KB edit at c=1 and c=32; 8 MB edit at c=1, c=8 and c=32.

Needs granian in the environment (`pip install granian`): it is not a project dependency, the
A/B kept uvicorn (bench/results/2026-11-29-asgi-ab.md). `--callgrind` also needs valgrind.
"""

from __future__ import annotations

import argparse
import datetime as dt
import platform
import statistics
import subprocess
import sys
from importlib import metadata
from pathlib import Path
from typing import Any

from bench import gateway as gwmod
from bench.loadgen import WrkResult
from bench.procs import free_port
from bench.profile_edit import (
    Rig,
    callgrind_run,
    cpu_ms,
    granian_argv,
    line,
    rig,
    run_once,
    start_argv,
    start_plain,
)

SCENARIOS = [("100 KB", "small", 1), ("100 KB", "small", 32), ("8 MB", "large", 1),
             ("8 MB", "large", 8), ("8 MB", "large", 32)]  # fmt: skip
SERVERS = ("uvicorn", "granian")


def granian_app() -> Any:
    """The gateway app as `imagegate serve` builds it for one process (settings and config
    from the environment, logging, malloc tuning, tracing), for granian's `--factory`."""
    from app.api.app import create_app
    from app.core import tracing
    from app.core.config import Settings, load_config
    from app.core.logging import setup_logging
    from app.core.memory import tune_malloc
    from app.gateway import Gateway

    settings = Settings()
    setup_logging(settings.log_level, settings.log_format)
    config = load_config(settings, None)
    if settings.malloc_tuning:
        tune_malloc()
    tracing.setup()
    gateway = Gateway(settings, config)
    return create_app(settings, config, gateway=gateway)


def start_granian(r: Rig, gw: gwmod.Gateway, callgrind: bool = False) -> None:
    start_argv(r, gw, granian_argv(gw.port), gwmod.REPO, "granian", callgrind)


def versions() -> str:
    names = ("uvicorn", "httptools", "uvloop", "granian", "starlette", "fastapi", "aiohttp")
    pkgs = ", ".join(f"{n} {metadata.version(n)}" for n in names)
    wrk = subprocess.run(["wrk", "-v"], capture_output=True, text=True).stdout.splitlines()
    return f"Python {platform.python_version()}; {pkgs}; {(wrk or [''])[0].strip()}"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.asgi_ab")
    p.add_argument("--seconds", type=float, default=5.0)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--out", default="")
    p.add_argument("--callgrind", action="store_true", help="instructions per request instead")
    args = p.parse_args(argv)
    if args.callgrind:
        return callgrind_ab(args)
    results: dict[tuple[str, int, str], list[WrkResult]] = {}
    started = dt.datetime.now(dt.UTC)
    with rig("uvicorn") as r:
        assert r.gw.managed is not None
        r.sup.stop(r.gw.managed)  # both servers are started below, side by side
        gws = {name: gwmod.Gateway(free_port(), r.gw.env, r.gw.config, workers=1,
                                   token=r.gw.token) for name in SERVERS}  # fmt: skip
        start_plain(r, gws["uvicorn"], gwmod.REPO, "uvicorn", callgrind=False)
        start_granian(r, gws["granian"])
        gwmod.verify_multipart(gws["granian"], r.large.read_bytes())
        for label, which, conns in SCENARIOS:
            image = r.small if which == "small" else r.large
            for name in SERVERS:  # warm-up
                r.gw = gws[name]
                run_once(r, image, conns, 1.0)
            for i in range(args.rounds):
                for name in SERVERS if i % 2 == 0 else SERVERS[::-1]:
                    r.gw = gws[name]
                    res = run_once(r, image, conns, args.seconds)
                    results.setdefault((label, conns, name), []).append(res)
                    print(line(f"{label} c={conns} round {i + 1} {name:<8}", res), flush=True)
    text = report(results, args, started)
    print(text)
    if args.out:
        Path(args.out).write_text(text)
    return 0


def callgrind_ab(args: argparse.Namespace) -> int:
    """User-space instructions per request of each server's worker process (callgrind, idle
    rate subtracted, task workers off), 100 KB and 8 MB at c=1: independent of machine load."""
    out: dict[tuple[str, str], list[float]] = {}
    with rig("uvicorn") as r:
        assert r.gw.managed is not None
        r.sup.stop(r.gw.managed)
        gws = {name: gwmod.Gateway(free_port(), r.gw.env, r.gw.config, workers=1,
                                   token=r.gw.token) for name in SERVERS}  # fmt: skip
        start_plain(r, gws["uvicorn"], gwmod.REPO, "uvicorn", callgrind=True)
        start_granian(r, gws["granian"], callgrind=True)
        idle = {}
        for name in SERVERS:
            r.gw = gws[name]
            run_once(r, r.small, 1, 5.0)  # warm-up (not instrumented)
            res, ir = callgrind_run(r, r.small, 0, args.seconds, idle=True)
            idle[name] = ir / res.extra["window_s"]
            print(f"{name} idle: {idle[name] / 1e6:.2f} M instr/s", flush=True)
        for label, image in (("100 KB", r.small), ("8 MB", r.large)):
            for i in range(args.rounds):
                for name in SERVERS if i % 2 == 0 else SERVERS[::-1]:
                    r.gw = gws[name]
                    res, ir = callgrind_run(r, image, 1, args.seconds)
                    ir -= int(idle[name] * res.extra["window_s"])
                    per = ir / max(res.requests, 1)
                    out.setdefault((label, name), []).append(per)
                    print(
                        f"{label} round {i + 1} {name}: {per / 1e6:.2f} M instr/request "
                        f"({res.requests} req)",
                        flush=True,
                    )
    lines = ["| request (c=1) | uvicorn+httptools | granian | granian vs uvicorn |",
             "|---|---|---|---|"]  # fmt: skip
    for label in ("100 KB", "8 MB"):
        u = statistics.median(out[(label, "uvicorn")])
        g = statistics.median(out[(label, "granian")])
        lines.append(f"| {label} edit | {u / 1e6:.2f} M | {g / 1e6:.2f} M | {(g - u) / u:+.1%} |")
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        Path(args.out).write_text(text)
    return 0


def _med(runs: list[WrkResult], f: Any) -> str:
    vals = [f(x) for x in runs]
    return f"{statistics.median(vals):,.3f} ({min(vals):,.3f}-{max(vals):,.3f})"


def report(
    results: dict[tuple[str, int, str], list[WrkResult]],
    args: argparse.Namespace,
    started: dt.datetime,
) -> str:
    out = [
        f"# ASGI server A/B: uvicorn+httptools vs granian — {started:%Y-%m-%d %H:%M} UTC",
        "",
        f"- command: `python -m bench.asgi_ab --seconds {args.seconds:g} --rounds {args.rounds}`",
        f"- software: {versions()}",
        f"- machine: nproc 2 ({platform.machine()}), shared with other work while measured: "
        "wall-clock numbers (req/s, latency) are noisy, CPU per request less so",
        "- both: one worker, same config/env/key, Redis store, nginx mock upstream, wrk 1 "
        "thread; runs alternate; values are median (min-max) of the rounds",
        "",
        "| scenario | server | req/s | p50 ms | p99 ms | CPU ms / request |",
        "|---|---|---|---|---|---|",
    ]
    for label, _, conns in SCENARIOS:
        for name in SERVERS:
            runs = results.get((label, conns, name), [])
            if not runs:
                continue
            out.append(
                f"| {label} c={conns} | {name} | {_med(runs, lambda x: x.rps)} | "
                f"{_med(runs, lambda x: x.ms('p50'))} | {_med(runs, lambda x: x.ms('p99'))} | "
                f"{_med(runs, cpu_ms)} |"
            )
    return "\n".join(out) + "\n"


if __name__ == "__main__":
    sys.exit(main())
