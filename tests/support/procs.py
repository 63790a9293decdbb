"""Gateway processes for tests that need more than one (shared Redis) or a real kill -9."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import httpx
import yaml

from tests.support.net import free_port

ROOT = Path(__file__).resolve().parents[2]


def write_config(sim_url: str, path: Path, **overrides: Any) -> Path:
    """The shipped config pointed at the simulator (fast retries, short timeouts)."""
    raw = yaml.safe_load((ROOT / "config" / "gateway.yaml").read_text())
    for up in raw["upstreams"].values():
        up["base_url"] = sim_url + ("/v1" if up["kind"] == "openai" else "/v1beta")
        up["api_key"] = "sk-test"
        up["backoff_s"] = 0.01
        up["timeout_s"] = overrides.pop("timeout_s", 10)
    for section, values in overrides.items():
        if isinstance(values, dict):
            raw.setdefault(section, {}).update(values)
        else:
            raw[section] = values
    path.write_text(yaml.safe_dump(raw))
    return path


class GatewayProcess:
    def __init__(
        self,
        config: Path,
        *,
        env: dict[str, str],
        port: int | None = None,
        data_dir: Path | None = None,
        args: Sequence[str] = (),
    ) -> None:
        self.port = port or free_port()
        self.args = list(args)
        self.config = config
        self.data_dir = data_dir or Path(tempfile.mkdtemp(prefix="imagegate-gw-"))
        self.env = {
            **os.environ,
            **env,
            "IMAGEGATE_DATA_DIR": str(self.data_dir),
            "IMAGEGATE_LOG_LEVEL": "warning",
        }
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = self.data_dir / "gateway.log"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 30) -> GatewayProcess:
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "app",
                    "serve",
                    "--host",
                    "127.0.0.1",
                    "--port",
                    str(self.port),
                    "--config",
                    str(self.config),
                    *self.args,
                ],
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=str(ROOT),
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"gateway exited: {self.log.read_text()[-2000:]}")
            try:
                if httpx.get(self.url + "/healthz", timeout=1).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise RuntimeError(f"gateway did not start: {self.log.read_text()[-2000:]}")

    def kill(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(timeout=10)

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.kill()
