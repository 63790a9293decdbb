"""`imagegate worker`: refuses without upstream credentials, starts and stops cleanly with them."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path


def _env(tmp_path: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("IMAGEGATE_")}
    return {**env, "IMAGEGATE_DATA_DIR": str(tmp_path / "data"), **extra}


def test_worker_needs_upstream_credentials(tmp_path: Path) -> None:
    out = subprocess.run(
        [sys.executable, "-m", "app", "worker"],
        cwd=tmp_path,
        env=_env(tmp_path),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 2
    assert "needs upstream credentials" in out.stderr


def test_worker_starts_and_stops_on_sigterm(tmp_path: Path) -> None:
    env = _env(tmp_path, IMAGEGATE_OPENAI_API_KEY="sk-x", IMAGEGATE_GEMINI_API_KEY="g-x")
    proc = subprocess.Popen(
        [sys.executable, "-m", "app", "worker"],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        deadline = time.monotonic() + 30
        while not (tmp_path / "data" / "tasks.db").exists():
            assert proc.poll() is None and time.monotonic() < deadline
            time.sleep(0.1)
        time.sleep(0.5)
        proc.send_signal(signal.SIGTERM)
        output, _ = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, output
    assert "worker.start" in output
