"""The distribution carries the console: every template, stylesheet, script, vendored asset and
licence under app/console is matched by a package-data pattern in pyproject.toml (setuptools
ships only what those patterns match, so a file they miss would be absent after pip install)."""

from __future__ import annotations

import tomllib
from fnmatch import fnmatch
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_console_files_are_package_data() -> None:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    patterns = config["tool"]["setuptools"]["package-data"]["app"]
    console = ROOT / "app" / "console"
    files = [
        p.relative_to(ROOT / "app").as_posix()
        for p in console.rglob("*")
        if p.is_file() and p.suffix not in (".py", ".pyc")
    ]
    assert any(f.endswith("swagger-ui-bundle.js") for f in files)
    missing = [f for f in files if not any(fnmatch(f, pat) for pat in patterns)]
    assert missing == []
