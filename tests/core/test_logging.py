"""Log lines: JSON for machines, readable text on a terminal, `IMAGEGATE_LOG_FORMAT` decides;
`imagegate serve` prints uvicorn's start-up lines once, not once per server it runs."""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from app.core.logging import resolve_format
from tests.support.net import free_port

READY = "Application startup complete"


@pytest.fixture
def pty_stream() -> Iterator[object]:
    master, slave = os.openpty()
    with os.fdopen(slave, "w") as stream:
        yield stream
    os.close(master)


def test_a_terminal_gets_text_anything_else_json(tmp_path: Path, pty_stream: object) -> None:
    assert resolve_format(None, pty_stream) == "text"  # type: ignore[arg-type]
    with (tmp_path / "log").open("w") as file:
        assert resolve_format(None, file) == "json"
        assert resolve_format("text", file) == "text"
        assert resolve_format(" JSON ", pty_stream) == "json"  # type: ignore[arg-type]
        with pytest.raises(ValueError, match="json or text"):
            resolve_format("xml", file)


def _serve(tmp_path: Path, stderr: int, **env: str) -> subprocess.Popen[bytes]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("IMAGEGATE_")}
    return subprocess.Popen(
        [sys.executable, "-m", "app", "serve", "--port", str(free_port())],
        cwd=tmp_path, env={**clean, **env}, stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL, stderr=stderr,
    )  # fmt: skip


def _stop(proc: subprocess.Popen[bytes]) -> None:
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=30)


def _until_ready(read: object, deadline_s: float = 30) -> str:
    out = ""
    deadline = time.monotonic() + deadline_s
    while READY not in out:
        assert time.monotonic() < deadline, out
        out += read()  # type: ignore[operator]
    return out


def _startup_lines_once(lines: list[str]) -> None:
    for phrase in ("Started server process", "Uvicorn running on", READY):
        assert sum(phrase in line for line in lines) == 1, (phrase, lines)


def test_serve_logs_json_lines_to_a_file(tmp_path: Path) -> None:
    log = tmp_path / "serve.log"
    with log.open("wb") as f:
        proc = _serve(tmp_path, f.fileno())
        try:
            _until_ready(lambda: (time.sleep(0.05), log.read_text())[1])
        finally:
            _stop(proc)
    lines = [ln for ln in log.read_text().splitlines() if ln.startswith("{")]
    records = [json.loads(ln) for ln in lines]  # every structured line is JSON
    assert {"ts", "level", "logger", "event", "pid"} <= set(records[0])
    assert any(r["event"] == "gateway.start" and r["port"] for r in records)
    _startup_lines_once(lines)


def test_serve_logs_text_on_a_terminal(tmp_path: Path) -> None:
    master, slave = os.openpty()
    proc = _serve(tmp_path, slave)
    os.close(slave)

    def read() -> str:
        ready, _, _ = select.select([master], [], [], 0.5)
        try:
            return os.read(master, 65536).decode(errors="replace") if ready else ""
        except OSError:  # the child closed the terminal
            return ""

    try:
        out = _until_ready(read)
    finally:
        _stop(proc)
    while chunk := read():  # the rest, up to the shutdown lines
        out += chunk
    os.close(master)
    lines = [ln.strip() for ln in out.splitlines() if ln.strip()]
    assert not any(ln.startswith("{") for ln in lines), lines
    start = next(ln for ln in lines if "gateway.start" in ln)
    assert "INFO" in start and "port=" in start and "store=" in start
    _startup_lines_once(lines)


def test_the_variable_overrides_the_terminal(tmp_path: Path) -> None:
    log = tmp_path / "serve.log"
    with log.open("wb") as f:
        proc = _serve(tmp_path, f.fileno(), IMAGEGATE_LOG_FORMAT="text")
        try:
            _until_ready(lambda: (time.sleep(0.05), log.read_text())[1])
        finally:
            _stop(proc)
    lines = log.read_text().splitlines()
    assert any("gateway.start" in ln and "port=" in ln for ln in lines)
    assert not any(ln.startswith("{") for ln in lines)


def test_a_bad_format_is_refused_at_start(tmp_path: Path) -> None:
    proc = _serve(tmp_path, subprocess.PIPE, IMAGEGATE_LOG_FORMAT="xml")
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 2
    assert b"IMAGEGATE_LOG_FORMAT must be json or text" in err
