"""`/metrics` under `imagegate serve --workers 2` describes the whole process group: after N
edits spread over both processes, every scrape shows N, whichever process answers it."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from tests.support import images
from tests.support.net import free_port

EDITS = 6
SCRAPES = 8


def _count(text: str, pattern: str) -> float:
    m = re.search(pattern + r" ([0-9.e+]+)$", text, re.M)
    return float(m.group(1)) if m else 0.0


def test_every_scrape_shows_the_group_totals(tmp_path: Path) -> None:
    port = free_port()
    prom = tmp_path / "prom"
    prom.mkdir()
    (prom / "counter_999999.db").write_bytes(b"left over by an earlier run")
    env = {k: v for k, v in os.environ.items() if not k.startswith("IMAGEGATE_")}
    env["PROMETHEUS_MULTIPROC_DIR"] = str(prom)
    log = (tmp_path / "serve.log").open("wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "app", "serve", "--port", str(port), "--workers", "2"],
        cwd=tmp_path, env=env, stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                if httpx.get(base + "/readyz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, (tmp_path / "serve.log").read_text()
            time.sleep(0.1)
        assert not (prom / "counter_999999.db").exists()  # cleaned at start
        created = subprocess.run(
            [sys.executable, "-m", "app", "keys", "create", "--name", "m", "--credits", "10",
             "--json"],
            cwd=tmp_path, env=env, capture_output=True, text=True, check=True,
        )  # fmt: skip
        key = json.loads(created.stdout)["key"]
        png = images.png(64, 64)
        for _ in range(EDITS):  # a new connection each time, so both processes take some
            r = httpx.post(
                base + "/v1/images/edits",
                headers={"authorization": f"Bearer {key}", "connection": "close"},
                data={"model": "gpt-image-1", "prompt": "dark mode"},
                files={"image": ("a.png", png, "image/png")},
                timeout=30,
            )
            assert r.status_code == 200, r.text
        served = {p.name for p in prom.glob("counter_*.db")}
        seen = []
        for _ in range(SCRAPES):
            text = httpx.get(base + "/metrics", headers={"connection": "close"}).text
            seen.append(
                (
                    _count(text, r'imagegate_requests_total\{model="gpt-image-1",status="ok"\}'),
                    _count(text, r'imagegate_credits_charged_total\{model="gpt-image-1"\}'),
                    _count(text, r'imagegate_upstream_seconds_count\{model="gpt-image-1"\}'),
                )
            )
        assert seen == [(EDITS, pytest.approx(EDITS * 0.10), EDITS)] * SCRAPES, (seen, served)
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        log.close()
    assert proc.returncode == 0, (tmp_path / "serve.log").read_text()[-3000:]
