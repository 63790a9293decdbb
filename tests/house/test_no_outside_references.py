"""The repository stands on its own: no comment or docstring may cite a document that is not in
it (the product specification's sections, the seed transcripts). Comments state the rule or
point to `docs/`, which holds the user contract."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SCANNED = ("app", "tests", "bench", "scripts", "config", "deploy", "docs")
SUFFIXES = {".py", ".md", ".yaml", ".yml", ".sh", ".toml", ".lua", ".html", ".js", ".cfg"}
# Built from parts so this file does not match itself.
_S = "SPEC"
FORBIDDEN = re.compile(
    "|".join([_S + r"\s*\u00a7", r"\bthe " + _S + r"\b", _S + "'s", r"\bthe seed" + r"s\b"])
)


def test_no_comment_cites_the_spec_or_the_seeds() -> None:
    hits = []
    for top in SCANNED:
        for path in sorted((ROOT / top).rglob("*")):
            if not path.is_file() or path.suffix not in SUFFIXES:
                continue
            if any(part.startswith(".") for part in path.relative_to(ROOT).parts):
                continue  # gitignored work dirs (bench/.work holds the peers' venvs)
            for n, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
                if FORBIDDEN.search(line):
                    hits.append(f"{path.relative_to(ROOT)}:{n}: {line.strip()}")
    assert not hits, "state the rule or point to docs/ instead:\n" + "\n".join(hits)
