"""The result tables: rows with their targets, machine facts, printed and saved as markdown.

Two tables come out of one run. The detailed one has every row of every scenario. The README
table has the target rows only, with the columns direct | imagegate | peer | target | met?,
between markers so that `python -m bench.report --readme <results.md>` (or
`python -m bench --readme`) can copy it into the README's performance section unchanged.

Every number is shown with the spread of its repetitions (median, then min-max) so a reader
can see whether a pass or miss is within noise. Status is about the target only; a row whose
runs saw errors says so instead of pretending a number.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import re
import statistics
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path

RESULTS_DIR = Path(__file__).with_name("results")
README = Path(__file__).resolve().parent.parent / "README.md"
# The README table's place, in the results file and in README.md.
TABLE_BEGIN = "<!-- bench:table:begin -->"
TABLE_END = "<!-- bench:table:end -->"


@dataclass
class Row:
    scenario: str
    metric: str
    direct: str = "—"
    gateway: str = "—"
    result: str = "—"  # the gateway's cost: added latency, ratio, per-request figure
    target: str = "—"
    status: str = "info"  # pass | MISS | info | error | n/a
    peer: str = "—"  # the same measurement through the peer gateway (LiteLLM), if it ran


@dataclass
class TableRow:
    """One row of the README table; `order` places it (the issue's target order), since the
    scenarios that produce the rows run in another order."""

    order: int
    metric: str
    direct: str = "—"
    imagegate: str = "—"
    peer: str = "—"
    target: str = "—"
    met: str = "—"  # yes | **no** | error | n/a


def _cells(cells: Sequence[str]) -> str:
    return "| " + " | ".join(c.replace("|", "/") for c in cells) + " |"


@dataclass
class Report:
    facts: dict[str, str]
    settings: str
    rows: list[Row] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    table: list[TableRow] = field(default_factory=list)
    peer_title: str = "LiteLLM"  # the peer column's header ("LiteLLM 1.108.7")

    def add(self, row: Row) -> None:
        self.rows.append(row)
        peer = f" | peer {row.peer}" if row.peer != "—" else ""
        print(
            f"  [{row.scenario}] {row.metric}: direct {row.direct} | gateway {row.gateway}{peer} | "
            f"{row.result} | target {row.target} -> {row.status}",
            flush=True,
        )

    def add_table(self, row: TableRow) -> None:
        self.table.append(row)

    def readme_table(self) -> str:
        """The README table with its provenance line, between the markers."""
        f = self.facts
        out = [
            TABLE_BEGIN,
            f"From `bench/results/{results_name(self)}` ({f['date']}, commit {f['commit']}; "
            f"{f.get('gateway_short', 'one gateway worker')}; {f.get('machine_short', '')}"
            f"{f.get('run_kind', '')}).",
            "",
            _cells(["metric", "direct", "imagegate", self.peer_title, "target", "met?"]),
            "|---|---|---|---|---|---|",
        ]
        for r in sorted(self.table, key=lambda r: r.order):
            out.append(_cells([r.metric, r.direct, r.imagegate, r.peer, r.target, r.met]))
        out.append(TABLE_END)
        return "\n".join(out)

    def markdown(self) -> str:
        out = [f"# imagegate benchmark — {self.facts['date']}, commit {self.facts['commit']}", ""]
        hidden = ("date", "commit", "gateway_short", "machine_short", "results_name", "run_kind")
        out += [f"- **{k}**: {v}" for k, v in self.facts.items() if k not in hidden]
        out += [f"- **settings**: {self.settings}", ""]
        if self.table:
            out += ["## Targets (the README table)", "", self.readme_table(), ""]
            out += ["## Every row", ""]
        out += [
            _cells(
                ["scen.", "metric", "direct (mock only)", "through gateway", "gateway cost",
                 self.peer_title, "target", "status"]
            ),
            "|---|---|---|---|---|---|---|---|",
        ]  # fmt: skip
        for r in self.rows:
            out.append(
                _cells([r.scenario, r.metric, r.direct, r.gateway, r.result, r.peer, r.target,
                        r.status])
            )  # fmt: skip
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


def met(ok: bool) -> str:
    return "yes" if ok else "**no**"


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


def cpu_model() -> str:
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
            f"nproc {len(os.sched_getaffinity(0))}, {cpu_model()}, {_mem_total()} RAM, "
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


def results_name(report: Report) -> str:
    """bench/results/<date>-<commit>.md; a second run the same day gets -2, -3, ... (decided
    once per report, so the README table names the file it is saved in)."""
    if "results_name" not in report.facts:
        stem = f"{dt.datetime.now(dt.UTC):%Y-%m-%d}-{report.facts['commit']}"
        name, n = f"{stem}.md", 2
        while (RESULTS_DIR / name).exists() and n < 1000:
            name, n = f"{stem}-{n}.md", n + 1
        report.facts["results_name"] = name
    return report.facts["results_name"]


def save(report: Report, repo: Path) -> Path:
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    path = RESULTS_DIR / results_name(report)
    path.write_text(report.markdown())
    return path


# --- README ------------------------------------------------------------------------------------
def table_from_results(text: str) -> str:
    """The README table (markers included) of a saved results file."""
    try:
        begin = text.index(TABLE_BEGIN)
        end = text.index(TABLE_END, begin) + len(TABLE_END)
    except ValueError:
        raise ValueError(f"no README table ({TABLE_BEGIN} ... {TABLE_END}) in it") from None
    return text[begin:end]


def update_readme(results: Path, readme: Path = README) -> None:
    """Replace the README's table between the markers with the one in `results`."""
    table = table_from_results(results.read_text())
    text = readme.read_text()
    try:
        begin = text.index(TABLE_BEGIN)
        end = text.index(TABLE_END, begin) + len(TABLE_END)
    except ValueError:
        raise ValueError(f"{readme} has no {TABLE_BEGIN} ... {TABLE_END} markers") from None
    readme.write_text(text[:begin] + table + text[end:])


def newest_results() -> Path | None:
    """The newest results file that has a README table (the scenario runs' files)."""
    found = [p for p in RESULTS_DIR.glob("20*.md") if TABLE_BEGIN in p.read_text(errors="replace")]
    return max(found, key=lambda p: p.stat().st_mtime, default=None)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m bench.report",
        description="Copy a results file's README table into README.md's performance section.",
    )
    p.add_argument(
        "--readme", nargs="?", const="", required=True, metavar="RESULTS_MD",
        help="the results file (default: the newest one under bench/results/ with a table)",
    )  # fmt: skip
    args = p.parse_args(argv)
    results = Path(args.readme) if args.readme else newest_results()
    if results is None:
        print(f"error: no results file with a README table in {RESULTS_DIR}", file=sys.stderr)
        return 1
    try:
        update_readme(results)
    except (OSError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"README.md: performance table from {results}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
