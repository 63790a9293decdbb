"""The result table: rows with their targets, machine facts, printed and saved as markdown.

Every number is shown with the spread of its repetitions (median, then min-max) so a reader
can see whether a pass or miss is within noise. Status is about the target only; a row whose
runs saw errors says so instead of pretending a number.
"""

from __future__ import annotations

import datetime as dt
import os
import platform
import re
import statistics
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path

RESULTS_DIR = Path(__file__).with_name("results")


@dataclass
class Row:
    scenario: str
    metric: str
    direct: str = "—"
    gateway: str = "—"
    result: str = "—"  # the gateway's cost: added latency, ratio, per-request figure
    target: str = "—"
    status: str = "info"  # pass | MISS | info | error | n/a


@dataclass
class Report:
    facts: dict[str, str]
    settings: str
    rows: list[Row] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def add(self, row: Row) -> None:
        self.rows.append(row)
        print(
            f"  [{row.scenario}] {row.metric}: direct {row.direct} | gateway {row.gateway} | "
            f"{row.result} | target {row.target} -> {row.status}",
            flush=True,
        )

    def markdown(self) -> str:
        out = [f"# imagegate benchmark — {self.facts['date']}, commit {self.facts['commit']}", ""]
        out += [f"- **{k}**: {v}" for k, v in self.facts.items() if k not in ("date", "commit")]
        out += [f"- **settings**: {self.settings}", ""]
        out += [
            "| scen. | metric | direct (mock only) | through gateway | gateway cost | target "
            "| status |",
            "|---|---|---|---|---|---|---|",
        ]
        for r in self.rows:
            cells = [r.scenario, r.metric, r.direct, r.gateway, r.result, r.target, r.status]
            out.append("| " + " | ".join(c.replace("|", "/") for c in cells) + " |")
        if self.notes:
            out += ["", "Notes:", ""] + [f"- {n}" for n in self.notes]
        return "\n".join(out) + "\n"


# --- number formatting ---------------------------------------------------------------------------
def med(values: Sequence[float]) -> float:
    return statistics.median(values) if values else float("nan")


def spread(values: Sequence[float], fmt: str = "{:.2f}", unit: str = "") -> str:
    """'median (min-max) unit'; just the value when there is one repetition."""
    if not values:
        return "—"
    m = fmt.format(med(values))
    if len(values) == 1:
        return f"{m}{unit}"
    return f"{m} ({fmt.format(min(values))}-{fmt.format(max(values))}){unit}"


def verdict(ok: bool) -> str:
    return "pass" if ok else "MISS"


# --- machine facts -------------------------------------------------------------------------------
def _first_line(argv: Sequence[str]) -> str:
    try:
        done = subprocess.run(list(argv), capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return "?"
    text = (done.stdout or done.stderr).strip()
    return text.splitlines()[0] if text else "?"


def _tool_version(argv: Sequence[str], pattern: str) -> str:
    m = re.search(pattern, _first_line(argv))
    return m.group(1) if m else "?"


def _git(repo: Path, *args: str) -> str:
    try:
        done = subprocess.run(
            ["git", "-C", str(repo), *args], capture_output=True, text=True, timeout=10
        )
    except (OSError, subprocess.TimeoutExpired):
        return ""
    return done.stdout.strip() if done.returncode == 0 else ""


def commit_id(repo: Path) -> str:
    short = _git(repo, "rev-parse", "--short", "HEAD") or "nocommit"
    dirty = _git(repo, "status", "--porcelain", "--untracked-files=no")
    return short + ("-dirty" if dirty else "")


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "?"


def _mem_total() -> str:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return f"{int(line.split()[1]) / 1024 / 1024:.1f} GiB"
    except OSError:
        pass
    return "?"


def _version(dist: str) -> str:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "absent"


def machine_facts(repo: Path, tools: dict[str, str]) -> dict[str, str]:
    now = dt.datetime.now(dt.UTC)
    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    pkgs = ["uvicorn", "httpx", "fastapi", "starlette", "uvloop", "httptools", "redis", "pillow"]
    return {
        "date": now.strftime("%Y-%m-%d %H:%M UTC"),
        "commit": commit_id(repo),
        "machine": (
            f"nproc {len(os.sched_getaffinity(0))}, {_cpu_model()}, {_mem_total()} RAM, "
            f"Linux {platform.release()}, load average at start {load}"
        ),
        "software": (
            f"Python {platform.python_version()}; "
            + ", ".join(f"{p} {_version(p)}" for p in pkgs)
            + "; "
            + ", ".join(
                f"{name} {_tool_version([tools[name], flag], pattern)}"
                for name, flag, pattern in (
                    ("nginx", "-v", r"nginx/(\S+)"),
                    ("wrk", "--version", r"wrk (\S+)"),
                    ("redis-server", "--version", r"v=(\S+)"),
                )
                if name in tools
            )
        ),
    }


def save(report: Report, repo: Path) -> Path:
    """bench/results/<date>-<commit>.md; a second run the same day gets -2, -3, ..."""
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    stem = f"{dt.datetime.now(dt.UTC):%Y-%m-%d}-{report.facts['commit']}"
    path = RESULTS_DIR / f"{stem}.md"
    n = 2
    while path.exists() and n < 1000:
        path = RESULTS_DIR / f"{stem}-{n}.md"
        n += 1
    path.write_text(report.markdown())
    return path
