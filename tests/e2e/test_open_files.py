"""`imagegate serve` lifts its open-files soft limit to the hard limit: each edit in flight
holds about three descriptors, so a soft limit of 1,024 would cap a gateway near 330."""

from __future__ import annotations

import resource
from pathlib import Path

from tests.support.procs import GatewayProcess, write_config


def _limits(pid: int) -> tuple[int, int]:
    for line in Path(f"/proc/{pid}/limits").read_text().splitlines():
        if line.startswith("Max open files"):
            soft, hard = line.split()[3:5]
            return int(soft), int(hard)
    raise AssertionError("no 'Max open files' line")


def test_serve_raises_soft_limit_to_hard(tmp_path: Path) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    low = min(256, hard)
    config = write_config("http://127.0.0.1:9", tmp_path / "gateway.yaml")
    gw = GatewayProcess(config, env={"IMAGEGATE_ADMIN_KEY": "admin-key-for-tests"})
    resource.setrlimit(resource.RLIMIT_NOFILE, (low, hard))
    try:
        gw.start()  # inherits the low soft limit
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    try:
        assert gw.proc is not None
        assert _limits(gw.proc.pid) == (hard, hard)
    finally:
        gw.stop()
