"""`python -m bench` / `python bench/run.py`: measure what the gateway adds to each request.

Starts its own servers on 127.0.0.1 (nginx mock, slow mock, redis-server, `imagegate serve`),
runs the scenarios, prints a markdown table beside the targets and saves it under
bench/results/. Exit status: 0 when every selected scenario produced its numbers (whether or
not they meet the targets), 1 when a scenario could not be measured, 2 when the harness could
not start at all, 130 on Ctrl-C. Timings never gate CI; this is a command a person runs.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import resource
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
from bench.images import INFLIGHT_1MB_BYTES, make_images, make_inflight_image
from bench.loadgen import WrkResult
from bench.mock import start_nginx
from bench.peers import PEERS
from bench.procs import HarnessError, Supervisor, ensure_tools, free_port, port_open, wait_until
from bench.report import Report, Row, machine_facts, save, update_readme
from bench.slow import SlowControl

WORK = Path(__file__).resolve().parent / ".work"
ALL = "abcdefgs"
ORDER = "abcefgsd"  # (d) restarts the gateway, so it goes last

DESCRIPTIONS = {
    "a": "added latency at c=1, 100 KB and 8 MB multipart edits (p50/p90/p99)",
    "b": "max throughput at c=32, 100 KB and 8 MB edits",
    "c": "CPU seconds per request of the gateway's process tree (from the b and a runs)",
    "d": "RSS and spool disk per in-flight request, 1,000 x 1 MB / 200 x 8 MB held upstream",
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
    p.add_argument("--inflight-medium", type=int, default=None, help="(d) 1 MB requests (1000)")
    p.add_argument("--inflight-large", type=int, default=None, help="(d) 8 MB requests (200)")
    p.add_argument(
        "--inflight-burst", type=int, default=64,
        help="(d) uploads in progress at once while filling up (0: all at once)",
    )  # fmt: skip
    p.add_argument("--slow-delay", type=float, default=60.0, help="slow upstream's longest hold")
    p.add_argument("--no-save", action="store_true", help="print the table, don't save it")
    p.add_argument(
        "--workers", type=int, default=1, help="gateway processes (imagegate serve --workers)"
    )
    p.add_argument("--no-peers", action="store_true", help="don't run the peer (LiteLLM) column")
    p.add_argument(
        "--readme", action="store_true", help="copy the saved README table into README.md"
    )
    return p.parse_args(argv)


def raise_open_files_limit() -> tuple[int, int]:
    """Soft RLIMIT_NOFILE up to the hard one: (d) holds 1,000 client sockets here, and the
    gateway (which inherits the limit) a client socket, an upstream socket and a spool file
    for each in-flight request."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        want = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)


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
    nofile = raise_open_files_limit()
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
        medium = make_inflight_image(WORK)
    except HarnessError as exc:
        print(f"error: {exc}")
        return 2

    settings = (
        f"{duration:g} s per run, {reps} repetition(s) per side, direct and gateway alternating, "
        f"1 s unrecorded warm-up per side; wrk 1 thread; images {small.size:,} B and "
        f"{large.size:,} B (PNG of noise), in-flight 1 MB upload {medium.size:,} B (above the "
        f"default 1 MiB spool threshold); values are median (min-max) of the repetitions, "
        "latency cost = median(gateway) - median(direct) of the same percentile; "
        f"RLIMIT_NOFILE {nofile[0]}/{nofile[1]}"
    )
    assert medium.size == INFLIGHT_1MB_BYTES
    report = Report(machine_facts(gwmod.REPO, tools), settings)
    if args.quick or duration < 10 or reps < 3:
        report.facts["run_kind"] = f"; SHORT RUN ({duration:g} s x {reps}): a smoke test only"
    failed: list[str] = []
    interrupted = False
    sup = Supervisor(run_dir / "logs", keep=args.keep)
    try:
        with sup.running():
            ctx = _start_servers(sup, tools, run_dir, small, large, report, args, duration, reps)
            ctx.medium = medium
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
                saved = save(report, gwmod.REPO)
                print(f"saved {saved}")
                if args.readme:
                    update_readme(saved)
                    print(f"README.md: performance table from {saved.name}")
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
        inflight_medium=args.inflight_medium or (100 if args.quick else 1000),
        inflight_large=args.inflight_large or (20 if args.quick else 200),
        inflight_burst=args.inflight_burst,
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
        f"`imagegate serve --workers {gw.workers}` on {gw.base}, {gw.runtime()}, Redis store "
        f"(AOF everysec), key from {gw.key_source}, log level info to a file, open files limit "
        f"{gw.open_files_limit()}"
    )
    report.facts["machine_short"] = report.facts["machine"].split(", Linux")[0]
    report.facts["gateway_short"] = (
        f"imagegate `--workers {gw.workers}`, Redis store, auth + rate limits + credits on, "
        "info logging"
    )
    if args.keep:
        print(f"  --keep: gateway {gw.base}  token {gw.token}  config {config}")
    _start_peer(ctx, args, mock.base, run_dir, report)
    return ctx


def _start_peer(
    ctx: sc.Ctx, args: argparse.Namespace, mock_base: str, run_dir: Path, report: Report
) -> None:
    """The peer column: started when its venv exists, pre-checked like the gateway (a 200 with
    data through the same mock for both edit sizes); otherwise its cells say why not."""
    spec = PEERS["litellm"]
    report.peer_title = spec.title
    if args.no_peers:
        ctx.peer_status = "skipped: --no-peers"
        return
    if not spec.installed():
        ctx.peer_status = "skipped: not installed"
        report.notes.append(f"peer {spec.title}: not installed (`make bench-peers`)")
        return
    print(f"starting {spec.title} ...", flush=True)
    try:
        peer = spec.start(ctx.sup, run_dir, mock_base, gwmod.MODEL)
        for image in (ctx.small, ctx.large):
            gwmod.verify_multipart_at(
                peer.port, peer.token, image.path.read_bytes(), gwmod.MODEL,
                f"{spec.title} multipart edit", peer.managed.log_tail(1500),
            )  # fmt: skip
    except HarnessError as exc:
        ctx.peer_status = "skipped: failed its pre-check"
        report.notes.append(f"peer {spec.title} failed its pre-check: {str(exc)[:400]}")
        print(f"  {spec.title}: {exc}", flush=True)
        return
    ctx.peer = peer
    ctx.peer_status = peer.label
    report.peer_title = peer.label
    report.facts["peer"] = (
        f"{peer.label} (`litellm --config <generated> --num_workers 1`, no database, master "
        f"key) on {peer.base}, relaying to the same nginx mock as an OpenAI `api_base`"
    )


if __name__ == "__main__":
    raise SystemExit(main())
