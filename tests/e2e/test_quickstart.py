"""The README's quick start, as a newcomer runs it: `imagegate serve` with no upstream keys
(simulated upstream, embedded store, generated admin key), `imagegate keys create`, then an
edit with the official OpenAI SDK."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
from openai import OpenAI

from tests.support import images
from tests.support.net import free_port

ROOT = Path(__file__).resolve().parents[2]


def test_quickstart(tmp_path: Path) -> None:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("IMAGEGATE_")}
    env["IMAGEGATE_LOG_LEVEL"] = "info"
    log = (tmp_path / "serve.log").open("wb")
    # run from a directory without a config file: the packaged defaults are used
    proc = subprocess.Popen(
        [sys.executable, "-m", "app", "serve", "--port", str(port)],
        cwd=tmp_path, env=env, stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    try:
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                if httpx.get(base + "/readyz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.1)
        else:
            raise AssertionError((tmp_path / "serve.log").read_text())
        output = (tmp_path / "serve.log").read_text()
        assert "SIMULATED upstream" in output  # said loudly
        admin_key = (tmp_path / "data" / "admin_key").read_text().strip()
        assert oct((tmp_path / "data" / "admin_key").stat().st_mode)[-3:] == "600"

        created = subprocess.run(
            [sys.executable, "-m", "app", "keys", "create", "--name", "me", "--credits", "10",
             "--json"],
            cwd=tmp_path, env=env, capture_output=True, text=True, check=True,
        )  # fmt: skip
        key = json.loads(created.stdout)["key"]

        client = OpenAI(base_url=base + "/v1/openai", api_key=key, max_retries=0)
        result = client.images.edit(
            model="gpt-image-2",
            image=[("test.png", images.png(128, 128), "image/png")],
            prompt="Convert this image to dark mode while keeping the layout intact.",
        )
        edited = images.decode(base64.b64decode(result.data[0].b64_json or ""))
        assert edited.size[0] > 0

        me = httpx.get(base + "/v1/me", headers={"authorization": f"Bearer {key}"}).json()
        assert me["balance"] == 10 - 0.20
        admin = {"authorization": f"Bearer {admin_key}"}
        assert httpx.get(base + "/admin/keys", headers=admin).status_code == 200
        assert httpx.get(base + "/docs").status_code == 200
        assert "/v1/openai/images/edits" in httpx.get(base + "/openapi.json").json()["paths"]
        metrics = httpx.get(base + "/metrics").text
        assert "imagegate_requests_total" in metrics
    finally:
        proc.terminate()
        proc.wait(timeout=20)
        log.close()
    # uvicorn re-raises the SIGTERM it handled after a clean shutdown
    assert proc.returncode in (0, -15), (tmp_path / "serve.log").read_text()[-3000:]
    assert "Application shutdown complete" in (tmp_path / "serve.log").read_text()
    logs = (tmp_path / "serve.log").read_text()
    assert key not in logs and admin_key not in logs  # secrets never reach the logs
