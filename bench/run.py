"""`python -m bench` / `python bench/run.py`: measure what the gateway adds to each request.

Starts its own servers on 127.0.0.1 (nginx mock, slow mock, redis-server, `imagegate serve`),
runs the scenarios, prints a markdown table beside the targets and saves it under
bench/results/. Exit status: 0 when every selected scenario produced its numbers (whether or
not they meet the targets), 1 when a scenario could not be measured, 2 when the harness could
not start at all, 130 on Ctrl-C. Timings never gate CI; this is a command a person runs.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import shutil
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path

if __package__ in (None, ""):  # run as a file: make `bench` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import gateway as gwmod
from bench import scenarios as sc
from bench.images import make_images
from bench.loadgen import WrkResult
from bench.mock import start_nginx
from bench.procs import HarnessError, Supervisor, ensure_tools, free_port, port_open, wait_until
from bench.report import Report, Row, machine_facts, save
from bench.slow import SlowControl

WORK = Path(__file__).resolve().parent / ".work"
ALL = "abcdefgs"
ORDER = "abcefgsd"  # (d) restarts the gateway, so it goes last

DESCRIPTIONS = {
    "a": "added latency at c=1, 100 KB and 8 MB multipart edits (p50/p90/p99)",
    "b": "max throughput at c=32, 100 KB edits",
    "c": "CPU seconds per request of the gateway's process tree (from the b and a runs)",
    "d": "RSS per in-flight request, 1,000 small / 50 large held by the slow upstream",
    "e": "8 MB upload pass-through MB/s at c=4",
    "f": "JSON edit with an image URL (the gateway fetches it from nginx)",
    "g": "nano-banana edit (Gemini generateContent shape)",
    "s": "store commands per request (Redis MONITOR / INFO commandstats)",
}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m bench",
        description="imagegate gateway benchmark: direct-to-mock vs through the gateway.",
        epilog="scenarios: " + "; ".join(f"{k}: {v}" for k, v in DESCRIPTIONS.items()),
    )
    p.add_argument("--quick", action="store_true", help="smoke run: 2 s runs, 1 repetition")
    p.add_argument("--only", default="", help=f"comma-separated scenarios from {ALL!r}")
    p.add_argument("--duration", type=float, default=None, help="seconds per run (default 10)")
    p.add_argument("--reps", type=int, default=None, help="repetitions per side (default 3)")
    p.add_argument("--keep", action="store_true", help="leave the servers running at the end")
    p.add_argument("--direct-only", action="store_true", help="no gateway: measure the mock only")
    p.add_argument("--inflight-small", type=int, default=None, help="(d) small requests (1000)")
    p.add_argument("--inflight-large", type=int, default=None, help="(d) 8 MB requests (50)")
    p.add_argument("--slow-delay", type=float, default=30.0, help="slow upstream's longest hold")
    p.add_argument("--no-save", action="store_true", help="print the table, don't save it")
    p.add_argument(
        "--workers", type=int, default=2, help="gateway processes (imagegate serve --workers)"
    )
    return p.parse_args(argv)


def selected(only: str) -> list[str]:
    wanted = {s.strip() for s in only.split(",") if s.strip()} if only else set(ALL)
    unknown = wanted - set(ALL)
    if unknown:
        raise SystemExit(f"unknown scenario(s): {', '.join(sorted(unknown))}; choose from {ALL}")
    if "c" in wanted:
        wanted.add("b")  # CPU per request is read during the throughput runs
    return [s for s in ORDER if s in wanted]


def _prune_runs(keep: int = 10) -> None:
    """Old run directories (logs, configs, raw numbers) are kept for a while, not forever."""
    runs = sorted(p for p in WORK.glob("run-*") if p.is_dir())
    for old in runs[:-keep]:
        shutil.rmtree(old, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    scen = selected(args.only)
    duration = args.duration or (2.0 if args.quick else 10.0)
    reps = args.reps or (1 if args.quick else 3)
    use_gateway = not args.direct_only
    WORK.mkdir(parents=True, exist_ok=True)
    _prune_runs()
    run_dir = WORK / f"run-{dt.datetime.now(dt.UTC):%Y%m%d-%H%M%S}"
    run_dir.mkdir(parents=True)
    print(f"imagegate bench: scenarios {','.join(scen)}, {duration:g} s x {reps}; work {run_dir}")
    try:
        tools = ensure_tools(
            ["nginx", "wrk"] + (["redis-server"] if use_gateway else []), sys.stdout
        )
        if use_gateway:
            ok, why = gwmod.cli_status()
            if not ok:
                print(f"error: the gateway cannot be started yet: {why}\n"
                      "(use --direct-only to measure the mock alone)")  # fmt: skip
                return 2
        small, large = make_images(WORK)
    except HarnessError as exc:
        print(f"error: {exc}")
        return 2

    settings = (
        f"{duration:g} s per run, {reps} repetition(s) per side, direct and gateway alternating, "
        f"1 s unrecorded warm-up per side; wrk 1 thread; images {small.size:,} B and "
        f"{large.size:,} B (PNG of noise); values are median (min-max) of the repetitions, "
        "latency cost = median(gateway) - median(direct) of the same percentile"
    )
    report = Report(machine_facts(gwmod.REPO, tools), settings)
    failed: list[str] = []
    interrupted = False
    sup = Supervisor(run_dir / "logs", keep=args.keep)
    try:
        with sup.running():
            ctx = _start_servers(sup, tools, run_dir, small, large, report, args, duration, reps)
            a_small: dict[str, list[WrkResult]] = {}
            b: dict[str, list[WrkResult]] = {}
            steps: dict[str, Callable[[], object]] = {
                "a": lambda: a_small.update(sc.scenario_a(ctx)),
                "b": lambda: b.update(sc.scenario_b(ctx)),
                "c": lambda: sc.scenario_c(ctx, b, a_small),
                "d": lambda: sc.scenario_d(ctx),
                "e": lambda: sc.scenario_e(ctx),
                "f": lambda: sc.scenario_f(ctx),
                "g": lambda: sc.scenario_g(ctx),
                "s": lambda: sc.scenario_s(ctx),
            }
            for s in scen:
                print(f"\n({s}) {DESCRIPTIONS[s]}", flush=True)
                t0 = time.monotonic()
                try:
                    steps[s]()
                except (HarnessError, RuntimeError, OSError, ValueError, KeyError) as exc:
                    failed.append(s)
                    report.add(Row(s, DESCRIPTIONS[s], result=str(exc)[:300], status="error"))
                    traceback.print_exc()
                print(f"    ({s} took {time.monotonic() - t0:.0f} s)")
            (run_dir / "raw.json").write_text(json.dumps(ctx.raw, indent=1, default=str))
    except HarnessError as exc:
        print(f"\nerror: {exc}")
        return 2
    except KeyboardInterrupt:
        print("\ninterrupted; servers stopped (partial results are not saved)")
        interrupted = True
        return 130
    finally:
        if report.rows:
            print("\n" + report.markdown())
            if not (args.no_save or interrupted):
                print(f"saved {save(report, gwmod.REPO)}")
    return 1 if failed else 0


def _start_servers(
    sup: Supervisor,
    tools: dict[str, str],
    run_dir: Path,
    small: sc.TestImage,
    large: sc.TestImage,
    report: Report,
    args: argparse.Namespace,
    duration: float,
    reps: int,
) -> sc.Ctx:
    print("starting nginx mock ...", flush=True)
    mock = start_nginx(sup, tools["nginx"], run_dir, WORK)
    ctx = sc.Ctx(
        sup=sup,
        wrk=tools["wrk"],
        run_dir=run_dir,
        mock=mock,
        small=small,
        large=large,
        report=report,
        duration=duration,
        reps=reps,
        quick=args.quick,
        inflight_small=args.inflight_small or (200 if args.quick else 1000),
        inflight_large=args.inflight_large or (10 if args.quick else 50),
    )
    report.notes.append(f"mock upstream: nginx on {mock.base} (1 worker, access log off)")
    if args.direct_only:
        report.notes.append("direct-only run: no gateway was started")
        return ctx
    slow_port = free_port()
    slow = sup.start(
        "slow",
        [
            sys.executable,
            "-m",
            "bench.slow",
            "--port",
            str(slow_port),
            "--delay",
            str(args.slow_delay),
        ],
        cwd=gwmod.REPO,
    )
    wait_until(lambda: port_open(slow_port) or not slow.alive(), 15, "the slow mock to listen")
    ctx.slow = SlowControl(slow_port)
    print("starting redis-server ...", flush=True)
    ctx.redis = gwmod.start_redis(sup, tools["redis-server"], run_dir)
    config = gwmod.write_config(run_dir, mock.base, f"http://127.0.0.1:{slow_port}")
    gw = gwmod.Gateway(
        free_port(),
        gwmod.gateway_env(run_dir, config, ctx.redis, mock.base),
        config,
        workers=args.workers,
    )
    print(f"starting imagegate serve on {gw.base} ...", flush=True)
    gwmod.start_gateway(sup, gw)
    gwmod.create_key(gw)
    gwmod.verify_multipart(gw, small.path.read_bytes())
    gwmod.verify_multipart(gw, large.path.read_bytes())
    ctx.gw = gw
    report.facts["gateway"] = (
        f"`imagegate serve` on {gw.base}, {gw.runtime()}, Redis store (AOF everysec), "
        f"key from {gw.key_source}, log level info to a file"
    )
    if args.keep:
        print(f"  --keep: gateway {gw.base}  token {gw.token}  config {config}")
    return ctx


if __name__ == "__main__":
    raise SystemExit(main())
