"""Dockerfile and docker-compose.yml can't run here (no Docker engine), so they are read and
checked: what they run must be what the tests run, with the settings docs/CONFIG.md names."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from app.cli import build_parser
from app.core.config import Settings

ROOT = Path(__file__).resolve().parents[1]


def test_compose_gateway_and_redis_with_aof() -> None:
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    services = compose["services"]
    redis, gateway = services["redis"], services["gateway"]
    assert "--appendonly" in redis["command"] and "yes" in redis["command"]
    assert any(v.endswith(":/data") for v in redis["volumes"])
    assert redis["healthcheck"]["test"] and gateway["healthcheck"]["test"]
    assert gateway["depends_on"]["redis"]["condition"] == "service_healthy"
    env = gateway["environment"]
    assert env["IMAGEGATE_REDIS_URL"].startswith("redis://redis:6379")
    known = {f"IMAGEGATE_{name.upper()}" for name in Settings.model_fields}
    assert set(env) <= known, set(env) - known
    for name in ("redis-data", "gateway-data"):
        assert name in compose["volumes"]


def test_dockerfile_runs_the_cli_as_non_root() -> None:
    text = (ROOT / "Dockerfile").read_text()
    assert re.search(r"^USER 10001", text, re.M)
    assert "FROM python:3.11-slim" in text
    cmd = re.search(r"^CMD \[(.*)\]$", text, re.M)
    assert cmd is not None
    argv = [a.strip().strip('"') for a in cmd.group(1).split(",")]
    assert argv[0] == "imagegate"
    args = build_parser().parse_args(argv[1:])  # the same CLI the tests drive
    assert args.cmd == "serve" and args.host == "0.0.0.0" and args.port == 8000
    assert "HEALTHCHECK" in text and "/healthz" in text
    assert "COPY config/gateway.yaml" in text and (ROOT / "config" / "gateway.yaml").is_file()


@pytest.mark.skipif(shutil.which("hadolint") is None, reason="hadolint not installed")
def test_hadolint_clean() -> None:
    out = subprocess.run(["hadolint", str(ROOT / "Dockerfile")], capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr
