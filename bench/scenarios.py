"""The scenarios (a)-(g) and (s): what is sent, to whom, and which rows come out.

The rows with a target also go into the README table (`TableRow`), in the target order.

Direct and gateway runs of one scenario alternate (D G D G D G) so that slow drift of the
shared machine (other processes, thermal, page cache) hits both sides alike; each is
preceded by a short unrecorded warm-up. Reported numbers are medians over the repetitions
with min-max beside them; "added" is median(gateway) - median(direct).
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import threading
import time
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from bench import gateway as gwmod
from bench.gateway import GEMINI_MODEL, MODEL, SLOW_MODEL, Gateway, Redis
from bench.images import PROMPT, TestImage, gemini_body, multipart_body
from bench.loadgen import Body, WrkResult, run_wrk
from bench.mock import NginxMock
from bench.peers import Peer
from bench.procs import HarnessError, Supervisor, cpu_seconds, rss_bytes
from bench.redisstats import Monitor, commandstats, delta
from bench.report import Report, Row, TableRow, med, met, spread, verdict
from bench.slow import SlowControl

KIB = 1024
MIB = 1024 * 1024

# Targets (one gateway worker, 2 cores, everything on loopback); docs: bench/README.md
T_ADDED_P50_SMALL_MS = 0.6
T_ADDED_P99_SMALL_MS = 1.5
T_ADDED_P50_LARGE_MS = 5.0
T_RPS_LARGE = 150.0
T_RPS_SMALL = 1500.0
T_PEER_RATIO = 25.0
T_CPU_MS = 0.45
T_INFLIGHT_KIB = 64.0


@dataclass
class Ctx:
    """Everything a scenario needs; `gw` is None in direct-only mode, `peer` None when the
    peer is not installed or not wanted (`peer_status` says which)."""

    sup: Supervisor
    wrk: str
    run_dir: Path
    mock: NginxMock
    small: TestImage
    large: TestImage
    report: Report
    duration: float
    reps: int
    quick: bool
    medium: TestImage | None = None  # the 1 MB in-flight upload (d)
    gw: Gateway | None = None
    redis: Redis | None = None
    slow: SlowControl | None = None
    peer: Peer | None = None
    peer_status: str = "skipped: not installed"
    inflight_medium: int = 1000
    inflight_large: int = 200
    inflight_burst: int = 64  # (d) uploads in progress at once while filling up
    raw: dict[str, object] = field(default_factory=dict)


@dataclass(frozen=True)
class Target:
    label: str  # "direct", "gateway" (or another gateway label), "litellm"
    url: str
    body: Body
    sut: str = ""  # whose processes' CPU to read: "" (the mock), "gateway" or "peer"
    token: str | None = None


def _direct_edit(ctx: Ctx, image: TestImage) -> Target:
    return Target("direct", f"{ctx.mock.base}/v1/images/edits", Body("multipart", image.path))


def _gateway_edit(ctx: Ctx, image: TestImage, model: str = MODEL, label: str = "gateway") -> Target:
    base = ctx.gw.base if ctx.gw else "http://127.0.0.1:0"  # dropped by measure() then
    token = ctx.gw.token if ctx.gw else None
    body = Body("multipart", image.path, model)
    return Target(label, f"{base}/v1/images/edits", body, "gateway", token)


def _peer_edit(ctx: Ctx, image: TestImage) -> Target:
    if ctx.peer is None:
        return Target("litellm", "", Body("multipart", image.path), "peer")
    body = Body("multipart", image.path, MODEL)
    return Target("litellm", ctx.peer.edits_url, body, "peer", ctx.peer.token)


def _edit_targets(ctx: Ctx, image: TestImage) -> list[Target]:
    """direct, imagegate and (when it runs) the peer, for the same multipart edit."""
    return [_direct_edit(ctx, image), _gateway_edit(ctx, image), _peer_edit(ctx, image)]


def _sut_pids(ctx: Ctx, t: Target) -> list[int]:
    if t.sut == "gateway" and ctx.gw:
        return ctx.gw.tree()
    if t.sut == "peer" and ctx.peer:
        return ctx.peer.tree()
    return []


def measure(
    ctx: Ctx, name: str, targets: list[Target], connections: int
) -> dict[str, list[WrkResult]]:
    """Run every target `reps` times, alternating; gateway and peer runs also record the CPU
    seconds used meanwhile by their process tree (and the gateway's by redis-server)."""
    targets = [
        t
        for t in targets
        if (t.sut != "gateway" or ctx.gw is not None) and (t.sut != "peer" or ctx.peer is not None)
    ]
    results: dict[str, list[WrkResult]] = {t.label: [] for t in targets}
    warm = 1.0
    for t in targets:  # warm-up: connection pools, lazy imports, allocator arenas
        run_wrk(ctx.wrk, t.url, t.body, connections=connections, duration_s=warm, token=t.token)
    for rep in range(ctx.reps):
        for t in targets:
            pids = _sut_pids(ctx, t)
            redis_pids = [ctx.redis.managed.pid] if (ctx.redis and t.sut == "gateway") else []
            cpu0, rcpu0 = cpu_seconds(pids), cpu_seconds(redis_pids)
            res = run_wrk(
                ctx.wrk,
                t.url,
                t.body,
                connections=connections,
                duration_s=ctx.duration,
                token=t.token,
            )
            if pids:
                res.extra["gw_cpu_s"] = cpu_seconds(pids) - cpu0
                res.extra["redis_cpu_s"] = cpu_seconds(redis_pids) - rcpu0
            results[t.label].append(res)
            print(
                f"    {name} rep {rep + 1}/{ctx.reps} {t.label:<10} c={connections}: "
                f"{res.requests} req, {res.rps:,.0f} req/s, p50 {res.ms('p50'):.3f} ms, "
                f"p99 {res.ms('p99'):.3f} ms, errors {res.error_count}",
                flush=True,
            )
    ctx.raw[name] = {
        label: [r.__dict__ | {"rps": r.rps} for r in runs] for label, runs in results.items()
    }
    return results


def _errors(runs: list[WrkResult]) -> int:
    """Failed requests of the runs; a run that completed no request at all counts as one (its
    percentiles are zeros, not a measurement)."""
    return sum(r.error_count + (r.requests == 0) for r in runs)


def _added(value: float) -> str:
    return f"+{value:.2f} ms" if value >= 0 else f"{value:.2f} ms"


def _peer_cell(ctx: Ctx, runs: list[WrkResult], text: str) -> str:
    """The peer's cell: its number, or why there is none."""
    if ctx.peer is None:
        return ctx.peer_status
    if not runs:
        return "—"
    if _errors(runs):
        return f"error: {_errors(runs)} failed requests"
    return text


def _latency_rows(
    ctx: Ctx,
    scen: str,
    what: str,
    res: dict[str, list[WrkResult]],
    targets: Mapping[str, float],
    gw_label: str = "gateway",
    direct_label: str = "direct",
    with_peer: bool = False,
) -> dict[str, tuple[str, str, str, bool | None]]:
    """One row per percentile: direct, gateway, added = difference of medians (and the peer's
    numbers when it ran). Returns, per percentile with a target, the README cells
    (direct, imagegate, peer) and whether the target is met (None: no numbers)."""
    d = res.get(direct_label, [])
    g = res.get(gw_label, [])
    pr = res.get("litellm", [])
    cells: dict[str, tuple[str, str, str, bool | None]] = {}
    for pct in ("p50", "p90", "p99"):
        dv = [r.ms(pct) for r in d]
        gv = [r.ms(pct) for r in g]
        pv = [r.ms(pct) for r in pr]
        limit = targets.get(pct)
        row = Row(scen, f"{what} {pct}", spread(dv, "{:.3f}", " ms"), spread(gv, "{:.3f}", " ms"))
        row.target = f"added ≤ {limit:g} ms" if limit is not None else "—"
        peer_cell = "—"
        if with_peer:
            text = f"{spread(pv, '{:.3f}', ' ms')} ({_added(med(pv) - med(dv))})" if pv else ""
            row.peer = _peer_cell(ctx, pr, text)
            peer_cell = _peer_cell(ctx, pr, f"{med(pv):.2f} ms ({_added(med(pv) - med(dv))})")
        ok: bool | None = None
        if not g:
            row.status = "n/a"
        elif _errors(d) or _errors(g):
            row.status, row.result = "error", f"{_errors(d)} / {_errors(g)} failed requests"
        else:
            added = med(gv) - med(dv)
            row.result = f"+{added:.3f} ms" if added >= 0 else f"{added:.3f} ms"
            ok = added <= limit if limit is not None else None
            row.status = verdict(ok) if ok is not None else "info"
        ctx.report.add(row)
        if limit is not None:
            gcell = f"error: {row.result}" if row.status == "error" else row.status
            if g and ok is not None:
                gcell = f"{med(gv):.2f} ms ({_added(med(gv) - med(dv))})"
            cells[pct] = (f"{med(dv):.2f} ms" if dv else "—", gcell, peer_cell, ok)
    return cells


def _table(
    ctx: Ctx, order: int, metric: str, cells: tuple[str, str, str, bool | None], target: str
) -> None:
    direct, imagegate, peer, ok = cells
    met_cell = ("error" if imagegate.startswith("error") else "n/a") if ok is None else met(ok)
    ctx.report.add_table(TableRow(order, metric, direct, imagegate, peer, target, met_cell))


# --- (a) latency at c=1 --------------------------------------------------------------------------
def scenario_a(ctx: Ctx) -> dict[str, list[WrkResult]]:
    small: dict[str, list[WrkResult]] = {}
    for image, targets in (
        (ctx.small, {"p50": T_ADDED_P50_SMALL_MS, "p99": T_ADDED_P99_SMALL_MS}),
        (ctx.large, {"p50": T_ADDED_P50_LARGE_MS}),
    ):
        res = measure(ctx, f"a-{image.label}", _edit_targets(ctx, image), 1)
        cells = _latency_rows(
            ctx, "a", f"c=1 {image.label} edit latency", res, targets, with_peer=True
        )
        for pct, limit in targets.items():
            order = {("100 KB", "p50"): 20, ("100 KB", "p99"): 21}.get((image.label, pct), 30)
            _table(
                ctx, order, f"c=1, {image.label} edit, {pct} (added)", cells[pct],
                f"added ≤ {limit:g} ms",
            )  # fmt: skip
        if image is ctx.small:
            small = res
    return small


# --- (b) throughput, (c) CPU per request ---------------------------------------------------------
def _throughput(
    ctx: Ctx, image: TestImage, limit: float, order: int, peer_ratio: float | None
) -> dict[str, list[WrkResult]]:
    res = measure(ctx, f"b-{image.label}", _edit_targets(ctx, image), connections=32)
    d, g, pr = res.get("direct", []), res.get("gateway", []), res.get("litellm", [])
    drps, grps, prps = ([r.rps for r in x] for x in (d, g, pr))
    target = f"≥ {limit:,.0f} req/s"
    if peer_ratio is not None:
        target += f" and ≥ {peer_ratio:g}x {ctx.report.peer_title.split()[0]}"
    row = Row(
        "b",
        f"throughput, c=32, {image.label} edits",
        spread(drps, "{:,.0f}", " req/s"),
        spread(grps, "{:,.0f}", " req/s"),
        target=target,
    )
    row.peer = _peer_cell(ctx, pr, spread(prps, "{:,.0f}", " req/s"))
    peer_cell = _peer_cell(ctx, pr, f"{med(prps):,.0f} req/s")
    ok: bool | None = None
    if not g:
        row.status = "n/a"
    elif _errors(d) or _errors(g):
        row.status, row.result = "error", f"{_errors(d)} / {_errors(g)} failed requests"
    else:
        row.result = f"{med(grps) / med(drps):.1%} of direct"
        ok = med(grps) >= limit
        if peer_ratio is not None and prps and not _errors(pr):
            ratio = med(grps) / med(prps)
            row.result += f"; {ratio:.1f}x the peer"
            ok = ok and ratio >= peer_ratio
        row.status = verdict(ok)
    ctx.report.add(row)
    gcell = f"error: {row.result}" if row.status == "error" else row.status
    if ok is not None:
        gcell = f"{med(grps):,.0f} req/s"
    if ok is not None and peer_ratio is not None and prps and not _errors(pr):
        gcell += f" ({med(grps) / med(prps):.1f}x)"
    cells = (f"{med(drps):,.0f} req/s" if drps else "—", gcell, peer_cell, ok)
    _table(ctx, order, f"c=32, {image.label} edits", cells, target)
    _latency_rows(ctx, "b", f"c=32 {image.label} latency", res, {}, with_peer=True)
    return res


def scenario_b(ctx: Ctx) -> dict[str, list[WrkResult]]:
    small = _throughput(ctx, ctx.small, T_RPS_SMALL, 41, T_PEER_RATIO)
    _throughput(ctx, ctx.large, T_RPS_LARGE, 40, None)
    return small


def scenario_c(
    ctx: Ctx, b: dict[str, list[WrkResult]], a_small: dict[str, list[WrkResult]]
) -> None:
    if not b.get("gateway") and not a_small.get("gateway"):
        ctx.report.add(Row("c", "gateway CPU per 100 KB edit", status="n/a"))
        return

    def per_edit(runs: list[WrkResult]) -> list[float]:
        return [r.extra["gw_cpu_s"] / r.requests * 1000 for r in runs if r.requests]

    for res, what, limit in ((b, "c=32", T_CPU_MS), (a_small, "c=1", None)):
        runs = res.get("gateway", [])
        if not runs:
            continue
        per = per_edit(runs)
        rper = [r.extra["redis_cpu_s"] / r.requests * 1000 for r in runs if r.requests]
        row = Row("c", f"gateway CPU per 100 KB edit, {what}", gateway=spread(per, "{:.3f}", " ms"))
        row.result = f"redis-server: {spread(rper, '{:.3f}', ' ms')}"
        peer_runs = res.get("litellm", [])
        row.peer = _peer_cell(ctx, peer_runs, spread(per_edit(peer_runs), "{:.3f}", " ms"))
        if limit is not None:
            ok = med(per) <= limit and not _errors(runs)
            row.target, row.status = f"≤ {limit:g} ms", verdict(ok)
            peer_cell = _peer_cell(ctx, peer_runs, f"{med(per_edit(peer_runs)):.3f} ms")
            cells = ("—", f"{med(per):.3f} ms", peer_cell, ok)
            _table(ctx, 50, "gateway CPU per 100 KB edit (c=32; process tree utime+stime)", cells,
                   row.target)  # fmt: skip
        ctx.report.add(row)


# --- (e) upload pass-through ---------------------------------------------------------------------
def scenario_e(ctx: Ctx) -> None:
    res = measure(
        ctx, "e", [_direct_edit(ctx, ctx.large), _gateway_edit(ctx, ctx.large)], connections=4
    )
    d, g = res.get("direct", []), res.get("gateway", [])
    row = Row(
        "e",
        "8 MB upload pass-through, c=4",
        spread([r.upload_mb_s for r in d], "{:,.0f}", " MB/s"),
        spread([r.upload_mb_s for r in g], "{:,.0f}", " MB/s"),
        target="gateway ≥ 300 MB/s",
    )
    if not g:
        row.status = "n/a"
    elif _errors(d) or _errors(g):
        row.status, row.result = "error", f"{_errors(d)} / {_errors(g)} failed requests"
    else:
        gm, dm = med([r.upload_mb_s for r in g]), med([r.upload_mb_s for r in d])
        row.result, row.status = f"{gm / dm:.1%} of direct", verdict(gm >= 300)
    ctx.report.add(row)


# --- (f) JSON body with an image URL: the gateway's fetch path -----------------------------------
def scenario_f(ctx: Ctx) -> None:
    url = ctx.mock.file_url(ctx.small.path)
    targets = [_direct_edit(ctx, ctx.small)]
    if ctx.gw is not None:
        for label, extra in (("json-b64", {"response_format": "b64_json"}), ("json-url", {})):
            path = ctx.run_dir / f"body-{label}.json"
            payload = {"model": MODEL, "prompt": PROMPT, "image": url} | extra
            path.write_text(json.dumps(payload))
            gwmod.verify_edit(ctx.gw, path.read_bytes(), "application/json", f"JSON-URL ({label})")
            body = Body("file", path, content_type="application/json")
            url_ = f"{ctx.gw.base}/v1/images/edits"
            targets.append(Target(label, url_, body, "gateway", ctx.gw.token))
    res = measure(ctx, "f", targets, connections=1)
    for label, what in (
        ("json-b64", "c=1 JSON image-URL edit, b64_json answer"),
        ("json-url", "c=1 JSON image-URL edit, url answer (stored file)"),
    ):
        _latency_rows(ctx, "f", what, res, {}, gw_label=label)


# --- (g) Gemini-shaped upstream ------------------------------------------------------------------
def scenario_g(ctx: Ctx) -> None:
    path = ctx.run_dir / "body-gemini-direct.json"
    path.write_bytes(gemini_body(ctx.small.path.read_bytes()))
    direct = Target(
        "direct",
        f"{ctx.mock.base}/v1beta/models/gemini-2.5-flash-image:generateContent",
        Body("file", path, content_type="application/json"),
    )
    targets = [direct]
    if ctx.gw is not None:
        gwmod.verify_multipart(ctx.gw, ctx.small.path.read_bytes(), GEMINI_MODEL)
        targets.append(_gateway_edit(ctx, ctx.small, GEMINI_MODEL))
    res = measure(ctx, "g", targets, connections=1)
    _latency_rows(ctx, "g", "c=1 100 KB nano-banana edit", res, {})


# --- (s) store round trips -----------------------------------------------------------------------
def _per_request(
    after: Counter[str], before: Counter[str], idle: dict[str, float], window: float, n: int
) -> dict[str, float]:
    """Counts in the window, less the idle rate over the same time, per request. What is left
    of a background-only command (pollers run at a fixed rate, so the subtraction is off by
    a poll or two) is dropped when it is under 0.1 per request."""
    per = {k: (v - idle.get(k, 0.0) * window) / n for k, v in delta(after, before).items()}
    return {
        k: v
        for k, v in per.items()
        if v > 0.005 and k not in ("info", "monitor") and not (k in idle and v < 0.1)
    }


def _breakdown(per: dict[str, float]) -> str:
    return ", ".join(f"{k} {v:.2f}" for k, v in sorted(per.items(), key=lambda kv: -kv[1]))


def scenario_s(ctx: Ctx) -> None:
    if ctx.gw is None or ctx.redis is None:
        ctx.report.add(Row("s", "store round trips per request", status="n/a"))
        return
    n = 50 if ctx.quick else 200
    body, ctype = multipart_body(ctx.small.path.read_bytes(), MODEL)
    gw, port = ctx.gw, ctx.redis.port
    stats0 = commandstats(port)
    mon = Monitor(port)
    try:
        time.sleep(0.5)
        trips0, cmds0 = mon.snapshot()
        t0 = time.monotonic()
        time.sleep(2.0)
        trips1, cmds1 = mon.snapshot()
        idle_s = time.monotonic() - t0
        idle_trips = {k: v / idle_s for k, v in delta(trips1, trips0).items()}
        idle_cmds = {k: v / idle_s for k, v in delta(cmds1, cmds0).items()}
        start = time.monotonic()
        failures = 0
        for _ in range(n):
            status, _data = gwmod.post(gw.port, "/v1/images/edits", body, ctype, gw.token)
            failures += status != 200
        time.sleep(0.3)  # the after-response work (settle) may finish just after the answer
        window = time.monotonic() - start
        trips2, cmds2 = mon.snapshot()
    finally:
        mon.close()
    stats1 = commandstats(port)
    trips = _per_request(trips2, trips1, idle_trips, window, n)
    cmds = _per_request(cmds2, cmds1, idle_cmds, window, n)
    in_scripts = sum(delta(stats1, stats0).values()) / n - sum(cmds.values())
    total = sum(trips.values())
    row = Row(
        "s",
        f"store round trips per request ({n} sequential 100 KB edits, Redis MONITOR)",
        gateway=f"{total:.2f} ({_breakdown(trips) or 'none'})",
        result=(
            f"{sum(cmds.values()):.2f} client commands/request; "
            f"~{max(in_scripts, 0):.1f} more run inside Lua scripts"
        ),
        target="1 before + 1 after = 2",
    )
    if failures:
        row.status, row.result = "error", f"{failures}/{n} requests failed"
    else:
        row.status = verdict(total <= 2.05)
    ctx.report.add(row)
    idle = ", ".join(f"{k} {v:.1f}/s" for k, v in idle_cmds.items() if v > 0.05)
    if idle:
        ctx.report.notes.append(f"(s) the idle gateway's own Redis commands, subtracted: {idle}")
    ctx.raw["s"] = {"trips": trips, "commands": cmds, "idle_commands_per_s": idle_cmds}


# --- (d) memory and spool disk per in-flight request against the slow upstream -----------------
async def _send_all(
    port: int,
    head: bytes,
    body: bytes,
    n: int,
    limit_s: float,
    answered: list[tuple[int, bytes]],
    uploaded: list[int],
    burst: int,
) -> None:
    """Send `n` requests, each on its own connection, all from the one `body` buffer
    (`sock_sendall` sends from a memoryview of it: 1,000 x 1 MB uploads cost the harness 1 MB,
    not 1 GB), with at most `burst` uploads in progress at a time (0: all at once); a request
    whose upload is done waits for its answer, so all `n` end up in flight together. Append
    each (status, first bytes of the answer's body) to `answered` as it arrives (0: no HTTP
    answer); `uploaded[0]` counts the finished uploads."""
    loop = asyncio.get_running_loop()
    view = memoryview(body)
    gate = asyncio.Semaphore(burst if burst > 0 else n)

    async def one() -> tuple[int, bytes]:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setblocking(False)
        try:
            async with gate:
                await loop.sock_connect(sock, ("127.0.0.1", port))
                await loop.sock_sendall(sock, head)
                await loop.sock_sendall(sock, view)
            uploaded[0] += 1
            chunks = []
            while chunk := await loop.sock_recv(sock, 1 << 16):  # Connection: close -> EOF
                chunks.append(chunk)
        finally:
            sock.close()
        data = b"".join(chunks)
        if not data.startswith(b"HTTP/"):
            return 0, data[:200]
        top, _, rest = data.partition(b"\r\n\r\n")
        return int(top.split(b" ", 2)[1]), rest[:200]

    async def guarded() -> None:
        try:
            answered.append(await asyncio.wait_for(one(), limit_s))
        except (OSError, TimeoutError, ValueError) as exc:
            answered.append((0, repr(exc).encode()))

    await asyncio.gather(*(guarded() for _ in range(n)))


def _rss_mib(pids: list[int]) -> float:
    return rss_bytes(pids) / MIB


@dataclass
class SpoolUse:
    files: int = 0  # open spool descriptors (anonymous O_TMPFILE files have no name: no `du`)
    size: int = 0  # their st_size, summed
    allocated: int = 0  # their st_blocks x 512, summed (what they take on disk)


def spool_use(pids: list[int], spool_dir: Path) -> SpoolUse:
    """The spool files the gateway's processes hold open: /proc/<pid>/fd links that point into
    `spool_dir` (an O_TMPFILE file reads `<dir>/#<inode> (deleted)`), each fstat-ed through
    its /proc link. A file open twice in one process is counted once."""
    prefix = str(spool_dir.resolve()) + "/"
    use, seen = SpoolUse(), set()
    for pid in pids:
        fd_dir = f"/proc/{pid}/fd"
        try:
            names = os.listdir(fd_dir)
        except OSError:
            continue
        for name in names:
            try:
                if not os.readlink(f"{fd_dir}/{name}").startswith(prefix):
                    continue
                st = os.stat(f"{fd_dir}/{name}")
            except OSError:
                continue  # closed meanwhile
            if (st.st_dev, st.st_ino) in seen:
                continue
            seen.add((st.st_dev, st.st_ino))
            use.files += 1
            use.size += st.st_size
            use.allocated += st.st_blocks * 512
    return use


def free_bytes(path: Path) -> int:
    """Free space of the filesystem holding `path` (the spool dir, or its nearest parent)."""
    while not path.exists():
        path = path.parent
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize


def _inflight(ctx: Ctx, image: TestImage, n: int, order: int) -> None:
    gw, slow = ctx.gw, ctx.slow
    assert gw is not None and slow is not None
    body, ctype = multipart_body(image.path.read_bytes(), SLOW_MODEL)
    head = (
        f"POST /v1/images/edits HTTP/1.1\r\nHost: 127.0.0.1:{gw.port}\r\n"
        f"Authorization: Bearer {gw.token}\r\nContent-Type: {ctype}\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    ).encode()
    gwmod.restart_gateway(ctx.sup, gw)  # a fresh heap: earlier scenarios' peaks don't hide growth
    spool_dir = gw.spool_dir
    slow.release()  # answer at once while warming up
    for _ in range(20):
        status, data = gwmod.post(gw.port, "/v1/images/edits", body, ctype, gw.token)
        if status != 200:
            raise HarnessError(f"slow-upstream edit answered {status}: {data[:300]!r}")
    time.sleep(1.0)
    before = med([_rss_mib(gw.tree()) for _ in range(3)])
    free_before = free_bytes(spool_dir)
    spool_before = spool_use(gw.tree(), spool_dir)
    slow.hold()
    answered: list[tuple[int, bytes]] = []
    uploaded = [0]
    sender = threading.Thread(
        target=lambda: asyncio.run(
            _send_all(gw.port, head, body, n, 240.0, answered, uploaded, ctx.inflight_burst)
        ),
        daemon=True,
    )
    t0 = time.monotonic()
    sender.start()
    held, last_change, last = 0, time.monotonic(), (-1, -1, -1)
    while time.monotonic() - t0 < 150:  # until all are held upstream, or no progress for 10 s
        stats = slow.stats()
        held = int(str(stats["held"]))
        progress = (held, int(str(stats["body_bytes"])), uploaded[0])
        if progress != last:
            last, last_change = progress, time.monotonic()
        if held >= n or time.monotonic() - last_change > 10:
            break
        time.sleep(0.2)
    inflight = n - len(answered)  # still waiting for their answer: in flight in the gateway
    samples, spools, frees = [], [], []
    for _ in range(5):
        samples.append(_rss_mib(gw.tree()))
        spools.append(spool_use(gw.tree(), spool_dir))
        frees.append(free_bytes(spool_dir))
        time.sleep(0.2)
    during = max(samples)
    spool = max(spools, key=lambda u: u.allocated)
    disk_delta = free_before - min(frees)
    slow.release()
    sender.join(timeout=300)
    time.sleep(2.0)
    after = _rss_mib(gw.tree())
    spool_after = spool_use(gw.tree(), spool_dir)
    failed = Counter(status for status, _ in answered if status != 200)
    per = (during - before) * MIB / max(inflight, 1)
    limit = T_INFLIGHT_KIB * KIB
    what = f"{n:,} x {image.label} ({len(body):,} B bodies)"
    row = Row(
        "d",
        f"gateway RSS per in-flight request, {what} in flight at once",
        direct=f"{held} held upstream, {inflight} in flight",
        gateway=f"{before:.0f} → {during:.0f} → {after:.0f} MiB (before → during → after)",
        result=f"{per / KIB:,.1f} KiB per in-flight request ({per / len(body):.3f}x the upload)",
        target=f"≤ {T_INFLIGHT_KIB:g} KiB with all {n:,} in flight",
    )
    complete = not failed and inflight == n and len(answered) == n
    ok = per <= limit and complete
    row.status = verdict(ok)
    if failed or len(answered) < n:
        sample = next((body for status, body in answered if status != 200), b"")
        counts = ", ".join(f"{c} x HTTP {st}" for st, c in failed.items())
        row.result += f"; not 200: {counts or 'none'} ({sample[:120]!r})"
        if len(answered) < n:
            row.result += f"; {n - len(answered)} never answered"
    ctx.report.add(row)
    disk = Row(
        "d",
        f"spool disk while {what} are in flight",
        gateway=(
            f"{spool.files:,} open spool files, {spool.allocated / MIB:,.1f} MiB allocated "
            f"({spool.size / MIB:,.1f} MiB st_size); filesystem free space "
            f"-{disk_delta / MIB:,.1f} MiB"
        ),
        result=(
            f"{spool.allocated / max(inflight, 1) / KIB:,.0f} KiB per in-flight request "
            f"({spool.allocated / max(inflight, 1) / len(body):.2f}x the upload); "
            f"after: {spool_after.files} files"
        ),
        target="info (about 1x the upload: the body lives on disk)",
    )
    ctx.report.add(disk)
    rss_cell = f"{per / KIB:,.1f} KiB" if complete else f"error: {row.result}"
    _table(
        ctx, order, f"RSS per in-flight edit, {what.split(' (')[0]}, slow upstream",
        (f"{held:,} held upstream", rss_cell, "—", ok if complete else None),
        f"≤ {T_INFLIGHT_KIB:g} KiB",
    )  # fmt: skip
    _table(
        ctx, order + 1, f"spool disk in flight, {what.split(' (')[0]} (fds / statvfs)",
        ("—", f"{spool.allocated / MIB:,.0f} MiB ({spool.files:,} files) / "
              f"{disk_delta / MIB:,.0f} MiB", "—", None),
        "info",
    )  # fmt: skip
    ctx.report.table[-1].met = "info"
    ctx.raw[f"d-{image.label}"] = {
        "n": n, "held": held, "inflight": inflight, "before_mib": before, "during_mib": during,
        "after_mib": after, "per_request_bytes": per, "failed": dict(failed),
        "body_bytes": len(body), "spool": spool.__dict__, "spool_before": spool_before.__dict__,
        "spool_after": spool_after.__dict__, "statvfs_used_bytes": disk_delta,
    }  # fmt: skip


def scenario_d(ctx: Ctx) -> None:
    if ctx.gw is None or ctx.slow is None:
        ctx.report.add(Row("d", "memory per in-flight request", status="n/a"))
        return
    assert ctx.medium is not None
    _inflight(ctx, ctx.medium, ctx.inflight_medium, 10)
    _inflight(ctx, ctx.large, ctx.inflight_large, 12)
