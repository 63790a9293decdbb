"""Layers only call down: the domain holds types and rules and imports no flow machinery."""

from __future__ import annotations

import ast
from pathlib import Path

APP = Path(__file__).resolve().parent.parent / "app"
FORBIDDEN = ("app.service", "app.adapters", "app.media", "app.tasks", "app.api", "fastapi")


def _imports(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
        elif isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
    return names


def test_domain_imports_no_flow_machinery() -> None:
    bad = {
        f"{path.name}: {name}"
        for path in (APP / "domain").glob("*.py")
        for name in _imports(path)
        if name.startswith(FORBIDDEN)
    }
    assert not bad, sorted(bad)


def test_service_is_not_imported_by_lower_layers() -> None:
    bad = {
        f"{path.relative_to(APP)}: {name}"
        for pkg in ("domain", "adapters", "media", "store", "storage", "tasks", "upstream")
        for path in (APP / pkg).rglob("*.py")
        for name in _imports(path)
        if name.startswith("app.service")
    }
    assert not bad, sorted(bad)


def test_object_storage_sits_below_everything_that_uses_it() -> None:
    """app/storage knows bytes and keys only: no tasks, results, routes or framework."""
    bad = {
        f"{path.name}: {name}"
        for path in (APP / "storage").glob("*.py")
        for name in _imports(path)
        if name.startswith((*FORBIDDEN, "app.results", "app.domain", "app.store"))
    }
    assert not bad, sorted(bad)
