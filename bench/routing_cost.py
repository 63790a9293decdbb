"""CPU per request of channel routing on the healthy path (target: at most 20 µs).

    python -m bench.routing_cost [--n 200000]

Measures what the caller adds around one successful attempt, with three channels (two at
priority 0 weighted 3:1 with key pools, one at priority 1): budget, choice by priority and
weight, the next key, the slot and circuit bookkeeping, the kind's URL and auth headers, and
the end-of-attempt accounting (stats window, metrics counter and state gauge). No network: the
transport and the adapter's own work are measured elsewhere (bench/transport_ab.py, make bench).
"""

from __future__ import annotations

import argparse
import time

from app.core.config import RoutingConfig, UpstreamConfig
from app.core.metrics import Metrics
from app.upstream.caller import UpstreamCaller
from app.upstream.channels import Channel, ChannelSet
from app.upstream.kinds import url_for


def build() -> tuple[UpstreamCaller, ChannelSet]:
    routing = RoutingConfig()
    ups = {
        "a": UpstreamConfig(kind="openai", base_url="https://api.openai.com/v1",
                            api_keys=["sk-a1-xxxxxxxx", "sk-a2-xxxxxxxx"], weight=3),
        "b": UpstreamConfig(kind="openai", base_url="https://api.openai.com/v1",
                            api_key="sk-b-xxxxxxxxx", weight=1),
        "az": UpstreamConfig(kind="azure-openai", base_url="https://r.openai.azure.com",
                             api_key="az-xxxxxxxxxxx", api_version="2025-04-01-preview",
                             priority=1),
    }  # fmt: skip
    channels = ChannelSet(
        {n: Channel(n, c, routing) for n, c in ups.items()}, {"gpt-image-1": ["a", "b", "az"]}
    )
    return UpstreamCaller(channels, routing, Metrics()), channels


async def run(n: int) -> float:
    caller, _ = build()

    async def one() -> None:
        budget = caller._budget()
        channel, key = await caller._next("gpt-image-1", budget)
        url_for(channel.config, "images/edits", "gpt-image-1", "gpt-image-1", False)
        headers = {"content-type": "multipart/form-data; boundary=x"}
        headers.update(await channel.auth_headers(key))
        caller._done(channel, "ok", failed=False)

    for _ in range(1000):
        await one()
    t0 = time.process_time()
    for _ in range(n):
        await one()
    return (time.process_time() - t0) / n


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=200_000)
    args = parser.parse_args()
    import uvloop

    per = uvloop.run(run(args.n))
    print(f"routing on the healthy path: {per * 1e6:.2f} µs CPU per request (n={args.n})")


if __name__ == "__main__":
    main()
