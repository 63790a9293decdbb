"""`/metrics` under `imagegate serve --workers 2` describes the whole process group: after N
edits spread over both processes, every scrape shows N, whichever process answers it."""

from __future__ import annotations

import re
from pathlib import Path

import httpx
import pytest

from tests.support import images
from tests.support.procs import ROOT, GatewayProcess

EDITS = 6
SCRAPES = 8
ADMIN = "metrics-admin-key"


def _count(text: str, pattern: str) -> float:
    m = re.search(pattern + r" ([0-9.e+]+)$", text, re.M)
    return float(m.group(1)) if m else 0.0


def test_every_scrape_shows_the_group_totals(tmp_path: Path) -> None:
    prom = tmp_path / "prom"
    prom.mkdir()
    (prom / "counter_999999.db").write_bytes(b"left over by an earlier run")
    env = {"PROMETHEUS_MULTIPROC_DIR": str(prom), "IMAGEGATE_ADMIN_KEY": ADMIN}
    # The shipped config without upstream keys: the simulated upstream, as a newcomer runs it.
    gw = GatewayProcess(ROOT / "config" / "gateway.yaml", env=env, args=["--workers", "2"])
    gw.start()
    try:
        assert not (prom / "counter_999999.db").exists()  # cleaned at start
        admin = {"authorization": f"Bearer {ADMIN}"}
        key = httpx.post(gw.url + "/admin/keys", json={"name": "m", "credits": 10}, headers=admin)
        secret = key.json()["key"]
        png = images.png(64, 64)
        for _ in range(EDITS):  # a new connection each time, so both processes take some
            r = httpx.post(
                gw.url + "/v1/images/edits",
                headers={"authorization": f"Bearer {secret}", "connection": "close"},
                data={"model": "gpt-image-1", "prompt": "dark mode"},
                files={"image": ("a.png", png, "image/png")},
                timeout=30,
            )
            assert r.status_code == 200, r.text
        served = {p.name for p in prom.glob("counter_*.db")}
        seen = []
        for _ in range(SCRAPES):
            text = httpx.get(gw.url + "/metrics", headers={"connection": "close"}).text
            seen.append(
                (
                    _count(text, r'imagegate_requests_total\{model="gpt-image-1",status="ok"\}'),
                    _count(text, r'imagegate_credits_charged_total\{model="gpt-image-1"\}'),
                    _count(text, r'imagegate_upstream_seconds_count\{model="gpt-image-1"\}'),
                )
            )
        assert seen == [(EDITS, pytest.approx(EDITS * 0.10), EDITS)] * SCRAPES, (seen, served)
    finally:
        gw.stop()
    assert gw.proc is not None and gw.proc.returncode == 0, gw.log.read_text()[-3000:]
