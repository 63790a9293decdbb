"""The fuzz targets in CI: saved crashes replay clean, and a few seconds of real fuzzing.

Every file under `tests/fuzz/crashes/TARGET/` is an input atheris once found to break the
target's contract (see `fuzz/targets.py`); each must now pass. The smoke run starts both targets
under atheris in parallel subprocesses for FUZZ_SMOKE_SECONDS (default 3) each, from fresh
seeds in a temp dir, so a regression that the fuzzer finds at once fails CI.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from fuzz.seeds import SEEDS
from fuzz.targets import TARGETS

ROOT = Path(__file__).resolve().parents[2]
CRASHES = Path(__file__).parent / "crashes"
SAVED = sorted(p for p in CRASHES.glob("*/*") if p.is_file())


@pytest.mark.parametrize("path", SAVED, ids=[f"{p.parent.name}/{p.name}" for p in SAVED])
def test_saved_crash_inputs_now_pass(path: Path) -> None:
    TARGETS[path.parent.name](path.read_bytes())


@pytest.mark.parametrize("name", sorted(TARGETS))
def test_seeds_pass(name: str) -> None:
    for seed in SEEDS[name]():
        TARGETS[name](seed)


def test_fuzz_smoke(tmp_path: Path) -> None:
    seconds = os.environ.get("FUZZ_SMOKE_SECONDS", "3")
    procs = {
        name: subprocess.Popen(
            [sys.executable, "-m", "fuzz", name, f"--seconds={seconds}", f"--workdir={tmp_path}"],
            cwd=ROOT,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        for name in sorted(TARGETS)
    }
    for name, proc in procs.items():
        _, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, f"fuzz target {name} failed:\n{err[-3000:]}"
        assert "Done" in err, err[-2000:]
    assert not list((tmp_path / "crashes").iterdir())
