"""obstore vs aiobotocore: put and get of 8 MB objects against one S3 endpoint, A/B interleaved.

    python -m bench.s3_clients [--rounds 12] [--size-mb 8] [--concurrency 8]

Starts moto's standalone server (a real HTTP S3 endpoint) unless IMAGEGATE_TEST_S3_URL is set.
Per operation it reports wall time (p50/p90) and the client process's CPU time, which is what
the gateway pays per result or queued input; the server's own cost is the same for both.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import time
from collections.abc import Awaitable
from datetime import timedelta
from typing import Any

import obstore
from aiobotocore.session import get_session
from obstore.store import S3Store

from tests.support.s3_server import S3Endpoint, S3Server


async def _timed(work: Awaitable[Any]) -> tuple[float, float]:
    c0, t0 = time.process_time(), time.perf_counter()
    await work
    return time.perf_counter() - t0, time.process_time() - c0


async def run(
    ep: S3Endpoint, rounds: int, size: int, conc: int
) -> dict[str, dict[str, list[float]]]:
    data = os.urandom(size)
    ob = S3Store(
        ep.bucket, endpoint=ep.url, region=ep.region, access_key_id=ep.key,
        secret_access_key=ep.secret, virtual_hosted_style_request=False,
        client_options={"allow_http": True, "timeout": timedelta(seconds=120)},
    )  # fmt: skip
    session = get_session()
    results: dict[str, dict[str, list[float]]] = {}

    def rec(name: str, wall: float, cpu: float) -> None:
        r = results.setdefault(name, {"wall": [], "cpu": []})
        r["wall"].append(wall)
        r["cpu"].append(cpu)

    async with session.create_client(
        "s3", endpoint_url=ep.url, region_name=ep.region, aws_access_key_id=ep.key,
        aws_secret_access_key=ep.secret,
    ) as bc:  # fmt: skip

        async def ob_put(k: str) -> None:
            await obstore.put_async(ob, k, data)

        async def ob_get(k: str) -> None:
            got = await (await obstore.get_async(ob, k)).bytes_async()
            assert len(got) == size

        async def bc_put(k: str) -> None:
            await bc.put_object(Bucket=ep.bucket, Key=k, Body=data)

        async def bc_get(k: str) -> None:
            resp = await bc.get_object(Bucket=ep.bucket, Key=k)
            async with resp["Body"] as body:
                got = await body.read()
            assert len(got) == size

        clients = {"obstore": (ob_put, ob_get), "aiobotocore": (bc_put, bc_get)}
        # warm-up (connections, credential resolution)
        for put, get in clients.values():
            await put("bench/warm")
            await get("bench/warm")
        for i in range(rounds):
            order = list(clients.items()) if i % 2 == 0 else list(reversed(clients.items()))
            for name, (put, get) in order:
                key = f"bench/{name}/{i}"
                rec(f"{name} put", *await _timed(put(key)))
                rec(f"{name} get", *await _timed(get(key)))
                if conc > 1 and i % 4 == 0:
                    keys = [f"bench/{name}/{i}/c{j}" for j in range(conc)]
                    many_put = asyncio.gather(*(put(k) for k in keys))
                    rec(f"{name} put x{conc}", *await _timed(many_put))
                    many_get = asyncio.gather(*(get(k) for k in keys))
                    rec(f"{name} get x{conc}", *await _timed(many_get))
    return results


def report(results: dict[str, dict[str, list[float]]], args: argparse.Namespace) -> str:
    lines = [
        f"| operation ({args.size_mb} MB) | n | wall p50 ms | wall p90 ms | client CPU p50 ms |",
        "|---|---|---|---|---|",
    ]
    for name in sorted(results, key=lambda n: (n.split(" ", 1)[1], n)):
        r = results[name]
        w = sorted(r["wall"])
        p90 = w[min(len(w) - 1, int(len(w) * 0.9))]
        lines.append(
            f"| {name} | {len(w)} | {statistics.median(w) * 1e3:.1f} | {p90 * 1e3:.1f} "
            f"| {statistics.median(r['cpu']) * 1e3:.1f} |"
        )
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=12)
    ap.add_argument("--size-mb", type=int, default=8)
    ap.add_argument("--concurrency", type=int, default=8)
    args = ap.parse_args()
    server = S3Server()
    ep = server.start()
    try:
        results = asyncio.run(run(ep, args.rounds, args.size_mb * 1024 * 1024, args.concurrency))
    finally:
        server.stop()
    print(f"endpoint: {'moto_server' if server.proc else ep.url}")
    print(report(results, args))


if __name__ == "__main__":
    main()
