"""The load generator: wrk (C, event-driven) driven by `edit.lua`.

A Python load generator would measure itself: at c=1 its own per-request overhead is of the
same order as the gateway's, and at c=32 it would need a core of its own. wrk costs a few
microseconds per request, runs one thread (the machine has 2 cores, and the servers under
test need them), and reports percentiles from its full latency histogram.
"""

from __future__ import annotations

import json
import os
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from bench.images import BOUNDARY, PROMPT

LUA_SCRIPT = Path(__file__).with_name("edit.lua")


@dataclass(frozen=True)
class Body:
    """What wrk sends: a multipart edit built by the Lua script, or a prepared body file."""

    kind: str  # "multipart" | "file"
    path: Path  # the image (multipart) or the body file
    model: str = "gpt-image-1.5"
    content_type: str = "application/json"

    def env(self) -> dict[str, str]:
        if self.kind == "multipart":
            return {
                "BENCH_BODY_KIND": "multipart",
                "BENCH_IMAGE": str(self.path),
                "BENCH_MODEL": self.model,
                "BENCH_PROMPT": PROMPT,
                "BENCH_BOUNDARY": BOUNDARY,
            }
        return {
            "BENCH_BODY_KIND": "file",
            "BENCH_BODY_FILE": str(self.path),
            "BENCH_CONTENT_TYPE": self.content_type,
        }


@dataclass
class WrkResult:
    requests: int
    duration_s: float
    body_bytes: int
    errors: dict[str, int]
    latency_us: dict[str, float]
    extra: dict[str, float] = field(default_factory=dict)  # CPU/RSS readings added by callers

    @property
    def rps(self) -> float:
        return self.requests / self.duration_s if self.duration_s > 0 else 0.0

    @property
    def upload_mb_s(self) -> float:
        """Request-body megabytes (10^6 bytes) uploaded per second."""
        return self.requests * self.body_bytes / self.duration_s / 1e6 if self.duration_s else 0.0

    @property
    def error_count(self) -> int:
        return sum(self.errors.values())

    def ms(self, pct: str) -> float:
        return self.latency_us[pct] / 1000.0


def run_wrk(
    wrk: str,
    url: str,
    body: Body,
    *,
    connections: int,
    duration_s: float,
    token: str | None = None,
    threads: int = 1,
    timeout_s: float = 30.0,
) -> WrkResult:
    """Run wrk once and parse the BENCH_RESULT line its done() prints."""
    env = os.environ | body.env() | {"BENCH_TOKEN": token or ""}
    argv = [
        wrk,
        f"-t{min(threads, connections)}",
        f"-c{connections}",
        f"-d{max(1, round(duration_s))}s",
        f"--timeout={timeout_s:.0f}s",
        "-s",
        str(LUA_SCRIPT),
        url,
    ]
    done = subprocess.run(
        argv, env=env, capture_output=True, text=True, timeout=duration_s + timeout_s + 30
    )
    for line in done.stdout.splitlines():
        if line.startswith("BENCH_RESULT "):
            data = json.loads(line.removeprefix("BENCH_RESULT "))
            return WrkResult(
                requests=int(data["requests"]),
                duration_s=data["duration_us"] / 1e6,
                body_bytes=int(data["body_bytes"]),
                errors={k: int(v) for k, v in data["errors"].items()},
                latency_us={k: float(v) for k, v in data["latency_us"].items()},
            )
    tail = done.stderr[-1000:] or done.stdout[-1000:]
    raise RuntimeError(f"wrk printed no result (exit {done.returncode}): {tail}")
