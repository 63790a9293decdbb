"""The scenarios (a)-(g) and (s): what is sent, to whom, and which rows come out.

Direct and gateway runs of one scenario alternate (D G D G D G) so that slow drift of the
shared machine (other processes, thermal, page cache) hits both sides alike; each is
preceded by a short unrecorded warm-up. Reported numbers are medians over the repetitions
with min-max beside them; "added" is median(gateway) - median(direct).
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from bench import gateway as gwmod
from bench.gateway import GEMINI_MODEL, MODEL, SLOW_MODEL, Gateway, Redis
from bench.images import PROMPT, TestImage, gemini_body, multipart_body
from bench.loadgen import Body, WrkResult, run_wrk
from bench.mock import NginxMock
from bench.procs import HarnessError, Supervisor, cpu_seconds, rss_bytes
from bench.redisstats import Monitor, commandstats, delta
from bench.report import Report, Row, med, spread, verdict
from bench.slow import SlowControl

KIB = 1024
MIB = 1024 * 1024


@dataclass
class Ctx:
    """Everything a scenario needs; `gw` is None in direct-only mode."""

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
    gw: Gateway | None = None
    redis: Redis | None = None
    slow: SlowControl | None = None
    inflight_small: int = 1000
    inflight_large: int = 50
    raw: dict[str, object] = field(default_factory=dict)


@dataclass(frozen=True)
class Target:
    label: str  # "direct" or a gateway label
    url: str
    body: Body
    via_gateway: bool


def _direct_edit(ctx: Ctx, image: TestImage) -> Target:
    return Target(
        "direct", f"{ctx.mock.base}/v1/images/edits", Body("multipart", image.path), False
    )


def _gateway_edit(ctx: Ctx, image: TestImage, model: str = MODEL, label: str = "gateway") -> Target:
    base = ctx.gw.base if ctx.gw else "http://127.0.0.1:0"  # dropped by measure() then
    return Target(label, f"{base}/v1/images/edits", Body("multipart", image.path, model), True)


def measure(
    ctx: Ctx, name: str, targets: list[Target], connections: int
) -> dict[str, list[WrkResult]]:
    """Run every target `reps` times, alternating; gateway runs also record the CPU seconds
    used meanwhile by the gateway's process tree and by redis-server."""
    if ctx.gw is None:
        targets = [t for t in targets if not t.via_gateway]
    results: dict[str, list[WrkResult]] = {t.label: [] for t in targets}
    token = ctx.gw.token if ctx.gw else None
    warm = 1.0
    for t in targets:  # warm-up: connection pools, lazy imports, allocator arenas
        run_wrk(ctx.wrk, t.url, t.body, connections=connections, duration_s=warm, token=token)
    for rep in range(ctx.reps):
        for t in targets:
            gw_pids = ctx.gw.tree() if (ctx.gw and t.via_gateway) else []
            redis_pids = [ctx.redis.managed.pid] if (ctx.redis and t.via_gateway) else []
            cpu0, rcpu0 = cpu_seconds(gw_pids), cpu_seconds(redis_pids)
            res = run_wrk(
                ctx.wrk,
                t.url,
                t.body,
                connections=connections,
                duration_s=ctx.duration,
                token=token,
            )
            if gw_pids:
                res.extra["gw_cpu_s"] = cpu_seconds(gw_pids) - cpu0
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
    return sum(r.error_count for r in runs)


def _latency_rows(
    ctx: Ctx,
    scen: str,
    what: str,
    res: dict[str, list[WrkResult]],
    targets: Mapping[str, float],
    gw_label: str = "gateway",
    direct_label: str = "direct",
) -> None:
    """One row per percentile: direct, gateway, added = difference of medians."""
    d = res.get(direct_label, [])
    g = res.get(gw_label, [])
    for pct in ("p50", "p90", "p99"):
        dv = [r.ms(pct) for r in d]
        gv = [r.ms(pct) for r in g]
        limit = targets.get(pct)
        row = Row(scen, f"{what} {pct}", spread(dv, "{:.3f}", " ms"), spread(gv, "{:.3f}", " ms"))
        row.target = f"added ≤ {limit:g} ms" if limit is not None else "—"
        if not g:
            row.status = "n/a"
        elif _errors(d) or _errors(g):
            row.status, row.result = "error", f"{_errors(d)} / {_errors(g)} failed requests"
        else:
            added = med(gv) - med(dv)
            row.result = f"+{added:.3f} ms" if added >= 0 else f"{added:.3f} ms"
            row.status = verdict(added <= limit) if limit is not None else "info"
        ctx.report.add(row)


# --- (a) latency at c=1 --------------------------------------------------------------------------
def scenario_a(ctx: Ctx) -> dict[str, list[WrkResult]]:
    small: dict[str, list[WrkResult]] = {}
    for image, targets in (
        (ctx.small, {"p50": 1.0, "p99": 3.0}),
        (ctx.large, {"p50": 15.0}),
    ):
        res = measure(
            ctx, f"a-{image.label}", [_direct_edit(ctx, image), _gateway_edit(ctx, image)], 1
        )
        _latency_rows(ctx, "a", f"c=1 {image.label} edit latency", res, targets)
        if image is ctx.small:
            small = res
    return small


# --- (b) throughput, (c) CPU per request ---------------------------------------------------------
def scenario_b(ctx: Ctx) -> dict[str, list[WrkResult]]:
    res = measure(
        ctx, "b", [_direct_edit(ctx, ctx.small), _gateway_edit(ctx, ctx.small)], connections=32
    )
    d, g = res.get("direct", []), res.get("gateway", [])
    row = Row(
        "b",
        "throughput, c=32, 100 KB edits",
        spread([r.rps for r in d], "{:,.0f}", " req/s"),
        spread([r.rps for r in g], "{:,.0f}", " req/s"),
        target="gateway ≥ 1,000 req/s",
    )
    if not g:
        row.status = "n/a"
    elif _errors(d) or _errors(g):
        row.status, row.result = "error", f"{_errors(d)} / {_errors(g)} failed requests"
    else:
        row.result = f"{med([r.rps for r in g]) / med([r.rps for r in d]):.1%} of direct"
        row.status = verdict(med([r.rps for r in g]) >= 1000)
    ctx.report.add(row)
    _latency_rows(ctx, "b", "c=32 100 KB latency", res, {})
    return res


def scenario_c(
    ctx: Ctx, b: dict[str, list[WrkResult]], a_small: dict[str, list[WrkResult]]
) -> None:
    if not b.get("gateway") and not a_small.get("gateway"):
        ctx.report.add(Row("c", "gateway CPU per 100 KB edit", status="n/a"))
        return
    for runs, what, limit in (
        (b.get("gateway", []), "c=32", 1.0),
        (a_small.get("gateway", []), "c=1", None),
    ):
        if not runs:
            continue
        per = [r.extra["gw_cpu_s"] / r.requests * 1000 for r in runs if r.requests]
        rper = [r.extra["redis_cpu_s"] / r.requests * 1000 for r in runs if r.requests]
        row = Row("c", f"gateway CPU per 100 KB edit, {what}", gateway=spread(per, "{:.3f}", " ms"))
        row.result = f"redis-server: {spread(rper, '{:.3f}', ' ms')}"
        if limit is not None:
            row.target, row.status = f"≤ {limit:g} ms", verdict(med(per) <= limit)
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
            targets.append(Target(label, f"{ctx.gw.base}/v1/images/edits", body, True))
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
        False,
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


# --- (d) memory per in-flight request against the slow upstream ----------------------------------
async def _send_all(
    port: int, payload: bytes, n: int, limit_s: float, answered: list[tuple[int, bytes]]
) -> None:
    """Send `n` copies of `payload` at once, each on its own connection; append each
    (status, first bytes of the body) to `answered` as it arrives (0: no HTTP answer)."""

    async def one() -> tuple[int, bytes]:
        reader, writer = await asyncio.open_connection("127.0.0.1", port, limit=1 << 20)
        try:
            writer.write(payload)
            await writer.drain()
            data = await reader.read()  # Connection: close -> the whole response, then EOF
        finally:
            writer.close()
        if not data.startswith(b"HTTP/"):
            return 0, data[:200]
        head, _, body = data.partition(b"\r\n\r\n")
        return int(head.split(b" ", 2)[1]), body[:200]

    async def guarded() -> None:
        try:
            answered.append(await asyncio.wait_for(one(), limit_s))
        except (OSError, TimeoutError, ValueError) as exc:
            answered.append((0, repr(exc).encode()))

    await asyncio.gather(*(guarded() for _ in range(n)))


def _rss_mib(pids: list[int]) -> float:
    return rss_bytes(pids) / MIB


def _inflight(ctx: Ctx, image: TestImage, n: int, limit_bytes: Callable[[int], float]) -> None:
    gw, slow = ctx.gw, ctx.slow
    assert gw is not None and slow is not None
    body, ctype = multipart_body(image.path.read_bytes(), SLOW_MODEL)
    head = (
        f"POST /v1/images/edits HTTP/1.1\r\nHost: 127.0.0.1:{gw.port}\r\n"
        f"Authorization: Bearer {gw.token}\r\nContent-Type: {ctype}\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    )
    payload = head.encode() + body
    gwmod.restart_gateway(ctx.sup, gw)  # a fresh heap: earlier scenarios' peaks don't hide growth
    slow.release()  # answer at once while warming up
    for _ in range(20):
        status, data = gwmod.post(gw.port, "/v1/images/edits", body, ctype, gw.token)
        if status != 200:
            raise HarnessError(f"slow-upstream edit answered {status}: {data[:300]!r}")
    time.sleep(1.0)
    before = med([_rss_mib(gw.tree()) for _ in range(3)])
    slow.hold()
    answered: list[tuple[int, bytes]] = []
    sender = threading.Thread(
        target=lambda: asyncio.run(_send_all(gw.port, payload, n, 180.0, answered)),
        daemon=True,
    )
    t0 = time.monotonic()
    sender.start()
    held, last_change, last = 0, time.monotonic(), -1
    while time.monotonic() - t0 < 120:  # until all are held upstream, or no progress for 5 s
        held = slow.held()
        if held != last:
            last, last_change = held, time.monotonic()
        if held >= n or time.monotonic() - last_change > 5:
            break
        time.sleep(0.2)
    inflight = n - len(answered)  # still waiting for their answer: in flight in the gateway
    samples = []
    for _ in range(5):
        samples.append(_rss_mib(gw.tree()))
        time.sleep(0.2)
    during = max(samples)
    slow.release()
    sender.join(timeout=200)
    time.sleep(2.0)
    after = _rss_mib(gw.tree())
    failed = Counter(status for status, _ in answered if status != 200)
    per = (during - before) * MIB / max(inflight, 1)
    limit = limit_bytes(len(body))
    row = Row(
        "d",
        f"gateway RSS per in-flight {image.label} request ({n} sent at once)",
        direct=f"{held} held upstream, {inflight} in flight",
        gateway=f"{before:.0f} → {during:.0f} → {after:.0f} MiB (before → during → after)",
        result=f"{per / KIB:,.1f} KiB per in-flight request ({per / len(body):.2f}x the upload)",
        target=f"≤ {limit / KIB:,.0f} KiB with all {n} in flight",
    )
    row.status = verdict(per <= limit and not failed and inflight == n)
    if failed or len(answered) < n:
        sample = next((body for status, body in answered if status != 200), b"")
        counts = ", ".join(f"{c} x HTTP {st}" for st, c in failed.items())
        row.result += f"; not 200: {counts or 'none'} ({sample[:120]!r})"
        if len(answered) < n:
            row.result += f"; {n - len(answered)} never answered"
    ctx.report.add(row)
    ctx.raw[f"d-{image.label}"] = {
        "n": n, "held": held, "inflight": inflight, "before_mib": before, "during_mib": during,
        "after_mib": after, "per_request_bytes": per, "failed": dict(failed),
        "body_bytes": len(body),
    }  # fmt: skip


def scenario_d(ctx: Ctx) -> None:
    if ctx.gw is None or ctx.slow is None:
        ctx.report.add(Row("d", "memory per in-flight request", status="n/a"))
        return
    _inflight(ctx, ctx.small, ctx.inflight_small, lambda _size: 100 * KIB)
    _inflight(ctx, ctx.large, ctx.inflight_large, lambda size: 1.2 * size)
