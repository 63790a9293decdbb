"""`python -m fuzz TARGET [--seconds N]`: run one atheris target for a bounded time.

`python -m fuzz all` runs every target one after the other (each in its own process: libFuzzer
owns the process it runs in). The working corpus lives in `.fuzz/corpus/TARGET` (kept between
runs, seeded with valid inputs each time) and crashing inputs land in `.fuzz/crashes/`; copy a
crash into `tests/fuzz/crashes/TARGET/` so the regression test replays it forever.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
WORK = ROOT / ".fuzz"
NAMES = ("multipart", "sniff")


def _run_target(name: str, seconds: int, work: Path, extra: list[str]) -> None:
    import atheris

    with atheris.instrument_imports(include=["app.api", "app.media"]):
        from fuzz import targets

    from fuzz.seeds import SEEDS

    corpus = work / "corpus" / name
    crashes = work / "crashes"
    corpus.mkdir(parents=True, exist_ok=True)
    crashes.mkdir(parents=True, exist_ok=True)
    for i, seed in enumerate(SEEDS[name]()):
        (corpus / f"seed-{i}").write_bytes(seed)
    check = targets.TARGETS[name]
    args = [
        sys.argv[0],
        str(corpus),
        f"-max_total_time={seconds}",
        f"-artifact_prefix={crashes}/{name}-",
        "-timeout=10",
        "-rss_limit_mb=2048",
        "-max_len=8192",
        "-print_final_stats=1",
        *extra,
    ]
    atheris.Setup(args, check)
    atheris.Fuzz()


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m fuzz", description=__doc__)
    parser.add_argument("target", choices=[*NAMES, "all"])
    parser.add_argument("--seconds", type=int, default=60, help="time per target")
    parser.add_argument("--workdir", type=Path, default=WORK, help="corpus and crashes")
    opts, extra = parser.parse_known_args()
    if opts.target != "all":
        _run_target(opts.target, opts.seconds, opts.workdir, extra)
        return 0
    failed = []
    for name in NAMES:
        cmd = [sys.executable, "-m", "fuzz", name, f"--seconds={opts.seconds}"]
        cmd += [f"--workdir={opts.workdir}", *extra]
        if subprocess.run(cmd, cwd=ROOT, check=False).returncode:
            failed.append(name)
    if failed:
        print(f"fuzz: crashes in {', '.join(failed)} (inputs in {opts.workdir / 'crashes'})")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
